"""Landmark files in the FOCUS reference layout: ``<split>_landmarks.csv``.

Format (the reference's ``CelebDataset``): no header; one row per image, comma
separated: the image file name relative to the image folder, then the 68 iBUG
landmarks as 136 numbers ``x0, y0, x1, y1, ..., x67, y67``.

Coordinates. The reference files come from dlib-style detectors, whose pixel
coordinates put pixel *centres* on integers (pixel (row i, col j) has its centre
at (j, i)), and the reference reads them with ``int(x)``. The project's
convention puts the centre at (j + 0.5, i + 0.5) (see
:mod:`focus_jax.render.camera`). So the CSV keeps the reference's numbers and
this module converts at the edge:

* reading: ``ours = csv + 0.5`` (:data:`CSV_TO_OURS`);
* writing: ``csv = ours - 0.5``, rounded to integers by default so that the
  reference's ``int(x)`` reader accepts the file (``decimals > 0`` writes
  fixed-point numbers, which this reader accepts too).

``nan`` is accepted and written for landmarks a source does not define.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from focus_jax.errors import DataError

NUM_LANDMARKS = 68
NUM_VALUES = 2 * NUM_LANDMARKS
# Reference (integer pixel centres) -> project (centres at +0.5).
CSV_TO_OURS = 0.5
SPLITS = ("train", "val", "test")
# Values near float32's maximum (3.4e38) could become inf in the float32 table.
_FLOAT32_MAX = 1e38


def csv_name(split: str) -> str:
  """File name of a split's landmark file: ``'train'`` -> ``'train_landmarks.csv'``."""
  return f"{split}_landmarks.csv"


@dataclasses.dataclass(frozen=True)
class LandmarkTable:
  """The rows of one landmark file.

  Attributes:
    names: N image file names, relative to the image folder, as in the file.
    landmarks: [N, 68, 2] float32 pixels in the project's convention (x right,
      y down, pixel centre at +0.5); nan where undefined.
    path: the file read, or None for tables built in memory.
    lines: N 1-based line numbers of the rows in ``path`` (for error messages).
  """
  names: tuple
  landmarks: np.ndarray
  path: Optional[str] = None
  lines: Optional[tuple] = None

  def __len__(self) -> int:
    return len(self.names)

  def as_dict(self) -> dict:
    """``{name: [68, 2] landmarks}``."""
    return {n: lm for n, lm in zip(self.names, self.landmarks)}


def parse_landmarks_csv(text: str, path: str = "<string>") -> LandmarkTable:
  """Parses the text of a reference-layout landmark file (see module docstring).

  Blank lines are ignored; lines may end in \\n, \\r\\n or \\r. Raises
  :class:`DataError` naming ``path`` and the line for a row without 136 numbers, with
  a value that is not a number, or infinite (or beyond float32: the table's type);
  ``nan`` marks an undefined landmark. Malformed CSV (a NUL byte, a quoted field left
  open or longer than the csv module's field limit) is a DataError too.
  """
  names, rows, lines = [], [], []
  # newline="": the csv module does the line splitting (\r alone too, quoted newlines).
  reader = csv.reader(io.StringIO(text, newline=""))
  while True:
    try:
      row = next(reader)
    except StopIteration:
      break
    except csv.Error as e:
      raise DataError(f"{path}, line {reader.line_num}: not a CSV row ({e})") from None
    line = reader.line_num
    if not row or all(not c.strip() for c in row):
      continue
    name = row[0].strip()
    values = [c.strip() for c in row[1:]]
    if values and values[-1] == "":   # tolerate one trailing comma
      values = values[:-1]
    if len(values) != NUM_VALUES:
      raise DataError(
          f"{path}, line {line}: expected the image name and {NUM_VALUES} landmark values "
          f"(68 points x, y), got {len(values)} values for {name!r}")
    try:
      numbers = [float(v) for v in values]
    except ValueError:
      bad = next(i for i, v in enumerate(values) if not _is_number(v))
      raise DataError(f"{path}, line {line}: value {bad + 2} ({values[bad]!r}) for {name!r} is "
                      "not a number") from None
    if not name:
      raise DataError(f"{path}, line {line}: empty image name")
    bad = next((i for i, v in enumerate(numbers)
                if np.isinf(v) or (np.isfinite(v) and abs(v) > _FLOAT32_MAX)), None)
    if bad is not None:
      raise DataError(f"{path}, line {line}: value {bad + 2} ({values[bad]!r}) for {name!r} is "
                      "infinite or too large (use nan for an undefined landmark)")
    names.append(name)
    rows.append(numbers)
    lines.append(line)
  landmarks = (np.asarray(rows, np.float64).reshape(-1, NUM_LANDMARKS, 2) + CSV_TO_OURS
               ).astype(np.float32)
  return LandmarkTable(tuple(names), landmarks, path, tuple(lines))


def _is_number(v: str) -> bool:
  try:
    float(v)
    return True
  except ValueError:
    return False


def read_landmarks_csv(path: str | os.PathLike) -> LandmarkTable:
  """Reads a reference-layout landmark file; landmarks come back in our convention.

  Raises:
    DataError: the file is missing or unreadable, or a row is malformed (the
      message names the file and the line).
  """
  path = os.fspath(path)
  try:
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
      text = f.read()
  except FileNotFoundError:
    raise DataError(f"landmark file not found: {path}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read the landmark file ({e})") from e
  return parse_landmarks_csv(text, path)


def format_row(name: str, landmarks, decimals: int = 0) -> str:
  """One CSV row: ``name`` and [68, 2] landmarks (our convention) in the reference's."""
  lm = np.asarray(landmarks, np.float64).reshape(NUM_LANDMARKS, 2) - CSV_TO_OURS
  if "," in name or "\n" in name:
    raise DataError(f"image name {name!r} contains a comma or newline; the reference "
                    "layout cannot store it")

  def fmt(v):
    if not np.isfinite(v):
      return "nan"
    if decimals <= 0:
      return str(int(np.floor(v + 0.5)))
    return f"{v:.{decimals}f}"

  return ",".join([name] + [fmt(v) for v in lm.ravel()])


def write_landmarks_csv(path: str | os.PathLike, names: Sequence[str], landmarks,
                        decimals: int = 0) -> None:
  """Writes a reference-layout landmark file, atomically.

  Args:
    path: output ``.csv``.
    names: N image names relative to the image folder.
    landmarks: [N, 68, 2] pixels in the project's convention.
    decimals: 0 (default) rounds to integers, which the reference's reader
      (``int(x)``) needs; more keeps sub-pixel precision for this reader.
  """
  path = os.fspath(path)
  landmarks = np.asarray(landmarks)
  if landmarks.shape != (len(names), NUM_LANDMARKS, 2):
    raise DataError(f"{path}: landmarks must be [{len(names)}, 68, 2] for {len(names)} "
                    f"names, got {landmarks.shape}")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      for name, lm in zip(names, landmarks):
        f.write(format_row(name, lm, decimals) + "\n")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def merge_tables(tables: Iterable[LandmarkTable]) -> LandmarkTable:
  """Concatenates tables (later rows win for repeated names)."""
  merged = {}
  for t in tables:
    merged.update(t.as_dict())
  names = tuple(merged)
  lms = (np.stack([merged[n] for n in names]) if names
         else np.zeros((0, NUM_LANDMARKS, 2), np.float32))
  return LandmarkTable(names, lms.astype(np.float32))
