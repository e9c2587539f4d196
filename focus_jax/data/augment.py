"""Training augmentation: random shift, scale, rotation and horizontal flip of an aligned
crop, applied to its image, its 68 landmarks and its masks alike (host side, NumPy).

The ranges are the FOCUS reference's (Occlusion-Robust-MoFA ``util/load_dataset.py``,
``get_affine_mat`` with ``'shift_scale_rot_flip'``, commit 33a5add; the same in
``UNet/unet_load_data.py``), which augments every training example of stages 1, 3 and 4:

* shift: an integer number of pixels in [-10, 10] per axis at 224 px
  (:data:`SHIFT_PX_224`; scaled to the crop size and rounded here);
* scale: uniform in [0.9, 1.1] (:data:`SCALE_DELTA`);
* rotation: uniform in [-10, 10] degrees (:data:`ROTATION_DEG`);
* flip: left-right with probability 1/2, the landmarks re-labelled with
  :data:`MIRROR_68` (a left eye corner becomes a right eye corner).

The map is the reference's composition: flip about the crop centre, then shift, then
rotate and scale about the centre, i.e. ``out = c + s R(θ) (F (p - c) + t)`` with
``c`` = (S/2, S/2). Coordinates are the project's (x right, y down, pixel centres at
+0.5; see :mod:`focus_jax.data.align`), for the image, the masks and the landmarks, so
the three move together exactly. Pixels that come from outside the crop are black
(image) and 0 (masks), as in the reference. The reference resamples with bicubic
interpolation (PIL); so does this module for the image (clipped to [0, 1]), masks are
bilinear and then thresholded at 0.5.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from focus_jax.data import align as align_lib

SHIFT_PX_224 = 10
SCALE_DELTA = 0.1
ROTATION_DEG = 10.0
FLIP_PROBABILITY = 0.5
MASK_KEYS = ("mask", "pseudo")   # [S, S] example entries warped like the image


def _mirror_68() -> np.ndarray:
  """[68] iBUG-68 left-right relabelling: after a flip, point i is the old point
  ``MIRROR_68[i]`` (the reference's table in ``apply_lm_affine``; an involution)."""
  m = np.arange(68)
  runs = [(0, 17), (17, 27), (31, 36), (48, 55), (55, 60), (60, 65), (65, 68)]
  for a, b in runs:      # contour, brows (both), nostrils, outer/inner lips: reversed
    m[a:b] = np.arange(a, b)[::-1]
  # The eyes swap as wholes: 36-41 (image left) <-> 42-47, each ring read mirrored.
  m[36:40], m[40:42] = np.arange(45, 41, -1), np.arange(47, 45, -1)
  m[42:46], m[46:48] = np.arange(39, 35, -1), np.arange(41, 39, -1)
  return m


MIRROR_68 = _mirror_68()


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """One draw: ``shift`` (x, y) [px of the crop], ``scale``, ``angle`` [degrees,
  counter-clockwise on screen], ``flip`` (left-right)."""
  shift: tuple
  scale: float
  angle: float
  flip: bool

  def matrix(self, size: int) -> np.ndarray:
    """[2, 3] affine from crop coordinates before to after the augmentation."""
    c = np.array([size / 2.0, size / 2.0])
    a = np.deg2rad(self.angle)
    # y points down, so a counter-clockwise turn on screen is R(-a) in x/y.
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    flip = np.diag([-1.0 if self.flip else 1.0, 1.0])
    lin = self.scale * rot @ flip
    t = c + self.scale * rot @ (np.asarray(self.shift, np.float64) - flip @ c)
    return np.concatenate([lin, t[:, None]], axis=1)


IDENTITY = Augmentation(shift=(0.0, 0.0), scale=1.0, angle=0.0, flip=False)


def sample(rng: np.random.Generator, size: int) -> Augmentation:
  """A random :class:`Augmentation` for a ``size``² crop (the reference's ranges)."""
  max_shift = int(round(SHIFT_PX_224 * size / 224.0))
  shift = rng.integers(-max_shift, max_shift + 1, size=2)
  return Augmentation(shift=(float(shift[0]), float(shift[1])),
                      scale=float(1.0 + SCALE_DELTA * rng.uniform(-1.0, 1.0)),
                      angle=float(ROTATION_DEG * rng.uniform(-1.0, 1.0)),
                      flip=bool(rng.random() < FLIP_PROBABILITY))


def transform_landmarks(aug: Augmentation, size: int, landmarks) -> np.ndarray:
  """[..., 68, 2] landmarks (crop px) moved and, for a flip, re-labelled."""
  lm = align_lib.apply(aug.matrix(size), landmarks).astype(np.float32)
  return lm[..., MIRROR_68, :] if aug.flip else lm


def transform_image(aug: Augmentation, image, order: int = 3) -> np.ndarray:
  """[S, S] or [S, S, C] image resampled under ``aug`` (outside = 0; spline ``order``)."""
  size = np.shape(image)[0]
  if np.shape(image)[1] != size:
    raise ValueError(f"augment: square crops only, got {np.shape(image)[:2]}")
  out = align_lib.warp(image, align_lib.invert(aug.matrix(size)), (size, size), order=order,
                       antialias=False)
  return np.clip(out, 0.0, 1.0) if order > 1 else out


def augment_example(example: dict, aug: Augmentation) -> dict:
  """A new example dict: ``image`` (bicubic), ``landmarks``, and every [S, S] entry of
  :data:`MASK_KEYS` (bilinear, thresholded at 0.5) under ``aug``; the rest as is."""
  out = dict(example)
  image = np.asarray(example["image"])
  size = image.shape[0]
  out["image"] = transform_image(aug, image, order=3)
  out["landmarks"] = transform_landmarks(aug, size, example["landmarks"])
  for k in MASK_KEYS:
    if k in example:
      warped = transform_image(aug, np.asarray(example[k], np.float32), order=1)
      out[k] = (warped >= 0.5).astype(np.float32)
  return out


def make_transform(image_size: int) -> Callable[[dict, np.random.Generator], dict]:
  """``f(example, rng)`` for :class:`~focus_jax.data.pipeline.Pipeline`: a fresh
  :func:`sample` per example, applied with :func:`augment_example`."""

  def transform(example: dict, rng: np.random.Generator) -> dict:
    size = np.shape(example["image"])[0]
    if size != image_size:
      raise ValueError(f"augment: expected {image_size}² crops, got {size}")
    return augment_example(example, sample(rng, image_size))

  return transform
