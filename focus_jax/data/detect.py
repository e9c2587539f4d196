"""Automatic 68-point landmarks with dlib (optional: ``pip install focus-jax[detect]``).

Uses dlib (the ``dlib-bin`` wheels) with the models shipped by the
``face-recognition-models`` package: the 68-point shape predictor
(``shape_predictor_68_face_landmarks.dat``, trained on iBUG 300-W with dlib's
HOG face boxes) and the CNN face detector (``mmod_human_face_detector.dat``);
the HOG detector is built into dlib.

Per image: the HOG detector (image upsampled 0, then up to ``upsample`` times),
then the CNN detector; the largest face wins and the predictor runs in its box.
When neither finds a face and the image is already an aligned face crop (masks
and glasses often defeat detectors on such crops), the predictor runs on a fixed
box on the whole crop instead, and the result records ``method='crop'``. That box
is, by default, the median of the HOG boxes found on the other images of the same
folder (relative to the image size; aligned crops put faces at the same place),
or the whole crop when fewer than :data:`MIN_CALIBRATION` were found. Why: on the
shared 112x112 occluded crops, re-running the predictor on the 284 images where
HOG finds a face, the median box reproduces the HOG-box landmarks to a mean
error of 5 % of the eye distance (median 0: many aligned crops get exactly that
box), the whole-crop box only to 13 % (median 10 %).

dlib's landmark coordinates are integer pixel centres; they are converted to the
project's convention (centre at +0.5) here, on the way out.

Folder results are cached in the reference CSV layout (``detected_landmarks.csv``,
see :mod:`focus_jax.data.landmarks`) plus ``detected_landmarks_info.csv`` (method,
box, score per image, including the failures), next to the images, or, when the
image folder is read-only, in the user cache folder (:func:`cache_location`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import os
import stat
import warnings
from typing import Optional, Sequence

import numpy as np

from focus_jax import images as images_lib
from focus_jax.data import landmarks as lm_lib
from focus_jax.errors import DataError, ImageReadError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
CACHE_CSV = "detected_landmarks.csv"
CACHE_INFO = "detected_landmarks_info.csv"
# Fewest HOG detections in a folder to calibrate the whole-crop fallback box.
MIN_CALIBRATION = 5
# dlib -> project pixel convention.
DLIB_TO_OURS = 0.5
_INSTALL = "pip install 'focus-jax[detect]' (dlib-bin and face-recognition-models)"


def available() -> bool:
  """Whether dlib and the face-recognition-models files can be found."""
  try:
    model_files()
    import dlib  # pylint: disable=import-outside-toplevel,unused-import
    return True
  except (DataError, ImportError):
    return False


def model_files() -> dict:
  """Paths of the predictor and CNN detector shipped by ``face-recognition-models``.

  Found without importing the package (its ``__init__`` needs ``pkg_resources``,
  which recent setuptools no longer has).

  Raises:
    DataError: the package or its files are missing.
  """
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f"automatic landmarks need the face-recognition-models package: {_INSTALL}")
  folder = os.path.join(list(spec.submodule_search_locations)[0], "models")
  files = dict(predictor=os.path.join(folder, PREDICTOR_FILE),
               cnn_detector=os.path.join(folder, CNN_DETECTOR_FILE))
  for path in files.values():
    if not os.path.isfile(path):
      raise DataError(f"{path} is missing; reinstall face-recognition-models ({_INSTALL})")
  return files


def _dlib():
  try:
    import dlib  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"automatic landmarks need dlib: {_INSTALL} ({e})") from e
  return dlib


@dataclasses.dataclass(frozen=True)
class Detection:
  """Landmarks found in one image.

  Attributes:
    landmarks: [68, 2] float32 pixels (project convention), or None if no face.
    method: ``'hog'``, ``'cnn'``, ``'crop'`` (predictor on the whole-crop box) or
      ``'none'``.
    box: (left, top, right, bottom) of the face box in dlib's inclusive integer
      pixel coordinates, or None.
    score: detector confidence (HOG score or CNN confidence; nan for 'crop').
  """
  landmarks: Optional[np.ndarray]
  method: str
  box: Optional[tuple] = None
  score: float = float("nan")


def is_aligned_crop(shape: Sequence[int], max_size: int = 512) -> bool:
  """The ``aligned='auto'`` rule: a square image no larger than ``max_size``."""
  h, w = int(shape[0]), int(shape[1])
  return abs(h - w) <= 0.02 * max(h, w) and max(h, w) <= max_size


def _to_uint8(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, -1)
  return np.ascontiguousarray(image[..., :3])


class LandmarkDetector:
  """dlib face detection + 68-point shape prediction, with the aligned-crop fallback.

  Args:
    detectors: which detectors to try, in order: ``'hog'`` and/or ``'cnn'``.
    upsample: HOG tries the image upsampled 0..upsample times (small faces).
    cnn_upsample: upsampling for the CNN detector.
    aligned: whether images are aligned face crops (enables the fallback):
      True, False or ``'auto'`` (:func:`is_aligned_crop`).
    fallback_box: (left, top, right, bottom) as fractions of the image width and
      height for the fallback, or None for the whole crop. :func:`detect_folder`
      calibrates it from the folder's HOG boxes.
  """

  def __init__(self, detectors: Sequence[str] = ("hog", "cnn"), upsample: int = 1,
               cnn_upsample: int = 1, aligned="auto", fallback_box: Optional[tuple] = None):
    for d in detectors:
      if d not in ("hog", "cnn"):
        raise ValueError(f"LandmarkDetector: unknown detector {d!r} (use 'hog' and/or 'cnn')")
    dlib = _dlib()
    files = model_files()
    self.detectors = tuple(detectors)
    self.upsample = int(upsample)
    self.cnn_upsample = int(cnn_upsample)
    self.aligned = aligned
    self.fallback_box = fallback_box
    self._dlib = dlib
    self._predictor = dlib.shape_predictor(files["predictor"])
    self._hog = dlib.get_frontal_face_detector() if "hog" in detectors else None
    self._cnn = (dlib.cnn_face_detection_model_v1(files["cnn_detector"])
                 if "cnn" in detectors else None)

  def describe(self) -> str:
    return (f"dlib {self._dlib.__version__}: {'+'.join(self.detectors)}, upsample "
            f"{self.upsample}, cnn upsample {self.cnn_upsample}, aligned={self.aligned}")

  def _predict(self, img, rect) -> np.ndarray:
    shape = self._predictor(img, rect)
    pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)
    return pts + DLIB_TO_OURS

  def find_face(self, image) -> Detection:
    """Runs the detectors only: the largest face's box (no landmarks yet)."""
    img = _to_uint8(image)
    if self._hog is not None:
      for up in range(self.upsample + 1):
        rects, scores, _ = self._hog.run(img, up, 0.0)
        if len(rects):
          k = int(np.argmax([r.area() for r in rects]))
          r = rects[k]
          return Detection(None, "hog", (r.left(), r.top(), r.right(), r.bottom()),
                           float(scores[k]))
    if self._cnn is not None:
      dets = self._cnn(img, self.cnn_upsample)
      if len(dets):
        d = max(dets, key=lambda d: d.rect.area())
        r = d.rect
        return Detection(None, "cnn", (r.left(), r.top(), r.right(), r.bottom()),
                         float(d.confidence))
    return Detection(None, "none")

  def crop_box(self, shape, fallback_box: Optional[tuple] = None) -> tuple:
    """The fallback box in pixels for an image of ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    rel = fallback_box if fallback_box is not None else self.fallback_box
    if rel is None:
      return (0, 0, w - 1, h - 1)
    l, t, r, b = rel
    return (int(round(l * w)), int(round(t * h)), int(round(r * w)), int(round(b * h)))

  def landmarks_in_box(self, image, box) -> np.ndarray:
    """[68, 2] predictor landmarks (project convention) for a given dlib box."""
    return self._predict(_to_uint8(image), self._dlib.rectangle(*[int(v) for v in box]))

  def wants_fallback(self, shape) -> bool:
    return self.aligned is True or (self.aligned == "auto" and is_aligned_crop(shape))

  def detect(self, image, fallback_box: Optional[tuple] = None) -> Detection:
    """Landmarks of the largest face in ``image`` ([H, W, 3] uint8 or float in [0, 1])."""
    img = _to_uint8(image)
    found = self.find_face(img)
    if found.box is not None:
      return dataclasses.replace(found, landmarks=self.landmarks_in_box(img, found.box))
    if self.wants_fallback(img.shape):
      box = self.crop_box(img.shape, fallback_box)
      return Detection(self.landmarks_in_box(img, box), "crop", box)
    return found


# ----------------------------------------------------------------------------- folders


def _user_cache_root() -> str:
  root = os.environ.get("FOCUS_JAX_CACHE")
  if root:
    return root
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "focus_jax")


def is_writable(folder: str) -> bool:
  """Whether we may write into ``folder``.

  Honours the permission bits even for root (who may write anyway): a folder
  without any write bit (``dr-xr-xr-x``, as the shared data) counts as read-only.
  """
  try:
    mode = os.stat(folder).st_mode
  except OSError:
    return False
  return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK)


def cache_location(image_dir: str, cache_dir: Optional[str] = None) -> str:
  """Folder of an image folder's landmark cache.

  The image folder itself when writable; otherwise ``cache_dir`` (if given) or the
  user cache (``$FOCUS_JAX_CACHE``, else ``$XDG_CACHE_HOME/focus_jax``, else
  ``~/.cache/focus_jax``), in ``landmarks/<folder name>-<hash of its path>``.
  """
  image_dir = os.path.abspath(image_dir)
  if cache_dir is None and is_writable(image_dir):
    return image_dir
  digest = hashlib.sha1(image_dir.encode("utf-8")).hexdigest()[:12]
  root = cache_dir if cache_dir is not None else os.path.join(_user_cache_root(), "landmarks")
  return os.path.join(root, f"{os.path.basename(image_dir) or 'root'}-{digest}")


@dataclasses.dataclass(frozen=True)
class FolderLandmarks:
  """Detection results for a folder.

  Attributes:
    names: images with landmarks (relative names).
    landmarks: [N, 68, 2] float32 (project convention).
    methods: N methods ('hog', 'cnn', 'crop'; 'cached' for rows of a cache
      without an info file).
    failed: names where no face was found (and no fallback applied).
    unreadable: names that could not be decoded.
    cache: the cache CSV path.
    fallback_box: the relative fallback box used by this call (None: whole crop,
      or no fallback needed).
    counts: {'hog': n, 'cnn': n, 'crop': n, 'none': n, 'unreadable': n}.
  """
  names: tuple
  landmarks: np.ndarray
  methods: tuple
  failed: tuple
  unreadable: tuple
  cache: str
  fallback_box: Optional[tuple]
  counts: dict


def _read_info(path: str) -> dict:
  info = {}
  if not os.path.isfile(path):
    return info
  with open(path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      box = None
      if row.get("left") not in (None, ""):
        box = tuple(int(row[k]) for k in ("left", "top", "right", "bottom"))
      info[row["name"]] = dict(method=row["method"], box=box,
                               score=float(row.get("score") or "nan"))
  return info


def _write_info(path: str, info: dict) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["name", "method", "left", "top", "right", "bottom", "score"])
    for name in sorted(info):
      d = info[name]
      box = d["box"] if d["box"] is not None else ("", "", "", "")
      w.writerow([name, d["method"], *box, "" if np.isnan(d["score"]) else f"{d['score']:.4f}"])
  os.replace(tmp, path)


def calibrate_fallback_box(info: dict, shapes: dict) -> Optional[tuple]:
  """Median relative HOG box over a folder's detections (None when too few)."""
  rel = []
  for name, d in info.items():
    if d["method"] == "hog" and d["box"] is not None and name in shapes:
      h, w = shapes[name]
      l, t, r, b = d["box"]
      rel.append((l / w, t / h, r / w, b / h))
  if len(rel) < MIN_CALIBRATION:
    return None
  return tuple(float(v) for v in np.median(np.asarray(rel), axis=0))


def detect_folder(image_dir: str, detector: Optional[LandmarkDetector] = None,
                  cache_dir: Optional[str] = None, recursive: bool = True,
                  progress: bool = True, refresh: bool = False,
                  calibrate: bool = True) -> FolderLandmarks:
  """Detects (or loads cached) landmarks for every image of a folder.

  Args:
    image_dir: the folder.
    detector: the detector (default ``LandmarkDetector()``); only built when
      some image is not cached.
    cache_dir: cache folder to use when ``image_dir`` is read-only.
    recursive: include sub-folders (names then contain '/').
    progress: tqdm progress bar.
    refresh: ignore the cache and detect everything again.
    calibrate: use the folder's median HOG box for the whole-crop fallback.

  Returns:
    :class:`FolderLandmarks`. Unreadable images are skipped with a warning.
  """
  image_dir = os.path.abspath(image_dir)
  if not os.path.isdir(image_dir):
    raise DataError(f"image folder not found: {image_dir}")
  names = images_lib.list_images(image_dir, recursive=recursive)
  if not names:
    raise DataError(f"{image_dir}: no images found (extensions "
                    f"{', '.join(images_lib.IMAGE_EXTENSIONS)})")
  folder = cache_location(image_dir, cache_dir)
  csv_path, info_path = os.path.join(folder, CACHE_CSV), os.path.join(folder, CACHE_INFO)
  cached_lm, info = {}, {}
  if not refresh and os.path.isfile(csv_path):
    try:
      cached_lm = lm_lib.read_landmarks_csv(csv_path).as_dict()
      info = _read_info(info_path)
    except (DataError, OSError, ValueError, KeyError) as e:
      warnings.warn(f"{csv_path}: ignoring the unreadable landmark cache ({e})", stacklevel=2)
      cached_lm, info = {}, {}
  # Cached landmarks and cached failures are not detected again.
  todo = [n for n in names if n not in cached_lm
          and info.get(n, {}).get("method") not in ("none", "unreadable")]
  shapes, rel = {}, None
  if todo:
    detector = detector or LandmarkDetector()
    iterator = todo
    if progress:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      iterator = tqdm(todo, desc=f"detecting landmarks in {os.path.basename(image_dir)}",
                      unit="img")
    pending = {}
    for name in iterator:
      try:
        img = _to_uint8(images_lib.read_image(os.path.join(image_dir, name)))
      except ImageReadError as e:
        warnings.warn(f"skipping an unreadable image: {e}", stacklevel=2)
        info[name] = dict(method="unreadable", box=None, score=float("nan"))
        continue
      shapes[name] = img.shape[:2]
      found = detector.find_face(img)
      if found.box is not None:
        cached_lm[name] = detector.landmarks_in_box(img, found.box)
        info[name] = dict(method=found.method, box=found.box, score=found.score)
      elif detector.wants_fallback(img.shape):
        pending[name] = img.shape[:2]
      else:
        info[name] = dict(method="none", box=None, score=float("nan"))
    if pending:
      for name in names:    # cached boxes count for calibration too (same folder)
        if name not in shapes and name in info and info[name]["method"] == "hog":
          shapes[name] = images_lib.image_shape(os.path.join(image_dir, name))
      rel = calibrate_fallback_box(info, shapes) if calibrate else None
      for name in pending:
        img = _to_uint8(images_lib.read_image(os.path.join(image_dir, name)))
        box = detector.crop_box(img.shape, rel)
        cached_lm[name] = detector.landmarks_in_box(img, box)
        info[name] = dict(method="crop", box=box, score=float("nan"))
    os.makedirs(folder, exist_ok=True)
    keep = [n for n in sorted(cached_lm) if n in info]
    lm_lib.write_landmarks_csv(csv_path, keep, np.stack([cached_lm[n] for n in keep])
                               if keep else np.zeros((0, 68, 2)))
    _write_info(info_path, info)
  out_names, out_lm, out_methods, failed, unreadable = [], [], [], [], []
  counts = dict(hog=0, cnn=0, crop=0, none=0, unreadable=0)
  for name in names:
    d = info.get(name)
    method = d["method"] if d else ("cached" if name in cached_lm else "none")
    counts[method] = counts.get(method, 0) + 1
    if method == "unreadable":
      unreadable.append(name)
    elif name in cached_lm and method != "none":
      out_names.append(name)
      out_lm.append(cached_lm[name])
      out_methods.append(method)
    else:
      failed.append(name)
  if failed:
    warnings.warn(f"{image_dir}: no face found in {len(failed)} of {len(names)} images; "
                  f"they are left out (first: {failed[0]!r})", stacklevel=2)
  if unreadable:
    warnings.warn(f"{image_dir}: {len(unreadable)} unreadable images left out "
                  f"(first: {unreadable[0]!r})", stacklevel=2)
  lms = np.stack(out_lm).astype(np.float32) if out_lm else np.zeros((0, 68, 2), np.float32)
  return FolderLandmarks(tuple(out_names), lms, tuple(out_methods), tuple(failed),
                         tuple(unreadable), csv_path, rel, counts)
