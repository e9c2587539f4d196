"""Reading and writing morphable-model files; :func:`load` detects the format.

Supported formats (see each loader for its options):

=============================  ==========================================  =========================
format                         typical file                                 loader
=============================  ==========================================  =========================
Basel Face Model 2017 (HDF5)   ``model2017-1_bfm_nomouth.h5``               :func:`bfm.load_bfm2017`
Basel 2009 / Deep3DFaceRecon   ``01_MorphableModel.mat``, ``BFM_model_front.mat``  :func:`bfm.load_bfm2009`
eos / Surrey Face Model        ``sfm_shape_3448.bin``                       :func:`eos_bin.load_eos_model`
focus-jax's own                ``*.npz`` written by :func:`save`            :func:`load_npz`
=============================  ==========================================  =========================
"""

from __future__ import annotations

import os
import zipfile
from typing import Optional

import numpy as np

from focus_jax.errors import ModelFileError
from focus_jax.morphable import model as model_lib
from focus_jax.morphable.landmark_map import read_ibug_mapping

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MAT5_MAGIC = b"MATLAB 5.0 MAT-file"
_ZIP_MAGIC = b"PK\x03\x04"
_NPZ_FORMAT_VERSION = 1
_NPZ_ARRAYS = ("mean", "shape_basis", "expression_basis", "albedo_mean", "albedo_basis",
               "triangles", "landmarks")


def _require_file(path: str) -> None:
  if not os.path.exists(path):
    raise ModelFileError(f"morphable model file not found: {path}")
  if not os.path.isfile(path):
    raise ModelFileError(f"morphable model path is not a file: {path}")
  if os.path.getsize(path) == 0:
    raise ModelFileError(f"morphable model file is empty: {path}")


def detect_format(path: str | os.PathLike) -> str:
  """Returns one of ``'bfm2017'``, ``'bfm2009'``, ``'eos'``, ``'npz'`` for a model file.

  Magic bytes decide where they can (so a renamed file still loads); the suffix
  decides between the eos binary, which has no magic number, and the rest.
  """
  path = os.fspath(path)
  _require_file(path)
  with open(path, "rb") as f:
    head = f.read(128)
  suffix = os.path.splitext(path)[1].lower()
  if head.startswith(_ZIP_MAGIC) and suffix in (".npz", ""):
    return "npz"
  if head.startswith(_MAT5_MAGIC):
    return "bfm2009"
  if head.startswith(_HDF5_MAGIC) or b"MATLAB 7.3" in head:
    # MATLAB v7.3 files are HDF5 with a 512-byte user block and a text header.
    return "bfm2009" if suffix == ".mat" else "bfm2017"
  if suffix == ".bin":
    return "eos"
  if suffix in (".h5", ".hdf5", ".mat", ".npz"):
    raise ModelFileError(f"{path}: the file ends in {suffix} but its content is not a valid "
                         f"{suffix} file (truncated or corrupt download?)")
  raise ModelFileError(
      f"{path}: unknown morphable model format. Supported: BFM 2017 .h5, BFM 2009 / "
      "Deep3DFaceRecon .mat, eos/SFM .bin, focus-jax .npz")


def load(path: str | os.PathLike, *, landmarks=None, num_shape: Optional[int] = None,
         num_expression: Optional[int] = None, num_albedo: Optional[int] = None,
         name: Optional[str] = None, **format_options) -> model_lib.MorphableModel:
  """Loads a morphable model, detecting the file format.

  Args:
    path: model file (see the module docstring for the formats).
    landmarks: overrides the iBUG-68 landmark vertices: a path to an eos-style
      ``ibug_to_*.txt`` table, or a [68] int array (-1 = undefined). For BFM and
      eos files it indexes the full mesh in the file (before any face crop); by
      default a table lying next to the file is picked up.
    num_shape, num_expression, num_albedo: keep only the first k components
      (the FOCUS reference uses 80 / 64 / 80).
    name: overrides the model's name.
    **format_options: passed to the format's loader (e.g. ``crop=`` for BFM 2017,
      ``blendshapes=`` for eos).

  Returns:
    A :class:`~focus_jax.morphable.model.MorphableModel`.

  Raises:
    ModelFileError: missing, empty, corrupt, wrongly laid out or unknown file.
  """
  path = os.fspath(path)
  try:
    return _load(path, landmarks, num_shape, num_expression, num_albedo, name, format_options)
  except model_lib.NonFiniteModelError as e:
    raise model_lib.NonFiniteModelError(path, e.detail) from None


def _load(path, landmarks, num_shape, num_expression, num_albedo, name, format_options):
  fmt = detect_format(path)
  if fmt == "npz":
    if format_options:
      raise TypeError(f"load: options {sorted(format_options)} do not apply to .npz files")
    m = load_npz(path)
    if landmarks is not None:
      m = _with_landmarks(m, landmarks)
    return _finish(m, num_shape, num_expression, num_albedo, name)
  # File formats take the table themselves: it indexes the full mesh in the file and
  # must be applied before any face crop re-indexes the vertices.
  if landmarks is not None:
    format_options["landmarks"] = landmarks
  if fmt == "bfm2017":
    from focus_jax.morphable import bfm  # pylint: disable=import-outside-toplevel
    m = bfm.load_bfm2017(path, **format_options)
  elif fmt == "bfm2009":
    from focus_jax.morphable import bfm  # pylint: disable=import-outside-toplevel
    m = bfm.load_bfm2009(path, **format_options)
  else:
    from focus_jax.morphable import eos_bin  # pylint: disable=import-outside-toplevel
    m = eos_bin.load_eos_model(path, **format_options)
  return _finish(m, num_shape, num_expression, num_albedo, name)


def _with_landmarks(m: model_lib.MorphableModel, landmarks) -> model_lib.MorphableModel:
  table = (read_ibug_mapping(landmarks) if isinstance(landmarks, (str, os.PathLike))
           else np.asarray(landmarks, np.int32))
  return model_lib.make_model(m.mean, m.shape_basis, m.expression_basis, m.albedo_mean,
                              m.albedo_basis, m.triangles, table, m.uv, m.name)


def _finish(m, num_shape, num_expression, num_albedo, name):
  m = model_lib.truncate(m, num_shape, num_expression, num_albedo)
  return m if name is None else m.replace(name=name)


def save(model: model_lib.MorphableModel, path: str | os.PathLike) -> None:
  """Writes ``model`` losslessly to ``path`` (.npz); :func:`load` reads it back.

  The file is written to a temporary name and renamed, so an interrupted save
  never leaves a half-written model behind.
  """
  path = os.fspath(path)
  if not path.endswith(".npz"):
    raise ValueError(f"save: model files are .npz, got {path!r}")
  arrays = {k: np.asarray(getattr(model, k)) for k in _NPZ_ARRAYS}
  if model.uv is not None:
    arrays["uv"] = np.asarray(model.uv)
  arrays["name"] = np.asarray(model.name)
  arrays["format_version"] = np.asarray(_NPZ_FORMAT_VERSION)
  tmp = path + ".tmp.npz"
  try:
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load_npz(path: str | os.PathLike) -> model_lib.MorphableModel:
  """Reads a model written by :func:`save`."""
  path = os.fspath(path)
  _require_file(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise ModelFileError(f"{path}: corrupt or truncated .npz model file ({e})") from e
  missing = [k for k in _NPZ_ARRAYS if k not in arrays]
  if missing:
    raise ModelFileError(f"{path}: not a focus-jax model file, missing arrays {missing} "
                         "(write models with focus_jax.morphable.save)")
  try:
    return model_lib.make_model(
        **{k: arrays[k] for k in _NPZ_ARRAYS}, uv=arrays.get("uv"),
        name=str(arrays["name"]) if "name" in arrays else os.path.basename(path))
  except model_lib.NonFiniteModelError as e:
    raise model_lib.NonFiniteModelError(path, e.detail) from None
