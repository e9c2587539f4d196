"""Landmark-based alignment of face images to a recognition network's canonical crop.

Everything is a pure JAX function, differentiable with respect to the image (bilinear
sampling) and, unless stopped, the landmarks.

Coordinates are the project's: pixels, x right, y down, **pixel (i, j) has its centre at
(j + 0.5, i + 0.5)**, in the image and in the crop alike. Affine transforms are
``[..., 2, 3]`` matrices ``A`` acting on column vectors ``(x, y, 1)``; the ones returned
here map *crop* coordinates to *image* coordinates (what sampling needs).

Two crops:

* **ArcFace** (insightface, 112×112): a least-squares similarity from five points (eye
  centres, nose tip, mouth corners — from the 68 landmarks as the FOCUS reference's
  ``extract_5p``) to insightface's five-point template;
* **dlib** (150×150, padding 0.25): ``dlib.get_face_chip_details`` for 68 landmarks — a
  similarity fitted from dlib's mean-face template (eyes, nose, upper lip; no brows, no
  jaw) to the landmarks, turned into dlib's chip rectangle exactly as dlib does,
  including its centring and its ``(size·scale − 1)/(size − 1)`` sampling step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# insightface arcface five-point template for a 112×112 crop, in its own convention
# (pixel centres at integers): left eye, right eye, nose tip, left and right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)

# dlib's mean face (get_face_chip_details): iBUG points 17..67 in a unit square.
_DLIB_MEAN_FACE_X = np.array([
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689])
_DLIB_MEAN_FACE_Y = np.array([
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182])
# The landmarks dlib aligns on: 27..54 and 60..64 (no brows, jaw or lower lip).
DLIB_ALIGN_INDICES = np.array([i for i in range(17, 68)
                               if not (17 <= i <= 26 or 55 <= i <= 59 or 65 <= i <= 67)])


def five_points(landmarks68) -> jnp.ndarray:
  """[..., 68, 2] -> [..., 5, 2]: eye centres (image left, right), nose tip, mouth corners."""
  lm = landmarks68
  return jnp.stack([
      0.5 * (lm[..., 36, :] + lm[..., 39, :]), 0.5 * (lm[..., 42, :] + lm[..., 45, :]),
      lm[..., 30, :], lm[..., 48, :], lm[..., 54, :]], axis=-2)


def similarity_transform(src, dst) -> jnp.ndarray:
  """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

  Minimises Σ‖s·R·src_i + t − dst_i‖² in closed form (the 2-D Umeyama solution, as
  skimage's SimilarityTransform and dlib's find_similarity_transform).

  Args:
    src, dst: [..., N, 2] corresponding points (N ≥ 2), broadcastable.

  Returns:
    [..., 2, 3] affine matrix ``[[a, -b, tx], [b, a, ty]]``.
  """
  src, dst = jnp.broadcast_arrays(jnp.asarray(src), jnp.asarray(dst))
  ms = jnp.mean(src, axis=-2, keepdims=True)
  md = jnp.mean(dst, axis=-2, keepdims=True)
  p, q = src - ms, dst - md
  norm = jnp.sum(p * p, axis=(-2, -1))
  a = jnp.sum(p[..., 0] * q[..., 0] + p[..., 1] * q[..., 1], axis=-1) / norm
  b = jnp.sum(p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0], axis=-1) / norm
  lin = jnp.stack([jnp.stack([a, -b], -1), jnp.stack([b, a], -1)], -2)   # [..., 2, 2]
  t = md[..., 0, :] - jnp.einsum("...ij,...j->...i", lin, ms[..., 0, :])
  return jnp.concatenate([lin, t[..., None]], axis=-1)


def invert_affine(m) -> jnp.ndarray:
  """Inverse of [..., 2, 3] affine maps."""
  lin, t = m[..., :2], m[..., 2]
  inv = jnp.linalg.inv(lin)
  return jnp.concatenate([inv, -jnp.einsum("...ij,...j->...i", inv, t)[..., None]], -1)


def apply_affine(m, points) -> jnp.ndarray:
  """[..., 2, 3] applied to [..., N, 2] points."""
  return jnp.einsum("...ij,...nj->...ni", m[..., :2], points) + m[..., None, :, 2]


def arcface_transform(landmarks68, crop_size: int = 112) -> jnp.ndarray:
  """Crop -> image affine of insightface's aligned crop (as the FOCUS reference).

  The similarity is fitted image -> template (as skimage's ``estimate(lm, template)``
  in the reference) and then inverted. Both sides are shifted by the same half pixel,
  which a similarity fit is equivariant to, so the result is exact in our convention.

  Args:
    landmarks68: [..., 68, 2] image pixels (centre +0.5 convention).
    crop_size: output size; the template is scaled from 112.

  Returns:
    [..., 2, 3] mapping crop coordinates to image coordinates.
  """
  template = jnp.asarray(ARCFACE_TEMPLATE_112 * (crop_size / 112.0) + 0.5)
  image_to_crop = similarity_transform(five_points(landmarks68), template)
  return invert_affine(image_to_crop)


def dlib_chip_transform(landmarks68, size: int = 150, padding: float = 0.25) -> jnp.ndarray:
  """Crop -> image affine of ``dlib.get_face_chip_details(shape68, size, padding)``.

  Reproduces dlib's geometry (its coordinates have pixel centres at integers; we shift
  by half a pixel on both sides): similarity from the template chip points to the
  landmarks, angle and scale from its linear part, chip rectangle centred on the image
  of the chip centre (size/2, size/2) with width size·scale − 1, and chip pixel (0, 0)
  and (size−1, size−1) on the rectangle's corners.

  dlib extracts faces much larger than the chip (rect area > 4× the chip's) from an
  image pyramid (pre-blurred); this function samples the original image.
  """
  xs = (padding + _DLIB_MEAN_FACE_X[DLIB_ALIGN_INDICES - 17]) / (2 * padding + 1) * size
  ys = (padding + _DLIB_MEAN_FACE_Y[DLIB_ALIGN_INDICES - 17]) / (2 * padding + 1) * size
  chip_points = jnp.asarray(np.stack([xs, ys], -1), jnp.float32)
  img_points = jnp.take(landmarks68, jnp.asarray(DLIB_ALIGN_INDICES), axis=-2) - 0.5
  tform = similarity_transform(chip_points, img_points)          # dlib coordinates
  a, b = tform[..., 0, 0], tform[..., 1, 0]                        # s·cos θ, s·sin θ
  scale = jnp.sqrt(a * a + b * b)
  cos, sin = a / scale, b / scale
  centre = apply_affine(tform, jnp.full((1, 2), size / 2.0))[..., 0, :]
  # dlib: centered_drect(centre, size·scale, size·scale) spans size·scale − 1 pixels and
  # chip pixels 0 … size−1 are spread over it.
  step = (size * scale - 1.0) / (size - 1.0)
  lin = step[..., None, None] * jnp.stack([jnp.stack([cos, -sin], -1),
                                           jnp.stack([sin, cos], -1)], -2)
  half = (size - 1) / 2.0
  # image_dlib = centre + lin @ (chip_dlib - half); chip_dlib = chip - 0.5, image = image_dlib + 0.5
  t = centre + 0.5 - jnp.einsum("...ij,j->...i", lin, jnp.asarray([half + 0.5, half + 0.5]))
  return jnp.concatenate([lin, t[..., None]], -1)


def warp_affine(images, crop_to_image, out_size, fill: float = 0.0) -> jnp.ndarray:
  """Bilinear resampling of images into crops.

  Args:
    images: [B, H, W, C].
    crop_to_image: [B, 2, 3] affine from crop to image coordinates (centre +0.5).
    out_size: (height, width) of the crop, or an int for a square.
    fill: value of samples outside the image (neighbours outside count as ``fill``, as
      zero padding in kornia/``grid_sample``).

  Returns:
    [B, h, w, C] crops, differentiable w.r.t. images and the transform.
  """
  if isinstance(out_size, int):
    out_size = (out_size, out_size)
  h, w = out_size
  height, width = images.shape[1], images.shape[2]
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=images.dtype) + 0.5,
                        jnp.arange(w, dtype=images.dtype) + 0.5, indexing="ij")
  grid = jnp.stack([xs, ys], -1).reshape(-1, 2)                       # [h·w, 2]
  src = apply_affine(crop_to_image.astype(images.dtype), grid) - 0.5  # to integer centres

  def sample(img, pts):
    x, y = pts[:, 0], pts[:, 1]
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    out = 0.0
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
      for dx, wx in ((0, 1.0 - fx), (1, fx)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        v = img[jnp.clip(yi, 0, height - 1), jnp.clip(xi, 0, width - 1)]
        v = jnp.where(inside[:, None], v, jnp.asarray(fill, img.dtype))
        out = out + (wx * wy)[:, None] * v
    return out.reshape(h, w, img.shape[-1])

  return jax.vmap(sample)(images, src)
