"""Alignment of face photos to the canonical training crop, and back (host side, NumPy).

A similarity transform (rotation, uniform scale, translation) is fitted by least
squares from five landmarks — eye centres, nose tip, mouth corners, taken from the
68 iBUG points as the FOCUS reference's ``extract_5p`` does — to a canonical
five-point template at the training resolution (224 by default). The
:class:`Alignment` keeps the transform and its inverse, so landmarks, images,
renders and masks can be moved between the photo and the crop in both directions.

Coordinates are the project's everywhere: pixels, x right, y down, pixel (row i,
col j) covers [j, j+1) x [i, i+1) (centre at +0.5), in the photo and in the crop.
Affine maps are [2, 3] matrices acting on column vectors (x, y, 1).

The template (:data:`TEMPLATE_224`) is where the five points of a mean face at
zero pose land under the reference camera (:meth:`Intrinsics.reference`, face
1000 mm away): the average of the built-in model and the Surrey Face Model,
made mirror-symmetric (both agree with it within 2 px). An aligned photo
therefore needs about zero pose and translation to be explained by the renderer.
The reference aligns the same way in spirit (Deep3DFaceRecon's ``align_img``:
BFM's five standard 3-D points, scale and translation only); pass
``rotation=False`` for a scale-and-translation-only fit.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

TRAINING_SIZE = 224
# Eye centres (image left, image right), nose tip, mouth corners (image left,
# right) at 224 x 224, project convention.
TEMPLATE_224 = np.array([[79.08, 77.60], [144.92, 77.60], [112.00, 114.40],
                         [86.92, 147.70], [137.08, 147.70]], np.float64)


def five_points(landmarks68) -> np.ndarray:
  """[..., 68, 2] -> [..., 5, 2]: eye centres (mean of the two corners), nose tip
  (iBUG 31), mouth corners (iBUG 49, 55), in the image's left-to-right order."""
  lm = np.asarray(landmarks68, np.float64)
  if lm.shape[-2:] != (68, 2):
    raise ValueError(f"five_points: expected [..., 68, 2] landmarks, got {lm.shape}")
  return np.stack([0.5 * (lm[..., 36, :] + lm[..., 39, :]),
                   0.5 * (lm[..., 42, :] + lm[..., 45, :]),
                   lm[..., 30, :], lm[..., 48, :], lm[..., 54, :]], axis=-2)


def template(size: int = TRAINING_SIZE) -> np.ndarray:
  """[5, 2] canonical five points for a ``size`` x ``size`` crop (scaled from 224)."""
  return TEMPLATE_224 * (size / TRAINING_SIZE)


def template_from_model(model, size: int = TRAINING_SIZE) -> np.ndarray:
  """[5, 2] five points of ``model``'s mean face at zero pose under the reference camera.

  How :data:`TEMPLATE_224` was made; use it to align to another model's framing.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from focus_jax import morphable  # pylint: disable=import-outside-toplevel
  from focus_jax.render import camera  # pylint: disable=import-outside-toplevel
  lm3 = morphable.landmark_positions(model, model.mean)
  px, _ = camera.model_to_image(lm3, jnp.zeros(3), jnp.zeros(3),
                                camera.Intrinsics.reference(size))
  return five_points(np.asarray(px))


def similarity(src, dst, rotation: bool = True) -> np.ndarray:
  """Least-squares similarity mapping ``src`` onto ``dst`` (Umeyama, 2-D).

  Minimises sum_i ||s R src_i + t - dst_i||^2 over scale s > 0, rotation R and
  translation t (R = identity when ``rotation`` is False). Points with a
  non-finite coordinate are ignored.

  Args:
    src, dst: [N, 2] corresponding points, N >= 2 usable.

  Returns:
    [2, 3] float64 affine ``[[a, -b, tx], [b, a, ty]]``.
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  ok = np.isfinite(src).all(-1) & np.isfinite(dst).all(-1)
  src, dst = src[ok], dst[ok]
  if len(src) < 2:
    raise ValueError("similarity: need at least two finite point pairs")
  ms, md = src.mean(0), dst.mean(0)
  p, q = src - ms, dst - md
  norm = np.sum(p * p)
  if norm <= 0:
    raise ValueError("similarity: the source points coincide")
  a = np.sum(p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1]) / norm
  b = np.sum(p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]) / norm if rotation else 0.0
  if not rotation:
    a = max(a, 1e-12)
  lin = np.array([[a, -b], [b, a]])
  return np.concatenate([lin, (md - lin @ ms)[:, None]], axis=1)


def invert(matrix) -> np.ndarray:
  """Inverse of a [2, 3] affine map."""
  m = np.asarray(matrix, np.float64)
  inv = np.linalg.inv(m[:, :2])
  return np.concatenate([inv, (-inv @ m[:, 2])[:, None]], axis=1)


def apply(matrix, points) -> np.ndarray:
  """[2, 3] affine applied to [..., 2] points."""
  m = np.asarray(matrix, np.float64)
  return np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]


def warp(image, out_to_src, out_shape: Sequence[int], order: int = 1, cval: float = 0.0,
         antialias: bool = True) -> np.ndarray:
  """Resamples ``image`` on another pixel grid.

  Output pixel (i, j) takes the input's value at ``out_to_src @ (j + .5, i + .5, 1)``
  (project convention on both sides). When the map shrinks the image by more than
  1.5x, the input is first blurred (Gaussian, sigma = (shrink - 1) / 2 input px) so
  that downscaled photos do not alias.

  Args:
    image: [H, W] or [H, W, C] array.
    out_to_src: [2, 3] affine from output to input coordinates.
    out_shape: (height, width) of the output.
    order: spline order (0 nearest, 1 bilinear, 3 cubic).
    cval: value outside the input.
    antialias: blur before shrinking (see above).

  Returns:
    [h, w] or [h, w, C] float32.
  """
  img = np.asarray(image, np.float32)
  m = np.asarray(out_to_src, np.float64)
  # Index space: input (col, row) = L (col_o, row_o) + L (.5, .5) + t - (.5, .5).
  lin = m[:, :2]
  offset_xy = lin @ np.array([0.5, 0.5]) + m[:, 2] - 0.5
  # scipy wants (row, col) order.
  lin_rc = lin[::-1, ::-1]
  offset_rc = offset_xy[::-1]
  shrink = float(np.sqrt(abs(np.linalg.det(lin))))
  if antialias and shrink > 1.5:
    sigma = 0.5 * (shrink - 1.0)
    img = ndimage.gaussian_filter(img, sigma=(sigma, sigma) + (0,) * (img.ndim - 2))
  h, w = int(out_shape[0]), int(out_shape[1])

  def one(channel):
    return ndimage.affine_transform(channel, lin_rc, offset=offset_rc, output_shape=(h, w),
                                    order=order, mode="constant", cval=cval, prefilter=order > 1)

  if img.ndim == 2:
    return one(img).astype(np.float32)
  return np.stack([one(img[..., c]) for c in range(img.shape[-1])], -1).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Alignment:
  """A photo-to-crop similarity and everything needed to go back.

  Attributes:
    matrix: [2, 3] photo -> crop coordinates.
    size: the crop is ``size`` x ``size`` pixels.
    original_shape: (height, width) of the photo.
  """
  matrix: np.ndarray
  size: int
  original_shape: tuple

  @property
  def inverse(self) -> np.ndarray:
    """[2, 3] crop -> photo coordinates."""
    return invert(self.matrix)

  @property
  def scale(self) -> float:
    """Crop pixels per photo pixel."""
    return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

  def to_crop(self, points) -> np.ndarray:
    """[..., 2] photo pixels -> crop pixels."""
    return apply(self.matrix, points)

  def to_original(self, points) -> np.ndarray:
    """[..., 2] crop pixels -> photo pixels."""
    return apply(self.inverse, points)

  def crop(self, image, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """[H, W(, C)] photo -> [size, size(, C)] aligned crop."""
    return warp(image, self.inverse, (self.size, self.size), order=order, cval=cval)

  def uncrop(self, crop_image, background=None, order: int = 1):
    """Maps a crop-sized image (render, mask) back onto the photo's pixel grid.

    Args:
      crop_image: [size, size] or [size, size, C].
      background: None (zeros) or an array of the photo's shape ([H, W(, C)]) to
        keep where the crop does not reach.
      order: 1 (bilinear) for images, 0 for label masks.

    Returns:
      (image [H, W(, C)] float32, inside [H, W] bool: the pixels the crop covers).
    """
    h, w = self.original_shape
    crop_image = np.asarray(crop_image, np.float32)
    out = warp(crop_image, self.matrix, (h, w), order=order)
    ones = np.ones(crop_image.shape[:2], np.float32)
    inside = warp(ones, self.matrix, (h, w), order=0, antialias=False) > 0.5
    if background is not None:
      bg = np.asarray(background, np.float32)
      sel = inside if out.ndim == 2 else inside[..., None]
      out = np.where(sel, out, bg)
    return out, inside


def estimate(landmarks68, original_shape: Sequence[int], size: int = TRAINING_SIZE,
             rotation: bool = True, target: Optional[np.ndarray] = None) -> Alignment:
  """The alignment of a photo from its 68 landmarks.

  Args:
    landmarks68: [68, 2] photo pixels (project convention).
    original_shape: (height, width) of the photo.
    size: crop size; the template is :func:`template` (size).
    rotation: False for a scale-and-translation-only fit (as the reference).
    target: [5, 2] template to use instead of the canonical one.
  """
  dst = template(size) if target is None else np.asarray(target, np.float64)
  matrix = similarity(five_points(landmarks68), dst, rotation=rotation)
  return Alignment(matrix=matrix, size=int(size),
                   original_shape=(int(original_shape[0]), int(original_shape[1])))


def align_example(image, landmarks68, mask=None, size: int = TRAINING_SIZE,
                  rotation: bool = True) -> dict:
  """Crops a photo, its landmarks and optional mask to the canonical frame.

  Args:
    image: [H, W, 3] float photo.
    landmarks68: [68, 2] photo pixels.
    mask: optional [H, W] mask (resampled bilinearly, then thresholded at 0.5).
    size: crop size.

  Returns:
    dict(image [size, size, 3] float32, landmarks [68, 2] float32 (crop pixels),
    mask [size, size] float32 or None, transform [2, 3] float32 crop -> photo,
    alignment :class:`Alignment`).
  """
  image = np.asarray(image)
  al = estimate(landmarks68, image.shape[:2], size=size, rotation=rotation)
  out = dict(image=np.clip(al.crop(image), 0.0, 1.0),
             landmarks=al.to_crop(landmarks68).astype(np.float32),
             mask=None, transform=al.inverse.astype(np.float32), alignment=al)
  if mask is not None:
    out["mask"] = (al.crop(np.asarray(mask, np.float32)) >= 0.5).astype(np.float32)
  return out
