"""Landmark index tables: iBUG-68 -> vertex (the eos/TOML ``ibug_to_*.txt`` files),
and the NoW challenge's 7 points as iBUG-68 points (:data:`IBUG_OF_NOW`).

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
