"""Pasted rectangular occluders for the UNet pre-training data (cut-out / cut-mix).

The FOCUS reference has two experimental loaders that paste occluders into training
faces: ``util/load_dataset_cutout.py`` and ``util/load_dataset_unet_cutmix.py`` with
their helper ``util/random_synthesis.py`` (Occlusion-Robust-MoFA, commit 33a5add; only
their compiled ``__pycache__/*.cpython-36.pyc`` files are in the repository, the facts
below are read from those). None of the released Step scripts uses them: stage 3
(``Step3_Pretrain_Unet.py``) reads ``UNet/unet_load_data.py``, which only applies the
shift / scale / rotation / flip augmentation (:mod:`focus_jax.data.augment`). So the
paper configuration pastes nothing (``--unet_occluders=none``); the two variants are
switchable here:

* the rectangle (``rand_region``): top-left corner an integer in
  [0.15·S, 0.75·(S-1)] per axis, extent an integer in [0.1·S, 0.4·S] per axis, the
  bottom-right corner clipped to S-1, then one pixel less (:func:`random_box`);
* ``'cutout'``: the rectangle is blacked out (``cut_out``); the cut-out loader does so
  for one example in four (two fair coins; :data:`PASTE_PROBABILITY`);
* ``'cutmix'``: the rectangle is filled with the same window of another picture
  (``cut_mix``: a random 224² window of an EgoHands frame, i.e. hands). EgoHands is not
  available here, so the window is a random procedural texture
  (:func:`focus_jax.data.procedural.texture`), with the same probability.

In both, the pasted pixels are outliers: the example's pseudo inlier mask is set to 0
there (``cut_mix_tensor`` multiplies the valid mask into the label the same way).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from focus_jax.data import procedural

KINDS = ("none", "cutout", "cutmix")
PASTE_PROBABILITY = 0.25
BOX_START = (0.15, 0.75)      # top-left corner, fraction of S (and of S - 1 at the end)
BOX_SIDE = (0.1, 0.4)         # extent, fraction of S


def random_box(rng: np.random.Generator, size: int) -> tuple:
  """(x0, y0, width, height) [px] of a reference ``rand_region`` rectangle in a
  ``size``² image; the rectangle covers columns x0..x0+width-1, rows y0..y0+height-1."""
  start = rng.integers(int(BOX_START[0] * size), int(BOX_START[1] * (size - 1)) + 1, size=2)
  extent = rng.integers(int(BOX_SIDE[0] * size), int(BOX_SIDE[1] * size) + 1, size=2)
  end = np.minimum(start + extent, size - 1)
  side = np.maximum(end - start - 1, 0)
  return int(start[1]), int(start[0]), int(side[1]), int(side[0])


def box_mask(box: tuple, size: int) -> np.ndarray:
  """[size, size] float32: 1 inside ``box`` (x0, y0, width, height), 0 elsewhere."""
  x0, y0, w, h = box
  m = np.zeros((size, size), np.float32)
  m[y0:y0 + h, x0:x0 + w] = 1.0
  return m


def paste(image, content, occluder) -> np.ndarray:
  """``image`` [S, S, 3] with ``content`` [S, S, 3] where ``occluder`` [S, S] is 1."""
  a = np.asarray(occluder, np.float32)[..., None]
  return (np.asarray(image, np.float32) * (1.0 - a)
          + np.asarray(content, np.float32) * a).astype(np.float32)


def occlude_example(example: dict, rng: np.random.Generator, kind: str) -> dict:
  """A new example with one pasted rectangle (``kind`` 'cutout' or 'cutmix'): image
  pasted, ``pseudo`` (if present) 0 in the rectangle; the rest as is."""
  if kind not in KINDS[1:]:
    raise ValueError(f"unet_occluders must be one of {KINDS}, got {kind!r}")
  image = np.asarray(example["image"], np.float32)
  size = image.shape[0]
  occluder = box_mask(random_box(rng, size), size)
  if kind == "cutout":
    content = np.zeros_like(image)
  else:
    content, _ = procedural.texture(rng, size, size)
  out = dict(example)
  out["image"] = paste(image, content, occluder)
  if "pseudo" in example:
    out["pseudo"] = (np.asarray(example["pseudo"], np.float32) * (1.0 - occluder))
  return out


def make_transform(kind: str, probability: float = PASTE_PROBABILITY
                   ) -> Optional[Callable[[dict, np.random.Generator], dict]]:
  """``f(example, rng)`` pasting a rectangle into a ``probability`` share of the
  examples, or None for ``kind == 'none'``."""
  if kind not in KINDS:
    raise ValueError(f"unet_occluders must be one of {KINDS}, got {kind!r}")
  if kind == "none":
    return None

  def transform(example: dict, rng: np.random.Generator) -> dict:
    if rng.random() >= probability:
      return example
    return occlude_example(example, rng, kind)

  return transform
