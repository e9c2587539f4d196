"""The built-in face's surface (see :mod:`focus_jax.morphable.builtin_face` for the
construction): smooth helpers, the base head's cross-sections, the face relief
``D(x, y)`` (mm) with its feature lines (mouth, lash and brow lines), the implicit
solid and its ray casting, and the face-dense (lambda, beta) grid of rays with its
triangulation. NumPy, float64, model coordinates in mm.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import interpolate, special

# ---------------------------------------------------------------------------------
# Small smooth helpers (NumPy, float64, broadcasting).


def _gauss(x, y, cx, cy, sx, sy):
  return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _bump(u):
  """C1 bump (1 - u^2)^2 on |u| < 1, 0 outside."""
  return (1.0 - np.minimum(u * u, 1.0)) ** 2


def _smax(a, b, k):
  """Polynomial smooth maximum (>= max(a, b)), blending over a band of width k."""
  h = np.clip(0.5 + 0.5 * (a - b) / k, 0.0, 1.0)
  return b + (a - b) * h + k * h * (1.0 - h)


def _smoothstep(e0, e1, x):
  t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _normal(rng, shape):
  """Standard normal numbers from uniform doubles (the inverse CDF is stable across
  NumPy versions, unlike the ziggurat sampler's stream)."""
  return special.ndtri(np.clip(rng.random(shape), 1e-12, 1.0 - 1e-12))


# ---------------------------------------------------------------------------------
# Base head: horizontal cross-sections |x/a|^n + |z/b|^n = 1 (b behind the origin
# is _BACK_DEPTH), a and b cubic splines of y.
_PROFILE_Y = np.array([-110, -95, -85, -77, -69, -57, -42, -25, -7, 13, 33, 50, 70, 90, 110,
                       130, 150.])
_HALF_WIDTH = np.array([20, 23, 27, 31, 38, 49, 58.5, 65, 69, 71, 72, 71, 68.5, 65, 60, 52,
                        42.])
_FRONT_DEPTH = np.array([56, 61, 65, 68.5, 71.5, 74.0, 75.5, 76.5, 77, 77.5, 79, 81, 81, 77.5,
                         71, 62, 52.])
_BACK_DEPTH = 100.0
_EXPONENT = 2.0


@functools.lru_cache(maxsize=None)
def _profiles():
  a = interpolate.CubicSpline(_PROFILE_Y, _HALF_WIDTH, bc_type="natural")
  b = interpolate.CubicSpline(_PROFILE_Y, _FRONT_DEPTH, bc_type="natural")
  return a, b


def _ab(y):
  a, b = _profiles()
  y = np.clip(y, _PROFILE_Y[0], _PROFILE_Y[-1])
  return a(y), b(y)


def _base_front(x, y):
  """z of the base head's front surface at (x, y) (0 beyond its side)."""
  a, b = _ab(y)
  u = np.minimum(np.abs(x) / a, 1.0)
  return b * (1.0 - u ** _EXPONENT) ** (1.0 / _EXPONENT)


def _jaw_floor(z):
  """The solid is cut below y = floor(z): flat under the chin, rising backwards."""
  return -84.0 + 0.6 * 4.0 * np.logaddexp(0.0, (64.0 - z) / 4.0)


# ---------------------------------------------------------------------------------
# Facial features (mm, frontal coordinates; ax = |x|).
MOUTH_HALF_WIDTH = 24.0
EYE_INNER, EYE_OUTER = 17.0, 45.5      # |x| of the canthi.
_EYE_CENTRE = (31.5, 35.0)             # (|x|, y) of the eyeball centre.
_EYE_RADII = (14.5, 11.5, 12.5)        # closed lids over the eyeball, x, y, z.
_EYE_APEX = 68.5                       # z of the lids over the cornea.


def mouth_line(x):
  """y (mm) of the closed mouth line at x (meaningful for |x| <= MOUTH_HALF_WIDTH)."""
  xn = np.clip(x / MOUTH_HALF_WIDTH, -1, 1)
  return -32.5 - 0.6 * xn * xn


def lash_line(ax):
  """y (mm) of a closed eye's lash line at |x| = ax (between the canthi)."""
  half, mid = 0.5 * (EYE_OUTER - EYE_INNER), 0.5 * (EYE_OUTER + EYE_INNER)
  u = np.clip((ax - mid) / half, -1, 1)
  return 34.2 + 0.7 * u - 3.0 * (1 - u * u)


def brow_line(ax):
  """Centre y and half thickness (mm) of the eyebrow at |x| = ax."""
  peak = 38.0
  y = np.where(ax < peak, 57.5 - 5.5 * ((ax - peak) / 24.0) ** 2,
               57.5 - 5.5 * ((ax - peak) / 19.0) ** 2)
  half = 3.6 - 2.0 * np.clip((ax - 14.0) / 44.0, 0, 1)
  return y, half


def _lip_frame(x):
  """Mouth line y, upper and lower vermilion heights (mm) and the corner taper at x."""
  xn = np.minimum(np.abs(x) / MOUTH_HALF_WIDTH, 1.0)
  taper = 1.0 - xn * xn
  t_up = 7.0 * np.sqrt(taper) * (1.0 - 0.13 * np.exp(-(x / 2.5) ** 2))  # Cupid's bow.
  t_lo = 9.5 * taper ** 0.6
  return mouth_line(x), np.maximum(t_up, 1e-3), np.maximum(t_lo, 1e-3), taper


def _lips(x, y):
  ym, t_up, t_lo, taper = _lip_frame(x)
  vu = np.maximum(y - ym, 0.0) / t_up
  vl = np.maximum(ym - y, 0.0) / t_lo
  # Upper lip: rises from the mouth line to its most forward point near the border,
  # then the skin above slopes back towards the nose.
  up = np.where(vu <= 1, 3.0 * np.sin(0.5 * np.pi * np.minimum(vu / 0.8, 1.0))
                * (1.0 - 0.25 * _smoothstep(0.8, 1.0, vu)),
                2.25 * np.exp(-((y - ym - t_up) / 5.0) ** 2))
  vl = np.minimum(vl, 1.0)
  lo = 2.8 * np.where(vl < 0.45, 1.0 - (1.0 - vl / 0.45) ** 2,
                      np.cos(0.5 * np.pi * (vl - 0.45) / 0.55) ** 1.5)
  d = np.where(y >= ym, up, lo) * np.sqrt(taper)
  return d - 1.2 * np.exp(-((y - ym) / 0.7) ** 2) * taper ** 0.3


def _nasolabial(ax, y):
  """Signed distance (mm, > 0 towards the cheek) to the nasolabial fold, and a window."""
  a, b = np.array([19.5, -9.0]), np.array([30.0, -40.0])
  d = b - a
  length = np.hypot(*d)
  t = ((ax - a[0]) * d[0] + (y - a[1]) * d[1]) / length ** 2
  dist = ((ax - a[0]) * d[1] - (y - a[1]) * d[0]) / length
  return dist, _smoothstep(-0.1, 0.15, t) * (1 - _smoothstep(0.85, 1.1, t))


def _relief_without_nose(x, y):
  ax = np.abs(x)
  d = 2.5 * _gauss(ax, y, 0, 50, 11, 7)             # glabella
  d += 5.0 * _gauss(ax, y, 33, 50, 19, 6)           # supraorbital ridge
  d -= 2.5 * _gauss(ax, y, 64, 50, 8, 14)           # temple hollow
  d -= 13.0 * _gauss(ax, y, 31, 39, 12, 8.5)        # eye socket
  d -= 2.0 * _gauss(ax, y, 31, 44.5, 10, 3)         # upper lid sulcus
  d += 5.0 * _gauss(ax, y, 48, 16, 11, 9)           # cheek bone
  d -= 2.0 * _gauss(ax, y, 50, -12, 10, 10)         # below the cheek bone
  d += 3.0 * _gauss(ax, y, 33, -14, 12, 12)         # cheek
  d -= 1.0 * _gauss(ax, y, 25, 24, 8, 2.5)          # lid-cheek junction
  dist, win = _nasolabial(ax, y)
  d -= 0.8 * np.exp(-(dist / 3.0) ** 2) * win       # nasolabial fold
  d += 6.0 * _gauss(ax, y, 0, -36, 21, 20)          # dental arches
  d += _lips(x, y)
  d += 4.5 * _gauss(ax, y, 0, -66, 14, 9)           # chin
  d -= 2.5 * _gauss(ax, y, 0, -50, 14, 3.5)         # mentolabial sulcus
  d -= 2.0 * _gauss(ax, y, 25.5, -33, 2.5, 2.5)     # mouth corners
  d += 0.5 * _gauss(ax, y, 4.5, -20, 1.6, 3.5)      # philtrum columns
  return d


# Nose: y knots, target depth z on the midline (0: no nose), half width.
_NOSE_Y = np.array([46, 38, 30, 20, 10, 4, 0.5, -3, -7, -10, -13, -16, -19.])
_NOSE_Z = np.array([0, 80, 84, 89, 94, 97.6, 99.6, 99.4, 96.2, 91.5, 85.5, 0, 0])
_NOSE_W = np.array([8, 7.5, 7.5, 8.5, 10, 12, 13.5, 14, 13.5, 12, 10.5, 9, 8.])


def _nose(x, y):
  zero = np.zeros(_NOSE_Y.shape)
  rest = _base_front(zero, _NOSE_Y) + _relief_without_nose(zero, _NOSE_Y)
  hk = np.where(_NOSE_Z > 0, _NOSE_Z - rest, 0.0)
  spline = interpolate.CubicSpline(_NOSE_Y[::-1], hk[::-1], bc_type="natural")
  h = spline(np.clip(y, _NOSE_Y[-1], _NOSE_Y[0]))
  h = np.where((y > _NOSE_Y[0]) | (y < _NOSE_Y[-1]), 0.0, np.maximum(h, -1.5))
  ax = np.abs(x)
  d = h * _bump(ax / np.interp(-y, -_NOSE_Y, _NOSE_W))
  d += 7.0 * _gauss(ax, y, 14.0, -7.5, 5.0, 4.2)    # alae
  rho = np.hypot((ax - 14.0) / 5.0, (y + 7.5) / 4.2)
  d -= 1.5 * np.exp(-((rho - 1.9) / 0.35) ** 2) * _smoothstep(-14, -4, y)  # alar groove
  d -= 3.0 * _gauss(ax, y, 6.5, -11.5, 2.5, 1.8)    # nostrils
  return d


def _eye_window(ax):
  half, mid = 0.5 * (EYE_OUTER - EYE_INNER), 0.5 * (EYE_OUTER + EYE_INNER)
  u = np.clip((ax - mid) / half, -1, 1)
  return np.sqrt(1 - u * u)


def front_relief(x, y):
  """z displacement (mm) of the face relief over the base head at frontal (x, y)."""
  base = _base_front(x, y)
  z = base + _relief_without_nose(x, y) + _nose(x, y)
  # Closed lids: smooth maximum of the relief and the ellipsoid over each eyeball.
  ax = np.abs(x)
  (cx, cy), (rx, ry, rz) = _EYE_CENTRE, _EYE_RADII
  rho2 = ((ax - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
  lids = np.where(rho2 < 1.0, _EYE_APEX - rz + rz * np.sqrt(np.maximum(1.0 - rho2, 0.0)), -1e3)
  z = _smax(z, lids, 4.0)
  z -= 0.9 * np.exp(-((y - lash_line(ax)) / 0.6) ** 2) * _eye_window(ax)
  return z - base


class _Relief:
  """front_relief tabulated on a 0.5 mm grid over x >= 0, looked up bilinearly at |x|."""

  def __init__(self, step=0.5, xmax=90.0, ymin=-110.0, ymax=120.0):
    self.step, self.y0 = step, ymin
    xs = np.arange(0.0, xmax + step / 2, step)
    ys = np.arange(ymin, ymax + step / 2, step)
    self.values = front_relief(xs[None, :], ys[:, None])
    self.values -= self.values[:, -1:]  # exactly 0 at the table's edge.

  def __call__(self, x, y):
    v = self.values
    fx = np.clip(np.abs(x) / self.step, 0, v.shape[1] - 1.000001)
    fy = np.clip((y - self.y0) / self.step, 0, v.shape[0] - 1.000001)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    tx, ty = fx - ix, fy - iy
    return ((v[iy, ix] * (1 - tx) + v[iy, ix + 1] * tx) * (1 - ty)
            + (v[iy + 1, ix] * (1 - tx) + v[iy + 1, ix + 1] * tx) * ty)


def _implicit(p, relief):
  """< 0 inside the head, > 0 outside (roughly a distance in mm)."""
  x, y, z = p[..., 0], p[..., 1], p[..., 2]
  a, b = _ab(y)
  zr = z - relief(x, y)
  q = ((np.abs(x) / a) ** _EXPONENT + (np.maximum(zr, 0) / b) ** _EXPONENT
       + (np.maximum(-zr, 0) / _BACK_DEPTH) ** _EXPONENT) ** (1 / _EXPONENT)
  return _smax((q - 1.0) * 65.0, _jaw_floor(z) - y, 8.0)


def _ray_origin_height(beta):
  """y (mm) of the point on the vertical axis that the rays of elevation beta (deg)
  start from. Rays from the head centre would graze the face at the mouth line
  (the lips are steeper than the rays), so the origins spread along the axis."""
  return 35.0 * np.tanh(np.tan(np.radians(beta)))


def _cast(origins, dirs, relief, t0=2.0, t1=220.0, step=3.0, iters=24):
  """Where rays from origins [N, 3] along unit dirs [N, 3] first leave the solid."""
  ts = np.arange(t0, t1, step)
  outside = _implicit(origins[:, None, :] + dirs[:, None, :] * ts[None, :, None], relief) > 0
  first = np.argmax(outside, axis=1)
  if not (outside.any(axis=1).all() and (first > 0).all()):
    raise RuntimeError("builtin face: a grid ray misses the head surface")
  lo, hi = ts[first - 1], ts[first]
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    inside = _implicit(origins + dirs * mid[:, None], relief) <= 0
    lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
  return origins + dirs * (0.5 * (lo + hi))[:, None]


# ---------------------------------------------------------------------------------
# The grid of rays: longitude lambda per column, elevation beta per (row, column).
_LAMBDA_MAX = 100.0
_BETA_TOP = 54.0
_BETA_BOTTOM = -64.0        # at the midline (under the chin)
_BETA_BOTTOM_SIDE = -38.0   # at +-_LAMBDA_MAX


def _inverse_cdf(density, lo, hi, fine=8001):
  """(grid, normalised cumulative density) for inverting a sampling density."""
  g = np.linspace(lo, hi, fine)
  d = density(g)
  c = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(g))])
  return g, c / c[-1]


def _half_columns(n_half):
  """Longitudes (deg) of columns 0..n_half on the +x side, denser over the face."""
  g, c = _inverse_cdf(lambda l: 1.0 + 2.2 * np.exp(-0.5 * (l / 20.0) ** 2)
                      + 0.8 * np.exp(-0.5 * (l / 40.0) ** 2), 0.0, _LAMBDA_MAX)
  lam = np.interp(np.linspace(0, 1, n_half + 1), c, g)
  lam[0] = 0.0
  return lam


def _window(lo, hi, soft):
  return lambda ax: _smoothstep(lo - soft, lo, ax) * (1 - _smoothstep(hi, hi + soft, ax))


def _feature_elevation(lam, curve, relief, window):
  """Elevation (deg) at which column lam sees the feature curve y = curve(|x|), and a
  weight (the curve's window at that x, 0 for columns that cannot see it)."""
  tl = np.tan(np.radians(np.clip(lam, -60, 60)))
  x = 75.0 * tl
  for _ in range(8):  # fixed point of x = z(x) tan(lam) on the frontal surface.
    y = curve(np.abs(x))
    x = (_base_front(x, y) + relief(x, y)) * tl
  y = curve(np.abs(x))
  r = np.hypot(x, _base_front(x, y) + relief(x, y))
  beta = np.degrees(np.arctan2(y, r))
  for _ in range(30):  # the ray's origin moves with its elevation.
    beta = np.degrees(np.arctan2(y - _ray_origin_height(beta), r))
  return beta, window(np.abs(x)) * (np.abs(lam) < 60)


def _grid_angles(resolution, relief):
  """Ray angles (deg) on the +x half: lam [H], beta [R, H], and the indices of the
  rows on the lash lines and on the mouth line."""
  n_half = resolution // 2
  n_rows = int(round(0.85 * (2 * n_half + 1)))
  lam = _half_columns(n_half)
  eye_beta, eye_w = _feature_elevation(lam, lash_line, relief, _window(EYE_INNER, EYE_OUTER, 6.0))
  mouth_beta, mouth_w = _feature_elevation(lam, mouth_line, relief,
                                           _window(-1.0, MOUTH_HALF_WIDTH, 6.0))
  brow_beta, brow_w = _feature_elevation(lam, lambda ax: brow_line(ax)[0], relief,
                                         _window(14.0, 56.0, 10.0))
  beta_eye = np.sum(eye_beta * eye_w) / np.sum(eye_w)
  beta_brow = np.sum(brow_beta * brow_w) / np.sum(brow_w)
  beta_mouth = mouth_beta[0]
  def density(b):
    return (1.0 + 1.6 * np.exp(-0.5 * ((b + 2) / 24.0) ** 2)
            + 0.8 * np.exp(-0.5 * ((b - beta_eye) / 5.0) ** 2)
            + 0.8 * np.exp(-0.5 * ((b - beta_mouth) / 5.0) ** 2)
            + 0.8 * np.exp(-0.5 * ((b - beta_brow) / 4.0) ** 2))
  g, c = _inverse_cdf(density, _BETA_BOTTOM, _BETA_TOP)
  rows = c * (n_rows - 1)
  # Nudge the cumulative row count so that rows fall exactly on the eyes and mouth.
  for b_f in (beta_eye, beta_mouth):
    r = np.interp(b_f, g, rows)
    rows = rows + (np.round(r) - r) * _bump((g - b_f) / 4.0)
  beta0 = np.interp(np.arange(n_rows), rows, g)
  i_eye = int(np.round(np.interp(beta_eye, g, rows)))
  i_mouth = int(np.round(np.interp(beta_mouth, g, rows)))
  # Per column: raise the bottom towards the sides, then bend the feature rows onto
  # the lash line and the mouth line.
  bottom = _BETA_BOTTOM + (_BETA_BOTTOM_SIDE - _BETA_BOTTOM) * (lam / _LAMBDA_MAX) ** 2
  w = np.clip((-5.0 - beta0) / (-5.0 - _BETA_BOTTOM), 0, 1)
  beta = beta0[:, None] + w[:, None] * (bottom - _BETA_BOTTOM)[None, :]
  i_brow = int(np.argmin(np.abs(beta0 - beta_brow)))
  for i_f, target, weight, width in ((i_eye, eye_beta, eye_w, 5.0),
                                     (i_mouth, mouth_beta, mouth_w, 5.0),
                                     (i_brow, brow_beta, brow_w, 7.0)):
    delta = (target - beta[i_f]) * weight
    beta = beta + delta[None, :] * _bump((beta0[:, None] - beta0[i_f]) / width)
  if not np.all(np.diff(beta, axis=0) > 0):
    raise ValueError(f"builtin face: resolution {resolution} is too coarse")
  return lam, beta, i_eye, i_mouth


def _triangulate(verts, n_rows, n_cols):
  """Two CCW triangles per grid quad, split along the shorter diagonal (ties broken
  mirror-symmetrically): [2 (R-1) (C-1), 3] int32."""
  idx = np.arange(n_rows * n_cols).reshape(n_rows, n_cols)
  v00, v01 = idx[:-1, :-1], idx[:-1, 1:]
  v10, v11 = idx[1:, :-1], idx[1:, 1:]
  d_a = np.sum((verts[v00] - verts[v11]) ** 2, -1)
  d_b = np.sum((verts[v01] - verts[v10]) ** 2, -1)
  left = np.arange(n_cols - 1)[None, :] < (n_cols - 1) // 2
  # Mirrored quads have bitwise equal (swapped) diagonal lengths, so this is symmetric.
  use_a = (d_a < d_b) | ((d_a == d_b) & left)
  t1 = np.where(use_a[..., None], np.stack([v00, v01, v11], -1), np.stack([v00, v01, v10], -1))
  t2 = np.where(use_a[..., None], np.stack([v00, v11, v10], -1), np.stack([v01, v11, v10], -1))
  return np.concatenate([t1.reshape(-1, 3), t2.reshape(-1, 3)]).astype(np.int32)
