"""Pictures of errors (host-side numpy): per-vertex values as image heat maps.

:func:`vertex_value_image` paints per-vertex values (e.g. the 3D error of every
ground-truth vertex) at the vertices' projected pixels, nearest vertex first
(painter's order), fills the gaps inside a region from the nearest painted pixel,
and :func:`heat_colors` maps values to colours. It is a picture, not a render:
thin self-occluded parts (behind the nose at large yaw) may show through.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Colour ramp of the heat map: dark blue -> cyan -> green -> yellow -> red.
_RAMP = np.array([[0.05, 0.10, 0.50], [0.0, 0.65, 0.95], [0.15, 0.80, 0.25],
                  [0.98, 0.85, 0.10], [0.85, 0.10, 0.05]], np.float32)


def heat_colors(values, vmax: float) -> np.ndarray:
  """[...] values -> [..., 3] RGB in [0, 1]: 0 dark blue ... ``vmax`` (and above) red."""
  t = np.clip(np.nan_to_num(np.asarray(values, np.float64) / max(vmax, 1e-12)), 0.0, 1.0)
  pos = t * (len(_RAMP) - 1)
  lo = np.minimum(np.floor(pos).astype(int), len(_RAMP) - 2)
  frac = (pos - lo)[..., None]
  return ((1 - frac) * _RAMP[lo] + frac * _RAMP[lo + 1]).astype(np.float32)


def vertex_value_image(points, depth, values, region, radius: int = 1) -> np.ndarray:
  """Per-vertex values painted into an image.

  Args:
    points: [V, 2] projected vertices (pixels, x right, y down, centres at +0.5).
    depth: [V] camera depth (mm; larger = farther), for the painter's order.
    values: [V] what to paint.
    region: [H, W] bool where the picture is defined (e.g. the face mask).
    radius: splat half-width in pixels.

  Returns:
    [H, W] float32, NaN outside ``region`` (and everywhere when nothing lands in it).
  """
  region = np.asarray(region, bool)
  h, w = region.shape
  out = np.full((h, w), np.nan, np.float32)
  zbuf = np.full((h, w), np.inf)
  pts = np.asarray(points, np.float64)
  ok = np.isfinite(pts).all(1) & np.isfinite(depth)
  cols = np.floor(pts[ok, 0]).astype(int)
  rows = np.floor(pts[ok, 1]).astype(int)
  z, v = np.asarray(depth)[ok], np.asarray(values)[ok]
  order = np.argsort(-z)                    # far first: nearer vertices overwrite
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      r, c = rows[order] + dy, cols[order] + dx
      inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
      r, c, zz, vv = r[inside], c[inside], z[order][inside], v[order][inside]
      nearer = zz < zbuf[r, c] + 1e-6       # later (nearer) writes win on ties
      zbuf[r[nearer], c[nearer]] = zz[nearer]
      out[r[nearer], c[nearer]] = vv[nearer]
  painted = np.isfinite(out) & region
  if not painted.any():
    return np.full((h, w), np.nan, np.float32)
  _, (ri, ci) = ndimage.distance_transform_edt(~painted, return_indices=True)
  filled = out[ri, ci]
  return np.where(region, filled, np.nan).astype(np.float32)


def heat_map(value_image, vmax: float, background=(0.5, 0.5, 0.5)) -> np.ndarray:
  """[H, W] values (NaN = undefined) -> [H, W, 3] colours, ``background`` where NaN."""
  img = heat_colors(value_image, vmax)
  img[~np.isfinite(value_image)] = background
  return img


def color_bar(height: int, width: int, vmax: float) -> np.ndarray:
  """[height, width, 3] horizontal ramp from 0 (left) to ``vmax`` (right)."""
  ramp = heat_colors(np.linspace(0.0, vmax, width), vmax)
  return np.broadcast_to(ramp[None], (height, width, 3)).copy()
