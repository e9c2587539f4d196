"""Face datasets: the FOCUS reference layout, and plain image folders.

Reference layout (the reference's ``CelebDataset`` and README)::

    image_root/
      Dataset/                        # the image folder
        1.jpg
        1_visible_skin_mask.png       # optional ground-truth mask (white = visible skin)
        ...
      train_landmarks.csv             # rows: name, 136 numbers (see landmarks.py)
      val_landmarks.csv
      test_landmarks.csv

The CSVs sit next to the image folder (the reference reads
``image_dir + '../train_landmarks.csv'``); this reader also accepts them inside
the image folder. Names in the CSV are relative to the image folder and may
contain sub-folders. The mask of ``<stem>.<ext>`` is ``<stem>_visible_skin_mask.png``.

A plain image folder (no CSV) gets its landmarks from the dlib detector
(:mod:`focus_jax.data.detect`, ``pip install focus-jax[detect]``), cached.

Bad data does not stop a run: images listed but missing are dropped with one
warning when the dataset is opened (:attr:`FaceDataset.missing`); an image that
cannot be decoded raises :class:`~focus_jax.errors.ImageReadError` from
:meth:`FaceDataset.load`, which the input pipeline catches, warns about and counts.
An empty dataset is a :class:`~focus_jax.errors.DataError`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Optional, Sequence

import numpy as np

from focus_jax import images as images_lib
from focus_jax.data import align as align_lib
from focus_jax.data import landmarks as lm_lib
from focus_jax.errors import DataError, ImageReadError

MASK_SUFFIX = "_visible_skin_mask.png"


def mask_path_for(image_path: str) -> str:
  """``dir/x.jpg`` -> ``dir/x_visible_skin_mask.png`` (the reference's naming)."""
  return os.path.splitext(image_path)[0] + MASK_SUFFIX


@dataclasses.dataclass(frozen=True)
class Record:
  """One image of a dataset.

  Attributes:
    name: file name relative to the image folder ('/'-separated).
    path: absolute path of the image.
    landmarks: [68, 2] float32 photo pixels (project convention).
    mask_path: path of the ground-truth visible-skin mask, or None.
    source: where the landmarks came from: ``'csv'`` or the detector's method
      (``'hog'``, ``'cnn'``, ``'crop'`` = whole-crop fallback).
  """
  name: str
  path: str
  landmarks: np.ndarray
  mask_path: Optional[str] = None
  source: str = "csv"


class FaceDataset(Sequence):
  """An indexable list of :class:`Record` plus loading.

  ``len(ds)``, ``ds[i]`` (the record) and ``ds.load(i)`` (the arrays). Loading
  aligns the photo to the canonical crop (see :mod:`focus_jax.data.align`) unless
  ``size`` is None, so every example of a dataset has the same shape.
  """

  def __init__(self, records: Sequence[Record], image_dir: str, description: str,
               missing: Sequence[str] = (), failed: Sequence[str] = ()):
    self.records = list(records)
    self.image_dir = image_dir
    self.description = description
    self.missing = tuple(missing)   # listed but absent
    self.failed = tuple(failed)     # no landmarks (detection failed / unreadable)
    if not self.records:
      extra = ""
      if self.missing:
        extra = f"; all {len(self.missing)} listed images are missing, e.g. {self.missing[0]!r}"
      elif self.failed:
        extra = f"; no landmarks for any of its {len(self.failed)} images"
      raise DataError(f"{description}: the dataset is empty{extra}. Check the image "
                      "folder and the landmark CSV.")

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]

  def __repr__(self) -> str:
    return f"FaceDataset({self.description!r}, {len(self)} images)"

  @property
  def names(self) -> list:
    return [r.name for r in self.records]

  def load(self, index: int, size: Optional[int] = align_lib.TRAINING_SIZE,
           rotation: bool = True) -> dict:
    """Reads and (by default) aligns one example.

    Args:
      index: record index.
      size: crop size for alignment, or None for the photo as it is.
      rotation: similarity with rotation (default) or scale + translation only.

    Returns:
      dict(image [S, S, 3] float32 in [0, 1], landmarks [68, 2] float32 (crop
      pixels), mask [S, S] float32 ground-truth visible skin (zeros if absent),
      has_mask bool scalar, transform [2, 3] float32 crop -> photo pixels (the
      identity when ``size`` is None), original_size [2] int32 (H, W), name str).

    Raises:
      ImageReadError: the image or its mask cannot be decoded.
    """
    rec = self.records[index]
    image = images_lib.read_image(rec.path)
    mask = images_lib.read_mask(rec.mask_path) if rec.mask_path else None
    if mask is not None and mask.shape != image.shape[:2]:
      raise ImageReadError(f"{rec.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but the "
                           f"image {rec.path} is {image.shape[1]}x{image.shape[0]}")
    h, w = image.shape[:2]
    if size is None:
      out = dict(image=image, landmarks=rec.landmarks.astype(np.float32),
                 mask=mask if mask is not None else np.zeros((h, w), np.float32),
                 transform=np.eye(2, 3, dtype=np.float32))
    else:
      al = align_lib.align_example(image, rec.landmarks, mask, size=size, rotation=rotation)
      out = dict(image=al["image"], landmarks=al["landmarks"],
                 mask=al["mask"] if mask is not None else np.zeros((size, size), np.float32),
                 transform=al["transform"])
    out.update(has_mask=np.asarray(mask is not None), original_size=np.array([h, w], np.int32),
               name=rec.name)
    return out


def _find_csv(image_dir: str, split: str) -> list:
  name = lm_lib.csv_name(split)
  parent = os.path.dirname(os.path.normpath(os.path.abspath(image_dir)))
  return [os.path.join(parent, name), os.path.join(image_dir, name)]


def read_reference(image_dir: str | os.PathLike, split: str = "train",
                   csv_path: Optional[str] = None, masks: bool = True) -> FaceDataset:
  """Opens one split of a dataset in the reference layout.

  Args:
    image_dir: the image folder.
    split: ``'train'``, ``'val'``, ``'test'`` (or any ``<split>_landmarks.csv``).
    csv_path: the landmark file, if not at a standard place (next to the image
      folder, or inside it).
    masks: look for ``<stem>_visible_skin_mask.png`` next to each image.

  Raises:
    DataError: no landmark file, malformed rows (file and line named), or an
      empty dataset.
  """
  image_dir = os.path.abspath(os.fspath(image_dir))
  if not os.path.isdir(image_dir):
    raise DataError(f"image folder not found: {image_dir}")
  candidates = [os.fspath(csv_path)] if csv_path else _find_csv(image_dir, split)
  found = next((c for c in candidates if os.path.isfile(c)), None)
  if found is None:
    raise DataError(f"{image_dir}: no landmark file for split {split!r} (looked for "
                    f"{', '.join(candidates)}). Write one in the reference layout, or open "
                    "the folder with read_folder() to detect landmarks automatically.")
  table = lm_lib.read_landmarks_csv(found)
  records, missing = [], []
  for name, lm in zip(table.names, table.landmarks):
    path = os.path.join(image_dir, name.replace("//", "/").lstrip("/"))
    if not os.path.isfile(path):
      missing.append(name)
      continue
    mask = mask_path_for(path) if masks else None
    records.append(Record(name, path, lm, mask if mask and os.path.isfile(mask) else None,
                          "csv"))
  if missing and records:
    warnings.warn(f"{found}: {len(missing)} of {len(table)} listed images are missing from "
                  f"{image_dir} and are skipped (first: {missing[0]!r})", stacklevel=2)
  return FaceDataset(records, image_dir, f"{found} ({split})", missing=missing)


def read_folder(image_dir: str | os.PathLike, detector=None, cache_dir: Optional[str] = None,
                recursive: bool = True, progress: bool = True, masks: bool = True,
                refresh: bool = False) -> FaceDataset:
  """Opens a plain image folder, detecting landmarks automatically (cached).

  Args:
    image_dir: the folder (searched recursively by default).
    detector: a :class:`focus_jax.data.detect.LandmarkDetector` (default: a new
      one with default options; needs ``pip install focus-jax[detect]``).
    cache_dir: where to keep the cache when the folder is read-only (default:
      the user cache folder, see :func:`focus_jax.data.detect.cache_location`).
    recursive: include sub-folders.
    progress: show a progress bar while detecting.
    masks: look for ground-truth masks next to the images.
    refresh: ignore an existing cache.

  Images where detection fails or that cannot be read are left out with a
  warning (:attr:`FaceDataset.failed`).
  """
  from focus_jax.data import detect  # pylint: disable=import-outside-toplevel
  image_dir = os.path.abspath(os.fspath(image_dir))
  result = detect.detect_folder(image_dir, detector=detector, cache_dir=cache_dir,
                                recursive=recursive, progress=progress, refresh=refresh)
  records = []
  for name, lm, method in zip(result.names, result.landmarks, result.methods):
    path = os.path.join(image_dir, name)
    mask = mask_path_for(path) if masks else None
    records.append(Record(name, path, lm, mask if mask and os.path.isfile(mask) else None,
                          method))
  return FaceDataset(records, image_dir, f"{image_dir} (detected landmarks)",
                     failed=result.failed + result.unreadable)


def open_dataset(image_dir: str | os.PathLike, split: Optional[str] = None,
                 **kwargs) -> FaceDataset:
  """The reference layout when ``<split>_landmarks.csv`` exists, else detection.

  ``split`` None means: a reference-layout ``train`` split if present, else the
  whole folder with detected landmarks. Keyword arguments go to
  :func:`read_reference` or :func:`read_folder`.
  """
  image_dir = os.fspath(image_dir)
  want = split or "train"
  if any(os.path.isfile(c) for c in _find_csv(os.path.abspath(image_dir), want)):
    return read_reference(image_dir, want, **kwargs)
  if split is not None:
    raise DataError(f"{image_dir}: no {lm_lib.csv_name(split)} next to or inside the folder")
  return read_folder(image_dir, **kwargs)
