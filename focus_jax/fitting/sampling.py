"""Image and vertex sampling helpers of the fit.

Pixel positions are (x, y) with pixel centres at +0.5; images are [H, W, C].
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from focus_jax.render import camera as camera_lib


def bilinear_sample(image, points):
  """Samples [H, W, C] at [N, 2] pixel positions (centres at +0.5), edge-clamped."""
  h, w = image.shape[0], image.shape[1]
  x = jnp.clip(points[:, 0] - 0.5, 0.0, w - 1.0)
  y = jnp.clip(points[:, 1] - 0.5, 0.0, h - 1.0)
  x0 = jnp.clip(jnp.floor(x), 0, w - 2)
  y0 = jnp.clip(jnp.floor(y), 0, h - 2)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  flat = image.reshape(h * w, -1)
  g = lambda yy, xx: jnp.take(flat, yy * w + xx, axis=0)
  return ((1 - fy) * ((1 - fx) * g(y0, x0) + fx * g(y0, x0 + 1))
          + fy * ((1 - fx) * g(y0 + 1, x0) + fx * g(y0 + 1, x0 + 1)))


def nearest_pixel(image, points):
  """[H, W, C] at the pixels containing [N, 2] positions (clamped) -> [N, C]."""
  h, w = image.shape[0], image.shape[1]
  col = jnp.clip(jnp.floor(points[:, 0]).astype(jnp.int32), 0, w - 1)
  row = jnp.clip(jnp.floor(points[:, 1]).astype(jnp.int32), 0, h - 1)
  return image[row, col]


def scaled_intrinsics(intr: camera_lib.Intrinsics, k: int) -> camera_lib.Intrinsics:
  """The camera of an image downsampled k times (see :func:`downsample`)."""
  if k == 1:
    return intr
  return camera_lib.Intrinsics(focal=intr.focal / k, cx=intr.cx / k, cy=intr.cy / k,
                               width=intr.width // k, height=intr.height // k)


def downsample(image, k: int):
  """k x k box average: [H, W, C] -> [H // k, W // k, C] (ragged edge dropped)."""
  if k == 1:
    return image
  h, w = image.shape[0] // k * k, image.shape[1] // k * k
  x = image[:h, :w].reshape(h // k, k, w // k, k, -1)
  return x.mean(axis=(1, 3))


def sample_vertices(model, max_vertices: int) -> tuple:
  """Host-side vertex subset of the M-step: every k-th vertex plus the landmark
  vertices. Returns (indices [Vs] int32, landmark positions in the subset [68])."""
  num_v = model.num_vertices
  stride = max(1, -(-num_v // max_vertices)) if max_vertices else 1
  lm = np.asarray(model.landmarks)
  idx = np.union1d(np.arange(0, num_v, stride), lm[lm >= 0]).astype(np.int32)
  lm_sub = np.searchsorted(idx, np.maximum(lm, 0)).astype(np.int32)
  return idx, lm_sub


def submodel(model, idx, lm_sub) -> dict:
  """The model's arrays restricted to the M-step vertices (traced, gathered once)."""
  take = lambda a: jnp.take(a, idx, axis=-2)
  return dict(mean=take(model.mean), shape_basis=take(model.shape_basis),
              expression_basis=take(model.expression_basis),
              albedo_mean=take(model.albedo_mean), albedo_basis=take(model.albedo_basis),
              landmarks=lm_sub)

