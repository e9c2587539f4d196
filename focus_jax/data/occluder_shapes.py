"""Geometry, shapes and shading of the real occluders (host side, NumPy; the families
are drawn in :mod:`focus_jax.data.occluder_families`, the public API is
:mod:`focus_jax.data.real_occluders`).

:class:`Face` places an occluder on a photo from its 68 landmarks; signed distances
(px, negative inside) of polygons, capsules, rounded boxes and superellipses give
anti-aliased coverage (:func:`alpha_of`); :func:`dome` shades a part as a rounded
solid; :class:`_Paint` stacks parts with "over" compositing.
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

from focus_jax.data import occluders as synthetic_occluders
from focus_jax.data import procedural

_LIGHT = np.array([-0.45, -0.6, 0.66])      # from the upper left and the front (x right, y down)

# ----------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class Face:
  """Where the face is: landmarks and a frame (u right, v down, unit = eye distance).

  Attributes:
    landmarks: [68, 2] float64 photo pixels.
    frame: :class:`focus_jax.data.occluders.FaceFrame` from the eyes and mouth.
    hull: [H, W] bool landmark hull.
    skin: [3] the photo's median skin colour (cheeks and nose ridge).
  """
  landmarks: np.ndarray
  frame: synthetic_occluders.FaceFrame
  hull: np.ndarray
  skin: np.ndarray

  @property
  def shape(self):
    return self.hull.shape

  @property
  def s(self) -> float:
    """Eye-centre distance in pixels."""
    return self.frame.scale

  @property
  def roll(self) -> float:
    return float(np.arctan2(self.frame.right[1], self.frame.right[0]))

  def at(self, u, v) -> np.ndarray:
    """[2] pixel of face coordinates (u, v) (eye distances from the frame's centre)."""
    return self.frame.to_image(u, v)

  def uv(self, point):
    """Face coordinates of a pixel point."""
    return self.frame.local(np.asarray(point)[0], np.asarray(point)[1])

  def outward(self, point, amount: float) -> np.ndarray:
    """``point`` moved ``amount`` eye distances away from the frame's centre."""
    d = np.asarray(point, np.float64) - self.frame.centre
    return point + amount * self.s * d / max(np.linalg.norm(d), 1e-6)


def _grid(shape):
  ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64) + 0.5
  return xs, ys


def _disc_pixels(image, centre, radius):
  xs, ys = _grid(image.shape[:2])
  inside = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2
  return image[inside]


def skin_colour(photo, landmarks, scale: float) -> np.ndarray:
  """[3] median colour of the cheeks (below the outer eye corners) and the nose ridge."""
  lm = np.asarray(landmarks, np.float64)
  spots = ((0.45 * lm[2] + 0.4 * lm[31] + 0.15 * lm[36], 0.13),
           (0.45 * lm[14] + 0.4 * lm[35] + 0.15 * lm[45], 0.13),
           (lm[28], 0.07))
  px = np.concatenate([_disc_pixels(photo, c, r * scale) for c, r in spots])
  if len(px) == 0:
    return np.array([0.8, 0.6, 0.5], np.float32)
  return np.median(px, 0).astype(np.float32)


def face_geometry(photo, landmarks) -> Face:
  """The :class:`Face` of a photo ([H, W, 3] float in [0, 1]) and its [68, 2] landmarks."""
  from focus_jax.eval import mask_metrics  # pylint: disable=import-outside-toplevel
  lm = np.asarray(landmarks, np.float64)
  if lm.shape != (68, 2) or not np.isfinite(lm).all():
    raise ValueError(f"real occluders need 68 finite landmarks, got shape {lm.shape}")
  photo = np.asarray(photo, np.float32)
  hull = mask_metrics.landmark_hull(lm, photo.shape[:2])
  frame = synthetic_occluders.face_frame(lm, hull)
  return Face(lm, frame, hull, skin_colour(photo, lm, frame.scale))


# ----------------------------------------------------------------------------- shapes


def polygon_sdf(xs, ys, poly) -> np.ndarray:
  """Signed distance (px; negative inside) of pixel centres to a closed polygon [N, 2]."""
  poly = np.asarray(poly, np.float64)
  d = np.full(xs.shape, np.inf)
  inside = np.zeros(xs.shape, bool)
  for a, b in zip(poly, np.roll(poly, -1, 0)):
    ex, ey = b - a
    px, py = xs - a[0], ys - a[1]
    h = np.clip((px * ex + py * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
    d = np.minimum(d, np.hypot(px - h * ex, py - h * ey))
    crosses = (a[1] <= ys) != (b[1] <= ys)
    with np.errstate(divide="ignore", invalid="ignore"):
      x_at = a[0] + (ys - a[1]) * ex / ey
    inside ^= crosses & (xs < x_at)
  return np.where(inside, -d, d)


def capsule_sdf(xs, ys, a, b, r) -> np.ndarray:
  """Signed distance (px) to the segment a-b thickened by radius r (px)."""
  ex, ey = b[0] - a[0], b[1] - a[1]
  px, py = xs - a[0], ys - a[1]
  h = np.clip((px * ex + py * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
  return np.hypot(px - h * ex, py - h * ey) - r


def box_sdf(x, y, half_w, half_h, radius=0.0) -> np.ndarray:
  """Signed distance to a rounded box centred at 0 (local px coordinates)."""
  qx, qy = np.abs(x) - (half_w - radius), np.abs(y) - (half_h - radius)
  return (np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
          + np.minimum(np.maximum(qx, qy), 0) - radius)


def superellipse_sdf(x, y, a, b, p=2.0) -> np.ndarray:
  """Approximate signed distance (px) to ``|x/a|^p + |y/b|^p = 1``."""
  r = (np.abs(x / a) ** p + np.abs(y / b) ** p) ** (1.0 / p)
  return (r - 1.0) * np.minimum(a, b)


def alpha_of(sdf) -> np.ndarray:
  """Coverage of a pixel by a shape from its signed distance (1 px ramp)."""
  return np.clip(0.5 - sdf, 0.0, 1.0)


def local(xs, ys, centre, angle):
  """Pixel coordinates in a frame at ``centre`` rotated by ``angle`` (rad; its +y is
  the image's +y rotated by ``angle``)."""
  c, s = np.cos(angle), np.sin(angle)
  dx, dy = xs - centre[0], ys - centre[1]
  return dx * c + dy * s, -dx * s + dy * c


def dome(sdf, radius, light=_LIGHT, ambient=0.5, diffuse=0.55, specular=0.12, shininess=20.0):
  """Shading [H, W] of a solid with a round cross-section of ``radius`` px (inside the
  shape, ``sdf`` < 0), lit from ``light``; about 1 where it faces the light."""
  t = np.clip(-sdf / max(radius, 1e-6), 0.0, 1.0)
  height = radius * np.sqrt(1.0 - (1.0 - t) ** 2)
  gy, gx = np.gradient(height)
  n = np.stack([-gx, -gy, np.ones_like(gx)], -1)
  n /= np.linalg.norm(n, axis=-1, keepdims=True)
  l = np.asarray(light, np.float64) / np.linalg.norm(light)
  half = l + np.array([0.0, 0.0, 1.0])
  half /= np.linalg.norm(half)
  lam = np.clip(n @ l, 0.0, 1.0)
  spec = np.clip(n @ half, 0.0, 1.0) ** shininess
  return ambient + diffuse * lam + specular * spec


def _light(rng) -> np.ndarray:
  l = _LIGHT + rng.normal(0, 0.25, 3) * np.array([1, 1, 0.3])
  l[2] = abs(l[2]) + 0.3
  return l


def _hsv(h, s, v) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def saturated_colour(rng) -> np.ndarray:
  return _hsv(rng.random(), rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))


def skin_like_colour(rng, face: Face) -> np.ndarray:
  """The photo's own skin colour, a little brighter or darker."""
  return np.clip(face.skin * rng.uniform(0.85, 1.15) * rng.uniform(0.97, 1.03, 3), 0, 1)


def _fabric(rng, shape, kind=None) -> np.ndarray:
  """[H, W, 3] a fabric texture whose colours are saturated ones."""
  tex, _ = procedural.texture(rng, shape[0], shape[1], kind=kind)
  return tex


def _noise(rng, shape, cell, octaves=3):
  return procedural.fractal_noise(rng, shape[0], shape[1], cell, octaves=octaves)


class _Paint:
  """Parts painted over each other ("over" compositing, premultiplied colour)."""

  def __init__(self, shape):
    self.alpha = np.zeros(shape, np.float64)
    self.premult = np.zeros(tuple(shape) + (3,), np.float64)

  def over(self, alpha, rgb, window=(slice(None), slice(None))):
    """Paints ``rgb`` ([..., 3] or [3]) with coverage ``alpha`` on top (inside ``window``)."""
    a = np.clip(alpha, 0.0, 1.0)
    prem = self.premult[window]
    rgb = np.broadcast_to(np.asarray(rgb, np.float64), prem.shape)
    self.premult[window] = rgb * a[..., None] + prem * (1.0 - a[..., None])
    self.alpha[window] = a + self.alpha[window] * (1.0 - a)

  def layer(self):
    """(alpha [H, W], rgb [H, W, 3]) of everything painted."""
    rgb = self.premult / np.maximum(self.alpha, 1e-6)[..., None]
    return self.alpha, np.clip(rgb, 0.0, 1.0)
