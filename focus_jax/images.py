"""Host-side image helpers: PNG writing, tiling, landmark overlays (numpy, not traced)."""

from __future__ import annotations

import os
from typing import Sequence

import imageio.v3 as iio
import numpy as np


def to_uint8(image) -> np.ndarray:
  """[H, W, C] float in [0, 1] (or uint8) -> uint8, clipped."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(path: str | os.PathLike, image) -> None:
  """Writes ``image`` ([H, W], [H, W, 3] float in [0, 1] or uint8) as PNG, atomically."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.png"
  try:
    iio.imwrite(tmp, to_uint8(image))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def tile(images: Sequence[np.ndarray], cols: int, pad: int = 2, background: float = 1.0):
  """Lays equally sized [H, W, 3] images out on a grid with ``cols`` columns."""
  images = [np.asarray(im, np.float32) for im in images]
  h, w = images[0].shape[:2]
  rows = -(-len(images) // cols)
  canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), background, np.float32)
  for k, im in enumerate(images):
    r, c = divmod(k, cols)
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    canvas[y:y + h, x:x + w] = im if im.ndim == 3 else im[..., None]
  return canvas


def draw_points(image, points, color=(0.1, 0.9, 0.2), radius: int = 1, valid=None):
  """Draws [N, 2] pixel positions (x, y; centre-at-+0.5 convention) as small squares."""
  out = np.array(image, np.float32, copy=True)
  h, w = out.shape[:2]
  points = np.asarray(points)
  valid = np.ones(len(points), bool) if valid is None else np.asarray(valid)
  for (x, y), ok in zip(points, valid):
    if not ok or not np.isfinite([x, y]).all():
      continue
    col, row = int(np.floor(x)), int(np.floor(y))
    out[max(row - radius, 0):min(row + radius + 1, h),
        max(col - radius, 0):min(col + radius + 1, w)] = color
  return out
