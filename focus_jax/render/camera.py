"""Camera pose and perspective projection, with the FOCUS reference's conventions.

Pose. Six numbers per face, as in the reference (``convert_params`` with
``camera2world=False``): three Euler angles ``(a, b, c)`` in radians and a
translation ``t`` in mm. The face is rotated about its model origin, flipped into
camera axes and pushed 1000 mm in front of the camera::

    p = F · Rx(a) · Ry(b) · Rz(c) · v + t + (0, 0, 1000),   F = diag(1, -1, -1)

so with zero pose the face is upright, 1000 mm away, looking at the camera; ``t``
is expressed in camera axes (x right, y down, z away from the camera).

Camera space: x right, y down, z forward (depth, mm, positive in front).

Image space: pixels, x right, y down, and **pixel (row i, col j) covers
[j, j+1) x [i, i+1), so its centre is at (j + 0.5, i + 0.5)**. The principal point
is the image centre (W/2, H/2), which is the reference's (111.5, 111.5) at 224²
expressed in its integer-centre convention. The focal length is 9.06·112 px at
224² and scales linearly with the image width.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

# Reference intrinsics at 224 x 224.
REFERENCE_IMAGE_SIZE = 224
REFERENCE_FOCAL = 9.06 * 112.0
# Distance of the model origin in front of the camera at zero pose (mm).
CAMERA_DISTANCE = 1000.0


@dataclasses.dataclass(frozen=True)
class Intrinsics:
  """Pinhole intrinsics in pixels (static configuration, not traced).

  Attributes:
    focal: focal length in pixels (same for x and y).
    cx, cy: principal point in pixels (pixel-centre-at-+0.5 convention).
    width, height: image size in pixels.
  """
  focal: float
  cx: float
  cy: float
  width: int
  height: int

  @classmethod
  def reference(cls, width: int = REFERENCE_IMAGE_SIZE,
                height: int | None = None) -> "Intrinsics":
    """The reference camera for a ``width`` x ``height`` image (default square)."""
    height = width if height is None else height
    focal = REFERENCE_FOCAL * width / REFERENCE_IMAGE_SIZE
    return cls(focal=focal, cx=width / 2.0, cy=height / 2.0, width=width, height=height)


def euler_rotation(angles) -> jnp.ndarray:
  """Rotation ``Rx(a) @ Ry(b) @ Rz(c)``: [..., 3] radians -> [..., 3, 3]."""
  angles = jnp.asarray(angles)
  a, b, c = angles[..., 0], angles[..., 1], angles[..., 2]
  one, zero = jnp.ones_like(a), jnp.zeros_like(a)

  def mat(rows):
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)

  rx = mat([[one, zero, zero], [zero, jnp.cos(a), -jnp.sin(a)], [zero, jnp.sin(a), jnp.cos(a)]])
  ry = mat([[jnp.cos(b), zero, jnp.sin(b)], [zero, one, zero], [-jnp.sin(b), zero, jnp.cos(b)]])
  rz = mat([[jnp.cos(c), -jnp.sin(c), zero], [jnp.sin(c), jnp.cos(c), zero], [zero, zero, one]])
  return rx @ ry @ rz


def camera_rotation(angles) -> jnp.ndarray:
  """Model-to-camera rotation ``F · Rx(a) · Ry(b) · Rz(c)``: [..., 3] -> [..., 3, 3]."""
  flip = jnp.array([1.0, -1.0, -1.0])
  return flip[:, None] * euler_rotation(angles)  # F @ R with F diagonal.


def camera_translation(translation) -> jnp.ndarray:
  """Camera-space position of the model origin, mm: [..., 3] -> [..., 3]."""
  return jnp.asarray(translation) + jnp.array([0.0, 0.0, CAMERA_DISTANCE])


def to_camera(points, angles, translation) -> jnp.ndarray:
  """Model coordinates -> camera coordinates.

  Args:
    points: [..., N, 3] positions in mm (model coordinates).
    angles: [..., 3] Euler angles in radians.
    translation: [..., 3] translation in mm (camera axes).

  Returns:
    [..., N, 3] camera-space positions in mm (x right, y down, z = depth).
  """
  rotated = jnp.einsum("...ij,...nj->...ni", camera_rotation(angles), points,
                       precision="highest")
  return rotated + camera_translation(translation)[..., None, :]


def rotate_to_camera(directions, angles) -> jnp.ndarray:
  """Rotates directions (e.g. normals) into camera space: [..., N, 3] -> [..., N, 3]."""
  return jnp.einsum("...ij,...nj->...ni", camera_rotation(angles), directions,
                    precision="highest")


def project(points_camera, intrinsics: Intrinsics) -> jnp.ndarray:
  """Perspective projection: [..., N, 3] camera-space mm -> [..., N, 2] pixels (x, y).

  Points at or behind the camera plane produce non-finite or mirrored values; the
  rasterizer clips them, callers that use raw projections should mask ``z > 0``.
  """
  z = points_camera[..., 2]
  x = intrinsics.focal * points_camera[..., 0] / z + intrinsics.cx
  y = intrinsics.focal * points_camera[..., 1] / z + intrinsics.cy
  return jnp.stack([x, y], axis=-1)


def model_to_image(points, angles, translation, intrinsics: Intrinsics):
  """Projects model-space points: returns ([..., N, 2] pixels, [..., N] depth in mm)."""
  cam = to_camera(points, angles, translation)
  return project(cam, intrinsics), cam[..., 2]
