"""Unmodelled appearance detail of the synthetic faces (host side, NumPy): brows with
hair strokes, lipstick, beard stubble and freckles painted on the face pixels from
their mean-face positions (model coordinates, mm); see :mod:`focus_jax.data.synthetic`.
"""

from __future__ import annotations

import numpy as np
from scipy import spatial

from focus_jax.data import procedural

DETAIL_BITS = dict(brows=1, lips=2, beard=4, freckles=8)


# ----------------------------------------------------------------------------- details


def _smoothstep(e0, e1, x):
  t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _inside_polygon(px, py, poly) -> np.ndarray:
  inside = np.zeros(px.shape, bool)
  n = len(poly)
  for i in range(n):
    x1, y1 = poly[i]
    x2, y2 = poly[(i + 1) % n]
    cross = (y1 > py) != (y2 > py)
    xint = x1 + (py - y1) * (x2 - x1) / np.where(y2 == y1, 1e-12, y2 - y1)
    inside ^= cross & (px < xint)
  return inside


def _polygon_distance(px, py, poly, cap: float = np.inf) -> np.ndarray:
  """Distance to the polygon's outline; points farther than ``cap`` from its
  bounding box get ``cap`` (cheap: only nearby points are measured)."""
  d = np.full(px.shape, cap, np.float64)
  lo, hi = poly.min(0) - cap, poly.max(0) + cap
  near = (px >= lo[0]) & (px <= hi[0]) & (py >= lo[1]) & (py <= hi[1])
  qx, qy = px[near], py[near]
  dn = np.full(qx.shape, cap, np.float64)
  n = len(poly)
  for i in range(n):
    a, b = poly[i], poly[(i + 1) % n]
    ab = b - a
    t = np.clip(((qx - a[0]) * ab[0] + (qy - a[1]) * ab[1]) / max(ab @ ab, 1e-12), 0, 1)
    dn = np.minimum(dn, np.hypot(qx - a[0] - t * ab[0], qy - a[1] - t * ab[1]))
  d[near] = dn
  return d


class _FaceGeometry:
  """Landmark geometry of a model's mean face (model coordinates, mm), for details."""

  def __init__(self, model):
    mean = np.asarray(model.mean, np.float64)
    idx = np.asarray(model.landmarks)
    self.lm = np.where((idx >= 0)[:, None], mean[np.maximum(idx, 0)], np.nan)
    lm = self.lm
    ok = lambda ids: bool(np.isfinite(lm[list(ids)]).all())
    self.has_eyes = ok(range(36, 48))
    if self.has_eyes:
      self.eye_r, self.eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
      self.iod = float(np.linalg.norm(self.eye_l - self.eye_r))
      self.eye_y = 0.5 * (self.eye_l[1] + self.eye_r[1])
    else:
      ext = np.ptp(mean, axis=0)
      self.iod = float(ext[0]) * 0.45
      self.eye_y = float(mean[:, 1].mean() + 0.25 * ext[1])
    self.cx = float(np.nanmean(lm[[27, 30, 33, 51, 57], 0])) if ok([27, 30, 33]) else 0.0
    self.has_brows = ok(range(17, 27))
    self.has_lips = ok(range(48, 60))
    self.sub_y = float(lm[33, 1]) if ok([33]) else self.eye_y - 0.75 * self.iod
    self.mouth_y = float(lm[[48, 54], 1].mean()) if ok([48, 54]) else self.eye_y - 1.05 * self.iod


def _details(rng, geo: _FaceGeometry, surface, face, albedo, probabilities: dict):
  """Unmodelled appearance on the face pixels.

  Args:
    surface: [H, W, 3] mean-face positions (mm); face: [H, W] bool; albedo:
      [H, W, 3] interpolated model albedo.

  Returns:
    (factor [H, W, 3] to multiply the face pixels by, detail [H, W] strength,
    labels [H, W] uint8, list of kinds).
  """
  h, w = face.shape
  factor = np.ones((h, w, 3), np.float32)
  detail = np.zeros((h, w), np.float32)
  labels = np.zeros((h, w), np.uint8)
  kinds = []
  draws = {k: rng.random() < p for k, p in probabilities.items()}
  ys, xs = np.nonzero(face)
  if len(xs) == 0:
    return factor, detail, labels, kinds
  pos = surface[ys, xs].astype(np.float64)                  # [N, 3] mm
  x, y = pos[:, 0], pos[:, 1]
  iod = geo.iod
  alb = np.maximum(albedo[ys, xs].astype(np.float64), 0.02)
  new = alb.copy()
  keep = np.ones(len(xs))

  def blend(kind, a, colour):
    nonlocal new, keep
    a = np.clip(a, 0.0, 1.0)
    if not (a > 0.02).any():
      return
    new = (1 - a)[:, None] * new + a[:, None] * colour
    keep *= 1 - a
    labels[ys[a > 0.1], xs[a > 0.1]] |= DETAIL_BITS[kind]
    kinds.append(kind)

  if draws.get("beard") and geo.has_eyes:
    top = geo.sub_y - 0.06 * iod + 0.5 * iod * ((x - geo.cx) / iod) ** 2
    zone = _smoothstep(0.0, 0.08 * iod, top - y)
    if geo.has_lips:
      poly = geo.lm[48:60, :2]
      zone *= (_smoothstep(0.5, 2.5, _polygon_distance(x, y, poly, cap=5.0))
               * ~_inside_polygon(x, y, poly))
    density = rng.uniform(0.25, 0.8)
    hair = procedural.value_noise(pos, rng.uniform(0.35, 0.6), rng) > 1.0 - density
    base = rng.uniform(0.0, 0.35)      # darker skin under dense beards
    colour = np.array([[0.06, 0.05, 0.04], [0.18, 0.11, 0.06], [0.35, 0.22, 0.12],
                       [0.45, 0.45, 0.45]][rng.integers(4)])
    blend("beard", zone * np.maximum(hair * rng.uniform(0.6, 0.95), base), colour)
  if draws.get("brows") and geo.has_brows:
    a = np.zeros(len(xs))
    cell = rng.uniform(0.7, 1.2)
    strokes = procedural.value_noise(np.stack([x * 0.25, y * 1.6], -1), cell, rng)
    thick = rng.uniform(0.06, 0.11) * iod
    for ids in (range(17, 22), range(22, 27)):
      line = geo.lm[list(ids), :2]
      order = np.argsort(line[:, 0])
      lx, ly = line[order, 0], line[order, 1]
      inner = np.argmin(np.abs(lx - geo.cx))
      y_line = np.interp(x, lx, ly)
      along = np.clip(np.abs(x - lx[inner]) / max(np.ptp(lx), 1e-6), 0, 1)
      t = thick * (1.0 - 0.55 * along)
      band = (_smoothstep(-t - 0.02 * iod, -t + 0.01 * iod, y - y_line)
              * (1 - _smoothstep(0.0, 0.03 * iod, y - y_line - 0.02 * iod)))
      ends = (_smoothstep(lx.min() - 0.03 * iod, lx.min() + 0.02 * iod, x)
              * (1 - _smoothstep(lx.max() - 0.02 * iod, lx.max() + 0.03 * iod, x)))
      a = np.maximum(a, band * ends)
    colour = np.array([[0.05, 0.04, 0.03], [0.16, 0.10, 0.06], [0.38, 0.27, 0.16],
                       [0.55, 0.45, 0.3]][rng.integers(4)])
    blend("brows", a * (0.45 + 0.55 * strokes) * rng.uniform(0.7, 1.0), colour)
  if draws.get("lips") and geo.has_lips:
    poly = geo.lm[48:60, :2]
    inside = _inside_polygon(x, y, poly)
    dist = _polygon_distance(x, y, poly, cap=2.0)
    a = np.where(inside, _smoothstep(0.0, 0.8, dist), 0.0)
    colour = np.array([[0.55, 0.03, 0.08], [0.75, 0.2, 0.35], [0.35, 0.05, 0.2],
                       [0.45, 0.22, 0.15], [0.8, 0.35, 0.4]][rng.integers(5)])
    blend("lips", a * rng.uniform(0.5, 0.95), colour)
  if draws.get("freckles") and geo.has_eyes:
    zone = ((y < geo.eye_y - 0.12 * iod) & (y > geo.mouth_y + 0.15 * iod)
            & (np.abs(x - geo.cx) < 0.85 * iod))
    if zone.any():
      n = int(rng.integers(25, 120))
      zx, zy = x[zone], y[zone]
      k = rng.integers(len(zx), size=n)
      centres = np.stack([zx[k], zy[k]], -1) + rng.normal(0, 0.5, (n, 2))
      radius = rng.uniform(0.5, 1.3, n)
      d, j = spatial.cKDTree(centres).query(np.stack([x, y], -1))
      a = np.clip(1.2 - d / radius[j], 0, 1) * rng.uniform(0.3, 0.7, n)[j]
      blend("freckles", a, alb * np.array([0.55, 0.42, 0.32]))
  strength = 1.0 - keep
  detail[ys, xs] = strength
  factor[ys, xs] = (new / alb).astype(np.float32)
  return factor, detail, labels, kinds
