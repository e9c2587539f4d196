"""Pose initialisation and angle recovery (closed form, no image).

Units: landmarks in pixels (centres at +0.5), model points in mm, angles in rad.
"""

from __future__ import annotations

import jax.numpy as jnp

from focus_jax.render import camera as camera_lib


def angles_from_rotation(rotation) -> jnp.ndarray:
  """Inverse of :func:`camera.euler_rotation`: [..., 3, 3] ``Rx(a)Ry(b)Rz(c)`` -> [..., 3]."""
  r = rotation
  b = jnp.arcsin(jnp.clip(r[..., 0, 2], -1.0, 1.0))
  a = jnp.arctan2(-r[..., 1, 2], r[..., 2, 2])
  c = jnp.arctan2(-r[..., 0, 1], r[..., 0, 0])
  return jnp.stack([a, b, c], axis=-1)


def init_pose(points3d, landmarks, valid, intrinsics: camera_lib.Intrinsics):
  """Closed-form pose from 2D landmarks (weak perspective), one face.

  Fits ``x ≈ s·P·Rc·X + o`` (P drops z) by linear least squares for the 2x4
  affine camera, projects its 2x3 part to the nearest scaled orthonormal rows
  (SVD), completes the rotation with their cross product and converts to the
  reference pose: ``Rc = F·R(angles)``, depth ``f / s``.

  Args:
    points3d: [68, 3] model-space landmark positions (mm).
    landmarks: [68, 2] image landmarks (px); invalid entries may be NaN.
    valid: [68] bool.
    intrinsics: the camera.

  Returns:
    (angles [3] rad, translation [3] mm).
  """
  w = valid.astype(jnp.float32)
  x = jnp.where(valid[:, None], landmarks, 0.0)
  design = jnp.concatenate([points3d, jnp.ones((points3d.shape[0], 1))], axis=1)   # [68, 4]
  dtw = design.T * w[None, :]
  affine = jnp.linalg.solve(dtw @ design + 1e-6 * jnp.eye(4), dtw @ x).T          # [2, 4]
  u, s, vt = jnp.linalg.svd(affine[:, :3], full_matrices=False)
  rows = u @ vt                                                                     # [2, 3]
  scale = jnp.mean(s)
  rc = jnp.concatenate([rows, jnp.cross(rows[0], rows[1])[None]], axis=0)
  rot = jnp.array([1.0, -1.0, -1.0])[:, None] * rc                                 # F·Rc
  # The scale is f / depth of the landmarks' centroid, not of the model origin.
  centroid = jnp.sum(points3d * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1.0)
  depth = intrinsics.focal / scale - rc[2] @ centroid
  tx = (affine[0, 3] - intrinsics.cx) / scale
  ty = (affine[1, 3] - intrinsics.cy) / scale
  return angles_from_rotation(rot), jnp.stack([tx, ty, depth - camera_lib.CAMERA_DISTANCE])
