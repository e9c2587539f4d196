"""Synthetic face photos drawn in NumPy (no JAX compilation) for the fit/NoW tests.

A small z-buffer rasterizer with Gouraud shading under a frontal light; the
camera is the project's (:mod:`focus_jax.render.camera`): ``p = F·R·v + t +
(0, 0, 1000)``, reference intrinsics, pixel centres at +0.5.
"""

import functools

import numpy as np

from focus_jax import morphable
from focus_jax.render.camera import CAMERA_DISTANCE, Intrinsics


@functools.lru_cache(maxsize=None)
def small_model():
  """The built-in face at low resolution, few components (shared by the test modules)."""
  return morphable.builtin(resolution=37, num_shape=20, num_expression=10, num_albedo=20)


def _rotation(a, b, c):
  ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
  rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
  ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
  rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
  return rx @ ry @ rz


def _vertex_normals(v, f):
  n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
  out = np.zeros_like(v)
  for k in range(3):
    np.add.at(out, f[:, k], n)
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def rasterize(cam, colors, triangles, intr: Intrinsics, background):
  """Z-buffer rasterization: (image [H, W, 3], face mask [H, W] bool)."""
  h, w = intr.height, intr.width
  px = intr.focal * cam[:, :2] / cam[:, 2:3] + np.array([intr.cx, intr.cy])
  image = np.array(background, np.float64, copy=True)
  zbuf = np.full((h, w), np.inf)
  for a, b, c in triangles:
    p = px[[a, b, c]]
    # Twice the signed area; model CCW seen from +z turns negative in y-down pixels.
    area = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[2, 0] - p[0, 0]) * (p[1, 1] - p[0, 1])
    if area >= -1e-12:   # back-facing or degenerate
      continue
    x0, x1 = int(max(np.floor(p[:, 0].min()), 0)), int(min(np.ceil(p[:, 0].max()), w))
    y0, y1 = int(max(np.floor(p[:, 1].min()), 0)), int(min(np.ceil(p[:, 1].max()), h))
    if x0 >= x1 or y0 >= y1:
      continue
    xs, ys = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
    wa = ((p[2, 0] - p[1, 0]) * (ys - p[1, 1]) - (p[2, 1] - p[1, 1]) * (xs - p[1, 0])) / area
    wb = ((p[0, 0] - p[2, 0]) * (ys - p[2, 1]) - (p[0, 1] - p[2, 1]) * (xs - p[2, 0])) / area
    wc = 1.0 - wa - wb
    inside = (wa >= 0) & (wb >= 0) & (wc >= 0)
    z = wa * cam[a, 2] + wb * cam[b, 2] + wc * cam[c, 2]
    sub = zbuf[y0:y1, x0:x1]
    win = inside & (z < sub)
    sub[win] = z[win]
    col = wa[..., None] * colors[a] + wb[..., None] * colors[b] + wc[..., None] * colors[c]
    image[y0:y1, x0:x1][win] = col[win]
  return image.astype(np.float32), np.isfinite(zbuf)


def face_photo(model=None, height=64, width=64, shape_seed=0, angles=(0.1, 0.3, -0.05),
               translation=(4.0, -3.0, 20.0), expression=None, background_seed=1):
  """A shaded face over a noisy background.

  Returns:
    dict(image [H, W, 3] float32, face [H, W] bool, landmarks [68, 2] (NaN where
    the model has none), vertices [V, 3] model space mm, vertices_camera [V, 3],
    shape [Ks], triangles [F, 3]).
  """
  model = model or small_model()
  rng = np.random.default_rng(shape_seed)
  shape = rng.normal(0, 1.0, model.num_shape).astype(np.float32)
  expr = (np.zeros(model.num_expression, np.float32) if expression is None
          else np.asarray(expression, np.float32))
  v = (np.asarray(model.mean, np.float64)
       + np.tensordot(shape, np.asarray(model.shape_basis, np.float64), 1)
       + np.tensordot(expr, np.asarray(model.expression_basis, np.float64), 1))
  tris = np.asarray(model.triangles)
  rot = np.array([1.0, -1.0, -1.0])[:, None] * _rotation(*angles)
  cam = v @ rot.T + np.asarray(translation) + np.array([0, 0, CAMERA_DISTANCE])
  normals = _vertex_normals(v, tris) @ rot.T
  shade = 0.35 + 0.65 * np.clip(-normals[:, 2], 0.0, 1.0)
  colors = np.asarray(model.albedo_mean, np.float64) * shade[:, None]
  intr = Intrinsics.reference(width, height)
  bg_rng = np.random.default_rng(background_seed)
  background = 0.1 + 0.25 * bg_rng.random((height, width, 3))
  image, face = rasterize(cam, colors, tris, intr, background)
  lm_idx = np.asarray(model.landmarks)
  lm_cam = cam[np.maximum(lm_idx, 0)]
  lms = intr.focal * lm_cam[:, :2] / lm_cam[:, 2:3] + np.array([intr.cx, intr.cy])
  lms[lm_idx < 0] = np.nan
  return dict(image=image, face=face, landmarks=lms.astype(np.float32),
              vertices=v.astype(np.float32), vertices_camera=cam.astype(np.float32),
              shape=shape, triangles=tris)
