"""Landmark index tables: iBUG-68 -> vertex (the eos/TOML ``ibug_to_*.txt`` files, the
FOCUS reference's BFM 2017 table :data:`FOCUS_BFM2017_CROP_LANDMARKS`), and the NoW
challenge's 7 points as iBUG-68 points (:data:`IBUG_OF_NOW`).

A table is a TOML file with a ``[landmark_mappings]`` section whose keys are iBUG
point numbers (1-based) and values mesh vertex indices (0-based)::

    [landmark_mappings]
    9 = 33      # chin bottom
    31 = 8156   # nose tip

Points not listed (typically the jaw contour 1-8, 10-17) become -1.
"""

from __future__ import annotations

import os
import tomllib

import numpy as np

from focus_jax.errors import ModelFileError
from focus_jax.morphable.model import NUM_LANDMARKS

IBUG_OF_NOW = (37, 40, 43, 46, 34, 49, 55)
"""iBUG-68 point (1-based) of each of the 7 NoW landmarks, in the challenge's order."""
NOW_LANDMARK_NAMES = ("image-left eye outer corner", "image-left eye inner corner",
                      "image-right eye inner corner", "image-right eye outer corner",
                      "nose bottom", "image-left mouth corner", "image-right mouth corner")


FOCUS_BFM2017_CROP_LANDMARKS = np.array([
    16678, 16817, 16480, 16254, 32170, 32866, 33302, 33598, 33765, 33949, 34239, 34693,
    35398, 27717, 27536, 27137, 27249, 27998, 28747, 29133, 29336, 29503, 30188, 30352,
    30557, 30947, 31682, 8122, 8137, 8147, 8152, 6627, 7219, 8165, 9107, 9695, 2475, 4275,
    5050, 5829, 4802, 3900, 10382, 11280, 12053, 14123, 12323, 11419, 5137, 5897, 7467, 8175,
    8883, 10450, 11110, 9372, 8666, 8194, 7722, 7012, 5524, 7358, 8184, 9010, 10852, 8659,
    8187, 7715], np.int32)
"""The FOCUS reference's iBUG-68 -> vertex table for BFM 2017 ``model2017-1_bfm_nomouth.h5``
(all 68 points, the jaw contour included; Occlusion-Robust-MoFA ``util/load_object.py``,
``landmark_idxs``, commit 33a5add). The indices are into the reference's *cropped* model:
its ``Object3DMM(..., is_crop=True)`` (every training step script) keeps the vertices
``basel_3DMM/idxes_crop.pkl['points']`` in that order, so full-model vertex ``points[k]``
is cropped vertex ``k``. Use it through ``bfm.load_bfm2017(landmarks='reference',
crop=<that vertex list>)``."""


def focus_table_on_full_model(crop_vertices, source: str = "crop") -> np.ndarray:
  """:data:`FOCUS_BFM2017_CROP_LANDMARKS` as full-model vertex indices, given the
  reference's crop: ``crop_vertices`` [N] full-model indices in the crop's order (the
  reference's ``idxes_crop.pkl['points']``), or a [V] bool mask (ascending order).

  Raises:
    ModelFileError: the crop is too small for the table.
  """
  keep = np.asarray(crop_vertices)
  keep = np.flatnonzero(keep) if keep.dtype == bool else keep.ravel().astype(np.int64)
  need = int(FOCUS_BFM2017_CROP_LANDMARKS.max()) + 1
  if keep.size < need:
    raise ModelFileError(f"{source}: the FOCUS reference's landmark table indexes a crop of "
                         f"at least {need} vertices (its idxes_crop.pkl 'points'), this crop "
                         f"keeps {keep.size}")
  return keep[FOCUS_BFM2017_CROP_LANDMARKS].astype(np.int32)


def read_ibug_mapping(path: str | os.PathLike) -> np.ndarray:
  """Reads an iBUG-68 mapping file into a [68] int32 array (-1 = undefined)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ModelFileError(f"landmark mapping file not found: {path}")
  try:
    with open(path, "rb") as f:
      table = tomllib.load(f)
  except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
    raise ModelFileError(f"{path}: not a TOML landmark mapping file ({e})") from e
  if "landmark_mappings" not in table:
    raise ModelFileError(f"{path}: no [landmark_mappings] section (expected an eos-style "
                         "ibug_to_*.txt file)")
  out = np.full((NUM_LANDMARKS,), -1, np.int32)
  for key, value in table["landmark_mappings"].items():
    try:
      point = int(key)
    except ValueError:
      raise ModelFileError(f"{path}: landmark key {key!r} is not an iBUG point number") from None
    if not 1 <= point <= NUM_LANDMARKS or not isinstance(value, int) or value < 0:
      raise ModelFileError(f"{path}: bad mapping {key} = {value!r} (need iBUG point 1-68 "
                           "= non-negative vertex index)")
    out[point - 1] = value
  return out


def write_ibug_mapping(path: str | os.PathLike, landmarks: np.ndarray, comment: str = ""):
  """Writes a [68] table (-1 entries are omitted) in the format read above."""
  lines = [f"# {line}" for line in comment.splitlines()] + ["[landmark_mappings]"]
  for i, v in enumerate(np.asarray(landmarks)):
    if v >= 0:
      lines.append(f"{i + 1} = {int(v)}")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
