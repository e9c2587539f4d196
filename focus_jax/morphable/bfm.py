"""Loaders for the Basel Face Models: BFM 2017/2019 (HDF5) and BFM 2009 / Deep3DFaceRecon (.mat).

All loaders return a :class:`~focus_jax.morphable.model.MorphableModel` in the project's
conventions: positions in mm, bases scaled by the PCA standard deviations (coefficients
are standard normal), albedo in [0, 1], 0-based triangles whose normals point out of the
head, iBUG-68 landmarks (-1 = undefined).

Facts about the files these loaders rely on (and where they come from):

* Units. BFM 2009 is in micrometres, BFM 2017 and 2019 in millimetres (B. Egger, one of
  the BFM authors, in unibas-gravis/basel-face-model-viewer issue #20). Deep3DFaceRecon's
  ``BFM_model_front.mat`` divides the BFM 2009 micrometres by 1e5 ("unify the scale to
  decimeter", ``transferBFM09`` in Deep3DFaceRecon_pytorch ``util/load_mats.py``), so its
  unit is the decimetre: we multiply by 100.
* Basis normalisation in the HDF5 (statismo) files. File format 0.9 and 1.x store the
  *orthonormal* PCA basis U in ``pcaBasis`` and the eigenvalues (variances) in
  ``pcaVariance``; the old statismo format 0.8 stored ``U * sqrt(variance)``
  (scalismo-faces ``MoMoIO.readStatisticalModel3D`` / ``extractOrthonormalPCABasisMatrix``).
  BFM 2017 files have unit-norm, mutually orthogonal columns (eos
  ``share/scripts/convert-bfm2017-to-eos.py``), and the FOCUS reference builds its bases as
  ``pcaBasis * sqrt(pcaVariance)`` (Occlusion-Robust-MoFA ``util/load_object.py``). We
  normalise every column to unit length and then scale it by ``sqrt(pcaVariance)``: this is
  exact for both the orthonormal and the legacy pre-scaled layout.
* BFM 2009 ``shapeEV``/``texEV`` are standard deviations, not variances (eos
  ``convert-bfm2009-to-eos.py``; Deep3DFaceRecon multiplies ``shapePC * shapeEV``); its
  colours are 0-255, the HDF5 files' colours are in [0, 1] (scalismo ``RGB``).
* Winding. BFM 2009's ``tl`` triangles are clockwise seen from the front ("defined the
  wrong way round", eos ``convert-bfm2009-to-eos.py``, which swaps two indices); eos keeps
  BFM 2017's ``cells`` as they are. Rather than trusting a per-format rule, every loader
  checks the orientation geometrically on the mean shape (:func:`orient_outward`) and flips
  all triangles when the normals point inwards.
* Layout of the HDF5 files (statismo/scalismo): ``shape/model/{mean [3V] (x0 y0 z0 x1 ...),
  pcaBasis [3V, K], pcaVariance [K], noiseVariance}``, ``shape/representer/{points [3, V],
  cells [3, F]}``, the same for ``color/`` (RGB) and ``expression/`` (absent in the BFM
  2009 HDF5 version), ``metadata/landmarks/json`` (named 3D points, not used here).

Vertex counts, for reference: BFM 2017 ``bfm_nomouth`` 53149, ``face12_nomouth`` 28588,
BFM 2019 ``bfm`` 47439, BFM 2009 53490, Deep3DFaceRecon front face 35709.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import h5py
import numpy as np
import scipy.io

from focus_jax.errors import ModelFileError
from focus_jax.morphable import model as model_lib
from focus_jax.morphable.landmark_map import focus_table_on_full_model, read_ibug_mapping

# Geometric face crop (see face_crop_mask), in mm relative to the nose tip.
FACE_CROP_MM = dict(back=80.0, half_width=80.0, up=100.0, down=90.0)

# The FOCUS reference's world origin in BFM 2017 coordinates [mm] (util/load_object.py,
# commit 33a5add): its mean shape is moved by -100 mm in z.
REFERENCE_ORIGIN_MM = (0.0, 0.0, 100.0)
BFM2017_NOMOUTH_VERTICES = 53149
BFM2009_VERTICES = 53490
_BFM2017_DEFAULT_TABLE = "ibug_to_bfm2017-1_bfm_nomouth.txt"
_BFM2009_DEFAULT_TABLE = "ibug_to_bfm2009.txt"
_H5_LAYOUT = ("a Basel Face Model 2017/2019 HDF5 file is expected (statismo layout: groups "
              "shape/, color/ and optionally expression/, each with model/{mean, pcaBasis, "
              "pcaVariance}, and shape/representer/cells)")


# ----------------------------------------------------------------------------- helpers


def face_crop_mask(mean, back: float = FACE_CROP_MM["back"],
                   half_width: float = FACE_CROP_MM["half_width"],
                   up: float = FACE_CROP_MM["up"],
                   down: float = FACE_CROP_MM["down"]) -> np.ndarray:
  """The face region of a head mesh, by a fixed geometric rule.

  With the nose tip ``n`` taken as the vertex of largest z (the face looks along +z in
  every BFM), a vertex ``p`` is kept when both

  * it lies in front of the coronal plane ``z = n_z - back`` (this removes the ears, the
    back of the head and the back of the neck), and
  * its (x, y) lies in the ellipse centred at ``(n_x, n_y + (up - down) / 2)`` with
    semi-axes ``half_width`` (x) and ``(up + down) / 2`` (y), i.e. from ``down`` mm below
    to ``up`` mm above the nose tip on the midline (this removes the neck below the chin
    and the skull above the forehead).

  The defaults (80 mm back, 80 mm half-width, 100 mm up, 90 mm down) keep forehead,
  temples, cheeks up to the ears, chin and a little of the area under the chin, like the
  face-region crop of the FOCUS reference (whose own index list is not public). For other
  parameters, load with ``crop=None`` and apply
  ``subset(model, face_crop_mask(model.mean, back=...))``.

  Args:
    mean: [V, 3] positions in mm (model coordinates: y up, z towards the viewer).

  Returns:
    [V] bool, True for the vertices to keep.
  """
  mean = np.asarray(mean, np.float64)
  nose = mean[np.argmax(mean[:, 2])]
  centre_y = nose[1] + 0.5 * (up - down)
  radius_y = 0.5 * (up + down)
  inside = ((mean[:, 0] - nose[0]) / half_width) ** 2 + ((mean[:, 1] - centre_y) / radius_y) ** 2
  return (inside <= 1.0) & (mean[:, 2] >= nose[2] - back)


def orient_outward(mean, triangles) -> tuple[np.ndarray, bool]:
  """Makes the triangles' normals point out of the head.

  Uses the sign of the volume enclosed between the surface and its vertex centroid,
  ``sum (a - c) . ((b - c) x (d - c))``: positive when (a, b, d) is counter-clockwise seen
  from outside. This works for closed heads and for open face masks (whose centroid lies
  behind the surface).

  Args:
    mean: [V, 3] positions.
    triangles: [F, 3] 0-based vertex indices, consistently wound.

  Returns:
    ([F, 3] triangles wound counter-clockwise seen from outside, whether they were flipped).
  """
  v = np.asarray(mean, np.float64)
  tri = np.asarray(triangles)
  if tri.size == 0:
    return tri, False
  c = v.mean(axis=0)
  a, b, d = v[tri[:, 0]] - c, v[tri[:, 1]] - c, v[tri[:, 2]] - c
  volume = np.einsum("ij,ij->", a, np.cross(b, d))
  if volume < 0:
    return tri[:, [0, 2, 1]], True
  return tri, False


def _scaled_basis(basis, deviation, num_vertices: int, path: str, what: str,
                  orthonormal_or_scaled: bool = True) -> np.ndarray:
  """[3V, K] PCA basis and [K] standard deviations -> [K, V, 3] scaled basis.

  With ``orthonormal_or_scaled``, each column is first normalised to unit length (the
  statismo files hold either the orthonormal basis or, in format 0.8, the basis already
  multiplied by the standard deviation; see the module docstring).
  """
  basis = np.asarray(basis)
  deviation = np.asarray(deviation, np.float64).ravel()
  if basis.ndim != 2 or basis.shape[0] != 3 * num_vertices:
    raise ModelFileError(f"{path}: {what} basis has shape {basis.shape}, expected "
                         f"[{3 * num_vertices}, K] for {num_vertices} vertices")
  if deviation.shape[0] != basis.shape[1]:
    raise ModelFileError(f"{path}: {what} has {basis.shape[1]} basis vectors but "
                         f"{deviation.shape[0]} variances/standard deviations")
  if orthonormal_or_scaled:
    norms = np.sqrt(np.einsum("ik,ik->k", basis, basis, dtype=np.float64))
    unit = np.abs(norms - 1.0) < 1e-2
    prescaled = np.abs(norms - deviation) <= 1e-2 * np.maximum(deviation, 1e-12)
    if not np.all(unit | prescaled):
      warnings.warn(f"{path}: the {what} basis columns are neither unit-norm nor scaled by "
                    "sqrt(pcaVariance); normalising them anyway", stacklevel=3)
    scale = deviation / np.where(norms > 0, norms, 1.0)
  else:
    scale = deviation
  scaled = basis.astype(np.float32, copy=False) * scale.astype(np.float32)[None, :]
  return np.ascontiguousarray(scaled.T).reshape(basis.shape[1], num_vertices, 3)


def _check_scale(mean: np.ndarray, path: str) -> None:
  extent = float(np.ptp(mean, axis=0).max()) if mean.size else 0.0
  if not 50.0 <= extent <= 2000.0:
    warnings.warn(f"{path}: the mean shape is {extent:.3g} mm across; expected a head or "
                  "face in mm (about 100-300). Wrong units?", stacklevel=3)


def _landmark_table(landmarks, path: str, num_vertices: int,
                    default_tables: list[tuple[str, Optional[int]]]) -> np.ndarray:
  """Resolves the ``landmarks`` option to a [68] table on the full (uncropped) model.

  ``default_tables`` lists (file name, required vertex count or None) candidates looked
  for next to the model file when ``landmarks == "auto"``.
  """
  if landmarks is None:
    return np.full((model_lib.NUM_LANDMARKS,), -1, np.int32)
  if isinstance(landmarks, str) and landmarks == "auto":
    folder = os.path.dirname(os.path.abspath(path))
    table_path = None
    for file_name, needs_vertices in default_tables:
      candidate = os.path.join(folder, file_name)
      if os.path.isfile(candidate) and needs_vertices in (None, num_vertices):
        table_path = candidate
        break
    if table_path is None:
      names = ", ".join(dict.fromkeys(n for n, _ in default_tables))
      warnings.warn(f"{path}: no iBUG-68 landmark table found next to the model (looked for "
                    f"{names}); all landmarks are undefined. Pass landmarks=<ibug_to_*.txt>.",
                    stacklevel=3)
      return np.full((model_lib.NUM_LANDMARKS,), -1, np.int32)
    table = read_ibug_mapping(table_path)
    source = table_path
  elif isinstance(landmarks, (str, os.PathLike)):
    source = os.fspath(landmarks)
    table = read_ibug_mapping(source)
  else:
    source = "landmarks argument"
    table = np.asarray(landmarks)
    if table.shape != (model_lib.NUM_LANDMARKS,):
      raise ModelFileError(f"{path}: landmarks must be a [68] index array, a table path or "
                           f"'auto', got shape {table.shape}")
    table = table.astype(np.int32)
  if (table >= num_vertices).any() or (table < -1).any():
    raise ModelFileError(
        f"{source}: landmark vertex indices range up to {int(table.max())} but {path} has "
        f"{num_vertices} vertices (a table for another BFM variant?)")
  return table


def _crop_indices(crop, mean: np.ndarray, path: str) -> Optional[np.ndarray]:
  """Resolves the ``crop`` option to full-model vertex indices (or a mask), None = keep all."""
  if crop is None:
    return None
  if isinstance(crop, str) and crop == "face":
    return face_crop_mask(mean)
  if isinstance(crop, (str, os.PathLike)):
    crop_path = os.fspath(crop)
    if not os.path.isfile(crop_path):
      raise ModelFileError(f"vertex crop file not found: {crop_path} (crop must be 'face', "
                           "None, an index array or a .txt/.npy file of vertex indices)")
    try:
      keep = (np.load(crop_path, allow_pickle=False) if crop_path.endswith(".npy")
              else np.loadtxt(crop_path, ndmin=1))
    except (ValueError, OSError, EOFError) as e:
      raise ModelFileError(f"{crop_path}: cannot read vertex indices ({e})") from e
    source = crop_path
  else:
    keep = np.asarray(crop)
    source = "crop argument"
  if keep.dtype == bool:
    if keep.shape != (mean.shape[0],):
      raise ModelFileError(f"{source}: vertex mask must be [{mean.shape[0]}], got {keep.shape}")
    return keep
  keep = np.asarray(keep).ravel()
  if keep.size and (np.any(keep != np.round(keep)) or keep.min() < 0
                    or keep.max() >= mean.shape[0]):
    raise ModelFileError(f"{source}: vertex indices must be integers in [0, {mean.shape[0]}) "
                         f"for {path}")
  return keep.astype(np.int64)


def _finish(mean, shape_basis, expression_basis, albedo_mean, albedo_basis, triangles,
            landmarks, crop, path: str, name: Optional[str], default_name: str):
  """Orients, builds, crops: the common tail of every loader."""
  if triangles.size and (triangles.min() < 0 or triangles.max() >= mean.shape[0]):
    raise ModelFileError(f"{path}: triangle indices range over [{triangles.min()}, "
                         f"{triangles.max()}] but the model has {mean.shape[0]} vertices")
  _check_scale(mean, path)
  triangles, _ = orient_outward(mean, triangles)
  full = model_lib.make_model(mean, shape_basis, expression_basis, albedo_mean, albedo_basis,
                              triangles, landmarks, name=default_name)
  keep = _crop_indices(crop, mean, path)
  if keep is None:
    return full.replace(name=name) if name else full
  kept = int(keep.sum()) if keep.dtype == bool else np.unique(keep).size
  if kept == 0:
    raise ModelFileError(f"{path}: the vertex crop keeps no vertices")
  suffix = "face crop" if isinstance(crop, str) and crop == "face" else "crop"
  return model_lib.subset(full, keep, name=name or f"{default_name} [{suffix}, {kept} vertices]")


# ----------------------------------------------------------------------------- BFM 2017


def _h5_dataset(f: h5py.File, key: str, path: str) -> np.ndarray:
  if key not in f or not isinstance(f[key], h5py.Dataset):
    raise ModelFileError(f"{path}: dataset '{key}' is missing; {_H5_LAYOUT}")
  return np.asarray(f[key][()])


def _h5_submodel(f: h5py.File, group: str, path: str, num_vertices: Optional[int]):
  """Reads ``<group>/model``: ([V, 3] mean, [3V, K] basis, [K] variances)."""
  mean = _h5_dataset(f, f"{group}/model/mean", path).astype(np.float64).ravel()
  basis = _h5_dataset(f, f"{group}/model/pcaBasis", path)
  variance = _h5_dataset(f, f"{group}/model/pcaVariance", path).astype(np.float64).ravel()
  if mean.size % 3:
    raise ModelFileError(f"{path}: '{group}/model/mean' has {mean.size} entries, not a "
                         "multiple of 3")
  if num_vertices is not None and mean.size != 3 * num_vertices:
    raise ModelFileError(f"{path}: '{group}/model/mean' has {mean.size // 3} vertices but "
                         f"the shape model has {num_vertices}")
  if basis.ndim != 2 or basis.shape[0] != mean.size:
    raise ModelFileError(f"{path}: '{group}/model/pcaBasis' has shape {basis.shape}, "
                         f"expected [{mean.size}, K] to match '{group}/model/mean'")
  if variance.size != basis.shape[1]:
    raise ModelFileError(f"{path}: '{group}/model/pcaVariance' has {variance.size} entries "
                         f"but '{group}/model/pcaBasis' has {basis.shape[1]} columns")
  if (variance < -1e-6 * max(variance.max(initial=0.0), 1.0)).any():
    raise ModelFileError(f"{path}: '{group}/model/pcaVariance' has negative variances")
  return mean.reshape(-1, 3), basis, np.sqrt(np.maximum(variance, 0.0))


def _read_bfm2017(path: str):
  with h5py.File(path, "r") as f:
    mean, shape_pc, shape_sd = _h5_submodel(f, "shape", path, None)
    num_vertices = mean.shape[0]
    if ("shape/representer/cells" not in f
        and "shape/representer/reference-mesh/triangle-list" in f):
      # Legacy statismo representer ("gravis::Mesh Shape Representer"): [F, 3].
      cells = _h5_dataset(f, "shape/representer/reference-mesh/triangle-list", path)
    else:
      cells = _h5_dataset(f, "shape/representer/cells", path)
    if "shape/representer/points" in f:
      points_shape = f["shape/representer/points"].shape
      if points_shape != (3, num_vertices):
        raise ModelFileError(f"{path}: 'shape/representer/points' has shape {points_shape}, "
                             f"expected [3, {num_vertices}] to match 'shape/model/mean'")
    color_mean, color_pc, color_sd = _h5_submodel(f, "color", path, num_vertices)
    if "expression" in f:
      expr_mean, expr_pc, expr_sd = _h5_submodel(f, "expression", path, num_vertices)
    else:
      expr_mean, expr_pc, expr_sd = None, None, None
  if cells.ndim != 2 or 3 not in cells.shape:
    raise ModelFileError(f"{path}: 'shape/representer/cells' has shape {cells.shape}, "
                         "expected [3, F] triangles")
  # statismo stores [3, F]; accept [F, 3] from converted files.
  triangles = (cells.T if cells.shape[0] == 3 else cells).astype(np.int64)
  return (mean, shape_pc, shape_sd, color_mean, color_pc, color_sd, expr_mean, expr_pc,
          expr_sd, triangles)


def load_bfm2017(path: str | os.PathLike, crop="face", landmarks="auto",
                 name: Optional[str] = None, origin=None) -> model_lib.MorphableModel:
  """Loads a Basel Face Model 2017 or 2019 HDF5 file (``model2017-1_bfm_nomouth.h5`` ...).

  The model is read as the files define it: mean shape plus expression mean (the
  expression model's own mean, ~0) in mm; bases ``pcaBasis`` (columns normalised)
  times ``sqrt(pcaVariance)``, reshaped to [K, V, 3], so coefficients are standard
  normal; colour in [0, 1] RGB, used as albedo as is (as the FOCUS reference does);
  triangles from ``shape/representer/cells``, re-wound if needed so their normals point
  out of the head (see :func:`orient_outward`). Files without an ``expression`` group
  (e.g. the statismo version of BFM 2009, ``model2009-publicmm1-bfm.h5``, in mm) load
  with an empty expression basis; the legacy representer layout
  (``shape/representer/reference-mesh/triangle-list``) is accepted for the triangles.

  Args:
    path: the ``.h5`` file.
    crop: which vertices to keep: ``"face"`` (default) applies :func:`face_crop_mask`
      (forehead to chin, cheeks up to the ears; see there for the exact rule); ``None``
      keeps the whole model; an index array or [V] bool mask, or a path to a ``.txt`` /
      ``.npy`` file of vertex indices, selects vertices of the full model. The
      ``face12`` files are already face crops: pass ``crop=None`` to keep all of them.
    landmarks: iBUG-68 table on the *full* model's vertex indices (applied before the
      crop, which remaps it): ``"auto"`` looks next to the file for
      ``ibug_to_<stem>.txt``, ``ibug_to_<stem with model -> bfm>.txt`` (the eos name,
      e.g. ``ibug_to_bfm2017-1_bfm_nomouth.txt``), and finally
      ``ibug_to_bfm2017-1_bfm_nomouth.txt`` if the model has that mesh's 53149
      vertices; if none is found, all landmarks are -1 and a warning is issued. A path
      reads that table, a [68] int array is used as is, ``None`` means no landmarks.
      ``"reference"``: the FOCUS reference's full 68-point table
      (:data:`~focus_jax.morphable.landmark_map.FOCUS_BFM2017_CROP_LANDMARKS`), which
      indexes the reference's cropped model: ``crop`` must then be that crop's vertex
      list (``basel_3DMM/idxes_crop.pkl['points']`` of the reference, saved as .npy /
      .txt; the public repository lists the file but its snapshot lacks the content).
    name: model name (default: derived from the file name and crop).
    origin: None, or (x, y, z) [mm] subtracted from the mean (the model's new origin);
      ``"reference"`` = :data:`REFERENCE_ORIGIN_MM`, the FOCUS reference's (0, 0, 100)
      (``util/load_object.py``: ``adjust_center`` with the world centre 100 mm in z).

  Returns:
    The :class:`~focus_jax.morphable.model.MorphableModel` (all components kept; use
    :func:`~focus_jax.morphable.model.truncate` for the reference's 80/64/80).

  Raises:
    ModelFileError: unreadable/truncated file, missing dataset, inconsistent sizes, bad
      landmark table or crop.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ModelFileError(f"morphable model file not found: {path}")
  try:
    (mean, shape_pc, shape_sd, color_mean, color_pc, color_sd, expr_mean, expr_pc,
     expr_sd, triangles) = _read_bfm2017(path)
  except OSError as e:
    raise ModelFileError(f"{path}: cannot read the HDF5 file, truncated or corrupt download? "
                         f"({e})") from e
  num_vertices = mean.shape[0]
  shape_basis = _scaled_basis(shape_pc, shape_sd, num_vertices, path, "shape")
  del shape_pc
  if expr_mean is not None:
    mean = mean + expr_mean
    expression_basis = _scaled_basis(expr_pc, expr_sd, num_vertices, path, "expression")
  else:
    expression_basis = None
  del expr_pc
  albedo_basis = _scaled_basis(color_pc, color_sd, num_vertices, path, "color")
  del color_pc
  if color_mean.max(initial=0.0) > 2.0:
    # Hand-converted files sometimes keep BFM 2009's 0-255 colours.
    warnings.warn(f"{path}: colour values up to {color_mean.max():.1f}; assuming 0-255 and "
                  "dividing by 255", stacklevel=2)
    color_mean, albedo_basis = color_mean / 255.0, albedo_basis / 255.0
  if origin is not None:
    shift = np.asarray(REFERENCE_ORIGIN_MM if isinstance(origin, str) and origin == "reference"
                       else origin, np.float64)
    if shift.shape != (3,) or not np.isfinite(shift).all():
      raise ModelFileError(f"{path}: origin must be 'reference' or 3 finite mm, got {origin!r}")
    mean = mean - shift
  stem = os.path.splitext(os.path.basename(path))[0]
  if isinstance(landmarks, str) and landmarks == "reference":
    keep = None if crop is None or (isinstance(crop, str) and crop == "face") else (
        _crop_indices(crop, mean, path))
    if keep is None:
      raise ModelFileError(f"{path}: landmarks='reference' indexes the reference's cropped "
                           "model; pass its crop vertex list as crop=<.npy/.txt>")
    table = focus_table_on_full_model(keep, str(crop))
  else:
    table = _landmark_table(
        landmarks, path, num_vertices,
        [(f"ibug_to_{stem}.txt", None),
         (f"ibug_to_{stem.replace('model', 'bfm', 1)}.txt", None),
         (_BFM2017_DEFAULT_TABLE, BFM2017_NOMOUTH_VERTICES)])
  return _finish(mean, shape_basis, expression_basis, color_mean, albedo_basis, triangles,
                 table, crop, path, name, default_name=stem)


# ----------------------------------------------------------------------------- BFM 2009


def _read_mat(path: str) -> dict:
  """Variables of a MATLAB file as numpy arrays with MATLAB's shapes (v5 or v7.3)."""
  with open(path, "rb") as f:
    head = f.read(128)
  try:
    if b"MATLAB 7.3" in head or head.startswith(b"\x89HDF\r\n\x1a\n"):
      out = {}
      with h5py.File(path, "r") as f:
        for key, obj in f.items():
          if isinstance(obj, h5py.Dataset) and not key.startswith("#"):
            # HDF5 is row-major, MATLAB column-major: transpose back to MATLAB's shape.
            out[key] = np.asarray(obj[()]).T
      return out
    return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
  except (OSError, ValueError, EOFError, NotImplementedError,
          scipy.io.matlab.MatReadError) as e:
    raise ModelFileError(f"{path}: cannot read the MATLAB file, truncated or corrupt "
                         f"download? ({e})") from e


def _require(variables: dict, names, path: str, what: str):
  missing = [n for n in names if n not in variables]
  if missing:
    raise ModelFileError(
        f"{path}: MATLAB variables {missing} are missing; expected {what}. Found: "
        f"{sorted(variables)}")


def _flat(a) -> np.ndarray:
  return np.asarray(a).ravel()


def _columns(a, rows: int, path: str, var: str) -> np.ndarray:
  """A [rows, K] basis (accepting the transposed [K, rows] too)."""
  a = np.asarray(a)
  if a.ndim == 2 and a.shape[0] == rows:
    return a
  if a.ndim == 2 and a.shape[1] == rows:
    return a.T
  raise ModelFileError(f"{path}: '{var}' has shape {a.shape}, expected [{rows}, K]")


def _triangles_from_mat(a, path: str, var: str) -> np.ndarray:
  a = np.asarray(a)
  if a.ndim != 2 or 3 not in a.shape:
    raise ModelFileError(f"{path}: '{var}' has shape {a.shape}, expected [F, 3] triangles")
  tri = a if a.shape[1] == 3 else a.T
  tri = np.round(tri).astype(np.int64)
  if tri.size and tri.min() < 1:
    raise ModelFileError(f"{path}: '{var}' contains index {tri.min()}, but MATLAB triangle "
                         "lists are 1-based")
  return tri - 1


def load_bfm2009(path: str | os.PathLike, crop="auto", landmarks="auto",
                 name: Optional[str] = None) -> model_lib.MorphableModel:
  """Loads the Basel Face Model 2009 ``.mat`` or Deep3DFaceRecon's ``BFM_model_front.mat``.

  Two layouts are recognised by their variables (MATLAB v5 via scipy, v7.3 via h5py):

  * BFM 2009 ``01_MorphableModel.mat``: ``shapeMU`` [3V, 1] in micrometres (divided by
    1000 -> mm), ``shapePC`` [3V, 199] orthonormal, ``shapeEV`` [199, 1] *standard
    deviations* (basis = shapePC * shapeEV / 1000, mm), ``texMU`` / ``texPC`` /
    ``texEV`` likewise with colours 0-255 (divided by 255), ``tl`` [F, 3] 1-based
    triangles (clockwise from the front in the official file; re-wound). No expression
    model. Default crop: the face crop.
  * Deep3DFaceRecon ``BFM_model_front.mat`` (35709 vertices, already a face crop):
    ``meanshape`` [1, 3V] and ``idBase`` [3V, 80], ``exBase`` [3V, 64] in decimetres
    (BFM micrometres / 1e5; multiplied by 100 -> mm), ``meantex`` [1, 3V] and
    ``texBase`` [3V, 80] 0-255 (divided by 255), ``tri`` [F, 3] 1-based, ``keypoints``
    [68] 1-based iBUG-68 vertices. Deep3DFaceRecon built ``idBase = shapePC * shapeEV``,
    ``exBase = expPC * expEV`` and ``texBase = texPC * texEV`` from standard deviations,
    and its network predicts coefficients that multiply them directly, so the bases are
    already scaled by the standard deviations: they are kept as they are (only the units
    change) and their coefficients are standard normal like everywhere else. No
    standard deviations are stored in the file, so no other normalisation is possible.
    The mean is not re-centred (Deep3DFaceRecon re-centres at run time). Default crop:
    none.

  Args:
    path: the ``.mat`` file.
    crop: ``"auto"`` (the face crop for the full BFM 2009, none for Deep3DFaceRecon's
      front face), or as in :func:`load_bfm2017`.
    landmarks: as in :func:`load_bfm2017`. ``"auto"`` uses Deep3DFaceRecon's
      ``keypoints`` when present, else looks next to the file for
      ``ibug_to_<stem>.txt`` and then ``ibug_to_bfm2009.txt`` (the latter only for the
      53490-vertex BFM 2009 mesh).
    name: model name (default: the file name).

  Returns:
    The :class:`~focus_jax.morphable.model.MorphableModel`.

  Raises:
    ModelFileError: unreadable file, missing variables, inconsistent sizes.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ModelFileError(f"morphable model file not found: {path}")
  variables = _read_mat(path)
  stem = os.path.splitext(os.path.basename(path))[0]
  if "shapeMU" in variables or "shapePC" in variables:
    _require(variables, ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl"),
             path, "the Basel Face Model 2009 01_MorphableModel.mat")
    mean = _flat(variables["shapeMU"]).astype(np.float64)
    if mean.size % 3:
      raise ModelFileError(f"{path}: 'shapeMU' has {mean.size} entries, not a multiple of 3")
    num_vertices = mean.size // 3
    mean = mean.reshape(num_vertices, 3) / 1000.0  # micrometres -> mm
    shape_basis = _scaled_basis(
        _columns(variables["shapePC"], 3 * num_vertices, path, "shapePC"),
        _flat(variables["shapeEV"]) / 1000.0, num_vertices, path, "shape (shapePC/shapeEV)",
        orthonormal_or_scaled=False)
    albedo_mean = _flat(variables["texMU"]).astype(np.float64) / 255.0
    if albedo_mean.size != 3 * num_vertices:
      raise ModelFileError(f"{path}: 'texMU' has {albedo_mean.size // 3} vertices but "
                           f"'shapeMU' has {num_vertices}")
    albedo_basis = _scaled_basis(
        _columns(variables["texPC"], 3 * num_vertices, path, "texPC"),
        _flat(variables["texEV"]) / 255.0, num_vertices, path, "colour (texPC/texEV)",
        orthonormal_or_scaled=False)
    expression_basis = None
    triangles = _triangles_from_mat(variables["tl"], path, "tl")
    default_tables = [(f"ibug_to_{stem}.txt", None), (_BFM2009_DEFAULT_TABLE, BFM2009_VERTICES)]
    default_crop = "face"
    file_landmarks = None
  elif "meanshape" in variables or "idBase" in variables:
    _require(variables, ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri"), path,
             "Deep3DFaceRecon's BFM_model_front.mat")
    mean = _flat(variables["meanshape"]).astype(np.float64)
    if mean.size % 3:
      raise ModelFileError(f"{path}: 'meanshape' has {mean.size} entries, not a multiple of 3")
    num_vertices = mean.size // 3
    mean = mean.reshape(num_vertices, 3) * 100.0  # decimetres -> mm

    def prescaled(var, factor):
      basis = _columns(variables[var], 3 * num_vertices, path, var)
      return _scaled_basis(basis, np.full(basis.shape[1], factor), num_vertices, path, var,
                           orthonormal_or_scaled=False)
    shape_basis = prescaled("idBase", 100.0)
    expression_basis = prescaled("exBase", 100.0)
    albedo_basis = prescaled("texBase", 1.0 / 255.0)
    albedo_mean = _flat(variables["meantex"]).astype(np.float64) / 255.0
    if albedo_mean.size != 3 * num_vertices:
      raise ModelFileError(f"{path}: 'meantex' has {albedo_mean.size // 3} vertices but "
                           f"'meanshape' has {num_vertices}")
    triangles = _triangles_from_mat(variables["tri"], path, "tri")
    default_tables = [(f"ibug_to_{stem}.txt", None)]
    default_crop = None
    file_landmarks = None
    if "keypoints" in variables:
      file_landmarks = np.round(_flat(variables["keypoints"])).astype(np.int64) - 1
      if file_landmarks.shape != (model_lib.NUM_LANDMARKS,):
        raise ModelFileError(f"{path}: 'keypoints' has {file_landmarks.size} entries, "
                             f"expected {model_lib.NUM_LANDMARKS} (iBUG-68)")
      if file_landmarks.min() < 0 or file_landmarks.max() >= num_vertices:
        raise ModelFileError(f"{path}: 'keypoints' must be 1-based indices in "
                             f"[1, {num_vertices}]")
  else:
    raise ModelFileError(
        f"{path}: not a Basel Face Model .mat file: expected the variables shapeMU, shapePC, "
        "shapeEV, texMU, texPC, texEV, tl (BFM 2009 01_MorphableModel.mat) or meanshape, "
        "idBase, exBase, meantex, texBase, tri (Deep3DFaceRecon BFM_model_front.mat). Found: "
        f"{sorted(variables)}")
  albedo_mean = albedo_mean.reshape(num_vertices, 3)
  if isinstance(landmarks, str) and landmarks == "auto" and file_landmarks is not None:
    table = file_landmarks.astype(np.int32)
  else:
    table = _landmark_table(landmarks, path, num_vertices, default_tables)
  if isinstance(crop, str) and crop == "auto":
    crop = default_crop
  return _finish(mean, shape_basis, expression_basis, albedo_mean, albedo_basis, triangles,
                 table, crop, path, name, default_name=stem)
