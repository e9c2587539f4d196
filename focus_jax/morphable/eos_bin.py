"""eos / Surrey Face Model files (``*.bin``): a pure-numpy reader.

eos (github.com/patrikhuber/eos) stores its models with cereal's
``BinaryOutputArchive``. That archive has no header, magic number or type tags:
it is the members written one after the other in native byte order
(little-endian on every machine eos runs on; files from a big-endian machine are
not supported). The pieces that occur in model files:

=========================  ==================================================
C++ value                  bytes
=========================  ==================================================
class version              ``uint32``, written once per versioned class
                           (only ``MorphableModel`` is versioned)
``bool``                   1 byte, 0 or 1
``std::string``            ``uint64`` length + that many bytes (no NUL)
``std::vector<T>``         ``uint64`` count + the elements
``std::array<T, N>``       the N elements, no count
``std::optional<T>``       ``bool`` *nullopt* (1 = empty), then T if present
``std::variant<A, B>``     ``int32`` index (0 = A), then the alternative
``std::unordered_map``     ``uint64`` count + (key, value) pairs
``Eigen::MatrixXf``        ``int32`` rows, ``int32`` cols, rows * cols
                           ``float32`` in column-major order
=========================  ==================================================

``PcaModel`` = mean [3V, 1] (xyzxyz...), orthonormal basis [3V, K], eigenvalues
[K, 1] (variances), triangle list ``vector<array<int32, 3>>``. ``Blendshape`` =
name ``string``, deformation [3V, 1]. ``MorphableModel`` versions (eos 1.5 reads 1-4
and writes 4):

  1. shape PcaModel, colour PcaModel, texture coordinates
     ``vector<array<double, 2>>``;
  2. as 1, with ``optional<variant<PcaModel, vector<Blendshape>>>`` expression
     model after the colour model;
  3. as 2, with ``optional<unordered_map<string, int32>>`` landmark definitions
     before the texture coordinates;
  4. as 3, with texture triangle indices ``vector<array<int32, 3>>`` at the end.

A shape-only model (the public SFM) has an empty colour model (0-row mean, 0x0
basis, empty eigenvalues and triangle list). Blendshape files
(``expression_blendshapes_*.bin``) are a bare ``vector<Blendshape>``.

Every size read from a file is checked against the bytes left before anything is
allocated, so a corrupt or truncated file raises
:class:`~focus_jax.errors.ModelFileError` instead of exhausting memory.
"""

from __future__ import annotations

import os
import struct
import warnings
from typing import Optional

import numpy as np

from focus_jax.errors import ModelFileError
from focus_jax.morphable import model as model_lib
from focus_jax.morphable.landmark_map import read_ibug_mapping

# Model format versions this reader understands (eos-py 1.5 reads 1-4, writes 4).
SUPPORTED_VERSIONS = (1, 2, 3, 4)

# Default albedo for models without a colour model (the public SFM is shape-only).
# Not a statistical model: a plausible uniform skin tone plus three smooth directions
# with hand-picked standard deviations, so that albedo fitting has something to fit.
DEFAULT_SKIN_TONE = (0.62, 0.45, 0.37)  # linear RGB
DEFAULT_ALBEDO_STDS = dict(brightness=0.15, redness=0.04, vertical=0.08)

_REFETCH = "(incomplete download or not an eos file? re-fetch it)"


class _Archive:
  """Sequential reader over the bytes of a cereal binary archive."""

  def __init__(self, data: bytes, path: str):
    self._data = memoryview(data)
    self._pos = 0
    self.path = path

  @property
  def remaining(self) -> int:
    return len(self._data) - self._pos

  def error(self, problem: str) -> ModelFileError:
    return ModelFileError(f"{self.path}: {problem}")

  def _take(self, nbytes: int, what: str) -> memoryview:
    if nbytes > self.remaining:
      raise self.error(
          f"truncated or corrupt eos file: {what} at byte {self._pos} needs {nbytes} "
          f"bytes but only {self.remaining} remain {_REFETCH}")
    out = self._data[self._pos:self._pos + nbytes]
    self._pos += nbytes
    return out

  def _scalar(self, fmt: str, what: str):
    return struct.unpack(fmt, self._take(struct.calcsize(fmt), what))[0]

  def uint32(self, what: str) -> int:
    return self._scalar("<I", what)

  def int32(self, what: str) -> int:
    return self._scalar("<i", what)

  def boolean(self, what: str) -> bool:
    pos = self._pos
    value = self._scalar("<B", what)
    if value > 1:
      raise self.error(f"corrupt eos file: {what} at byte {pos} is {value}, not a bool "
                       "(0 or 1)")
    return bool(value)

  def count(self, what: str, min_item_bytes: int) -> int:
    """Reads a uint64 size tag and checks the items can fit in the rest of the file."""
    pos = self._pos
    n = self._scalar("<Q", f"size of {what}")
    if n * min_item_bytes > self.remaining:
      raise self.error(
          f"truncated or corrupt eos file: {what} at byte {pos} claims {n} items "
          f"(at least {n * min_item_bytes} bytes) but only {self.remaining} bytes remain "
          f"{_REFETCH}")
    return n

  def array(self, n: int, dtype: str, what: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    return np.frombuffer(self._take(n * dtype.itemsize, what), dtype).copy()

  def string(self, what: str) -> str:
    n = self.count(what, 1)
    raw = bytes(self._take(n, what))
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError:
      raise self.error(f"corrupt eos file: {what} is not valid UTF-8 text") from None

  def eigen(self, what: str) -> np.ndarray:
    """Reads an Eigen float matrix: returns [rows, cols] float32 (Fortran-ordered)."""
    pos = self._pos
    rows = self.int32(f"row count of {what}")
    cols = self.int32(f"column count of {what}")
    if rows < 0 or cols < 0:
      raise self.error(f"corrupt eos file: {what} at byte {pos} has negative size "
                       f"{rows} x {cols}")
    if rows * cols * 4 > self.remaining:
      raise self.error(
          f"truncated or corrupt eos file: {what} at byte {pos} claims a {rows} x {cols} "
          f"float matrix ({rows * cols * 4} bytes) but only {self.remaining} bytes remain "
          f"{_REFETCH}")
    data = self.array(rows * cols, "<f4", what)
    return data.reshape((rows, cols), order="F")

  def int_triples(self, what: str) -> np.ndarray:
    """Reads a ``vector<array<int32, 3>>``: returns [N, 3] int32."""
    n = self.count(what, 12)
    return self.array(3 * n, "<i4", what).reshape(n, 3)

  def finish(self):
    if self.remaining:
      raise self.error(f"corrupt eos file or unknown layout: {self.remaining} unexpected "
                       f"bytes after the end of the data at byte {self._pos}")


def _read_bytes(path: str, what: str) -> bytes:
  if not os.path.isfile(path):
    raise ModelFileError(f"{what} not found: {path}" if not os.path.exists(path)
                         else f"{what} path is not a file: {path}")
  with open(path, "rb") as f:
    data = f.read()
  if not data:
    raise ModelFileError(f"{what} is empty: {path}")
  return data


def _check_finite(ar: _Archive, array: np.ndarray, what: str):
  if not np.isfinite(array).all():
    raise ar.error(f"corrupt eos file: {what} contains NaN or infinite values")


def _check_indices(ar: _Archive, triangles: np.ndarray, limit: int, what: str):
  if triangles.size and (triangles.min() < 0 or triangles.max() >= limit):
    raise ar.error(f"corrupt eos file: {what} has indices in [{triangles.min()}, "
                   f"{triangles.max()}], outside [0, {limit})")


def _vertex_vector(ar: _Archive, column: np.ndarray, what: str) -> np.ndarray:
  """[3V, 1] xyzxyz... column -> [V, 3]."""
  if column.shape[1] != 1 or column.shape[0] % 3:
    raise ar.error(f"corrupt eos file: {what} is {column.shape[0]} x {column.shape[1]}, "
                   "expected a [3 * vertices, 1] column")
  _check_finite(ar, column, what)
  return np.ascontiguousarray(column[:, 0]).reshape(-1, 3)


def _read_pca_model(ar: _Archive, what: str) -> Optional[dict]:
  """Reads an eos ``PcaModel``; returns None for an empty one (e.g. SFM's colour model).

  Returns:
    dict with ``mean`` [V, 3], ``orthonormal_basis`` [K, V, 3] (component-major;
    eos's [3V, K] matrix is ``orthonormal_basis.reshape(K, -1).T``), ``eigenvalues``
    [K] (variances) and ``triangles`` [F, 3] int32.
  """
  mean = ar.eigen(f"{what} mean")
  basis = ar.eigen(f"{what} orthonormal PCA basis")
  eigenvalues = ar.eigen(f"{what} eigenvalues")
  triangles = ar.int_triples(f"{what} triangle list")
  if mean.size == 0:
    if basis.size or eigenvalues.size:
      raise ar.error(f"corrupt eos file: {what} has no mean but a {basis.shape} basis and "
                     f"{eigenvalues.size} eigenvalues")
    return None
  mean = _vertex_vector(ar, mean, f"{what} mean")
  num_vertices = mean.shape[0]
  num_components = basis.shape[1]
  if basis.shape[0] != 3 * num_vertices:
    raise ar.error(f"corrupt eos file: {what} basis has {basis.shape[0]} rows but the mean "
                   f"has {3 * num_vertices} (3 x {num_vertices} vertices)")
  if eigenvalues.shape != (num_components, 1):
    raise ar.error(f"corrupt eos file: {what} has {num_components} basis vectors but "
                   f"{eigenvalues.shape[0]} x {eigenvalues.shape[1]} eigenvalues")
  _check_finite(ar, basis, f"{what} basis")
  _check_finite(ar, eigenvalues, f"{what} eigenvalues")
  eigenvalues = eigenvalues[:, 0].copy()
  if (eigenvalues < 0).any():
    raise ar.error(f"corrupt eos file: {what} has negative eigenvalues (variances), e.g. "
                   f"{eigenvalues.min()}")
  _check_indices(ar, triangles, num_vertices, f"{what} triangle list")
  return dict(mean=mean,
              orthonormal_basis=basis.T.reshape(num_components, num_vertices, 3),
              eigenvalues=eigenvalues, triangles=triangles)


def _read_blendshapes(ar: _Archive, what: str) -> tuple[list[str], np.ndarray]:
  # Each blendshape takes at least a string size (8) and a matrix size (8).
  n = ar.count(what, 16)
  names, deformations = [], []
  for i in range(n):
    names.append(ar.string(f"name of {what} {i}"))
    deformation = ar.eigen(f"deformation of {what} {i} ({names[-1]!r})")
    deformations.append(_vertex_vector(ar, deformation, f"deformation of {what} {i}"))
    if deformations[-1].shape != deformations[0].shape:
      raise ar.error(f"corrupt eos file: {what} {i} has {deformations[-1].shape[0]} "
                     f"vertices but {what} 0 has {deformations[0].shape[0]}")
  stacked = (np.stack(deformations) if deformations else np.zeros((0, 0, 3), np.float32))
  return names, stacked


def read_eos_model(path: str | os.PathLike) -> dict:
  """Reads an eos ``MorphableModel`` file (format versions 1-4) into numpy arrays.

  Args:
    path: the ``.bin`` file, e.g. ``sfm_shape_3448.bin``.

  Returns:
    A dict (units as stored: mm for SFM shapes, colours in [0, 1] for eos models):

    * ``version``: int, the file's format version;
    * ``mean``: [V, 3] float32 shape mean;
    * ``orthonormal_basis``: [K, V, 3] float32 shape PCA basis, unit-norm components;
    * ``eigenvalues``: [K] float32 PCA variances (mm^2);
    * ``triangles``: [F, 3] int32 vertex indices;
    * ``texture_coordinates``: [T, 2] float64 (u, v), v pointing down (eos flips it
      when writing OBJ files); T = V, or 0 if the model has none;
    * ``texture_triangle_indices``: [F, 3] int32 indices into the texture
      coordinates when they have their own triangulation (version 4), else [0, 3];
    * ``color``: None, or a dict like the shape's (``mean``, ``orthonormal_basis``,
      ``eigenvalues``, ``triangles``) for the colour (albedo) PCA model;
    * ``expression``: None; or ``dict(type="pca", mean, orthonormal_basis,
      eigenvalues, triangles)`` where ``mean`` is an offset added to the shape mean;
      or ``dict(type="blendshapes", names=[K] str, deformations=[K, V, 3])``;
    * ``landmark_definitions``: None or {name: vertex index} (versions 3-4).

  Raises:
    ModelFileError: missing, truncated or corrupt file, or an unknown version.
  """
  path = os.fspath(path)
  ar = _Archive(_read_bytes(path, "eos model file"), path)
  version = ar.uint32("format version")
  if version not in SUPPORTED_VERSIONS:
    raise ar.error(
        f"not an eos morphable model file, or an unsupported format version: the version "
        f"field is {version}, this reader understands {list(SUPPORTED_VERSIONS)} (is it a "
        "blendshapes file? use read_eos_blendshapes)")
  shape = _read_pca_model(ar, "shape model")
  if shape is None:
    raise ar.error("eos model file has an empty shape model")
  num_vertices = shape["mean"].shape[0]
  color = _read_pca_model(ar, "colour model")
  if color is not None and color["mean"].shape[0] != num_vertices:
    raise ar.error(f"corrupt eos file: the colour model has {color['mean'].shape[0]} "
                   f"vertices but the shape model has {num_vertices}")

  expression = None
  if version >= 2 and not ar.boolean("expression model 'empty' flag"):
    index = ar.int32("expression model type (variant index)")
    if index == 0:
      expression = _read_pca_model(ar, "expression PCA model")
      if expression is None:
        raise ar.error("corrupt eos file: the expression PCA model is empty")
      expression["type"] = "pca"
      got = expression["mean"].shape[0]
    elif index == 1:
      names, deformations = _read_blendshapes(ar, "expression blendshape")
      expression = dict(type="blendshapes", names=names, deformations=deformations)
      got = deformations.shape[1] if names else num_vertices
    else:
      raise ar.error(f"corrupt eos file: expression model type index is {index}, expected "
                     "0 (PCA model) or 1 (blendshapes)")
    if got != num_vertices:
      raise ar.error(f"corrupt eos file: the expression model has {got} vertices but the "
                     f"shape model has {num_vertices}")

  landmark_definitions = None
  if version >= 3 and not ar.boolean("landmark definitions 'empty' flag"):
    # Each entry takes at least a string size (8) and an int32 (4).
    n = ar.count("landmark definitions", 12)
    landmark_definitions = {}
    for i in range(n):
      key = ar.string(f"landmark definition {i} name")
      landmark_definitions[key] = ar.int32(f"landmark definition {i} ({key!r}) vertex")

  n = ar.count("texture coordinates", 16)
  texture_coordinates = ar.array(2 * n, "<f8", "texture coordinates").reshape(n, 2)
  texture_triangles = (ar.int_triples("texture triangle indices") if version >= 4
                       else np.zeros((0, 3), np.int32))
  ar.finish()

  if texture_triangles.size:
    _check_indices(ar, texture_triangles, n, "texture triangle indices")
  elif n not in (0, num_vertices):
    raise ar.error(f"corrupt eos file: {n} texture coordinates for {num_vertices} vertices "
                   "and no texture triangulation")
  return dict(version=version, **shape, texture_coordinates=texture_coordinates,
              texture_triangle_indices=texture_triangles, color=color,
              expression=expression, landmark_definitions=landmark_definitions)


def read_eos_blendshapes(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
  """Reads an eos blendshapes file (``vector<Blendshape>``).

  Returns:
    (names, deformations): K names and [K, V, 3] float32 per-vertex offsets (mm),
    each the full expression (coefficient 1).

  Raises:
    ModelFileError: missing, truncated or corrupt file.
  """
  path = os.fspath(path)
  ar = _Archive(_read_bytes(path, "eos blendshapes file"), path)
  names, deformations = _read_blendshapes(ar, "blendshape")
  ar.finish()
  if not names:
    raise ar.error("eos blendshapes file contains no blendshapes")
  return names, deformations


def default_albedo(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A hand-made albedo model for shape-only meshes (not learnt from data).

  A uniform skin tone (:data:`DEFAULT_SKIN_TONE`) and three basis vectors whose
  scales are the standard deviations in :data:`DEFAULT_ALBEDO_STDS`: overall
  brightness (a multiple of the skin tone), redness (more red, less green and blue)
  and a smooth top-to-bottom variation (brightness changing linearly with height).
  Enough for albedo fitting to match the overall skin tone and a forehead-to-chin
  trend; it cannot express detail such as brows or lips.

  Args:
    mean: [V, 3] mean shape (model coordinates, y up).

  Returns:
    (albedo_mean [V, 3], albedo_basis [3, V, 3]), float32 linear RGB.
  """
  mean = np.asarray(mean, np.float64)
  num_vertices = mean.shape[0]
  tone = np.asarray(DEFAULT_SKIN_TONE, np.float64)
  albedo_mean = np.broadcast_to(tone, (num_vertices, 3))
  stds = DEFAULT_ALBEDO_STDS
  brightness = stds["brightness"] * albedo_mean
  redness_direction = np.array([1.0, -0.5, -0.5]) / np.sqrt(1.5)
  redness = np.broadcast_to(stds["redness"] * redness_direction, (num_vertices, 3))
  height = mean[:, 1] - 0.5 * (mean[:, 1].max() + mean[:, 1].min())
  half_range = max(np.abs(height).max(), 1e-12)
  vertical = stds["vertical"] * (height / half_range)[:, None] * albedo_mean
  basis = np.stack([brightness, redness, vertical])
  return albedo_mean.astype(np.float32), basis.astype(np.float32)


def _rescaled(pca: dict) -> np.ndarray:
  """[K, V, 3] basis scaled by the PCA standard deviations (eos's "rescaled" basis)."""
  return pca["orthonormal_basis"] * np.sqrt(pca["eigenvalues"])[:, None, None]


def _sibling(path: str, name: str) -> Optional[str]:
  candidate = os.path.join(os.path.dirname(os.path.abspath(path)), name)
  return candidate if os.path.isfile(candidate) else None


def load_eos_model(path: str | os.PathLike, blendshapes="auto", landmarks="auto",
                   name: Optional[str] = None) -> model_lib.MorphableModel:
  """Loads an eos / Surrey Face Model file as a :class:`MorphableModel`.

  Shape (and colour, and expression PCA) bases are eos's rescaled bases,
  ``orthonormal * sqrt(eigenvalues)``, so their coefficients are standard normal and
  ``vertices(model, c)`` equals eos's ``draw_sample(c)``.

  Expression blendshapes are *not* a PCA model: they become the expression basis
  as they are, so coefficient 1 is the full blendshape (e.g. "happiness") and 0 the
  neutral face; there is no prior variance, so regularise them accordingly. An
  expression PCA model's mean (an offset, often zero) is added to the shape mean, as
  eos does when drawing samples with expressions.

  Without a colour model (the public SFM is shape-only) the albedo is
  :func:`default_albedo`. A colour model is used as the albedo model (rescaled basis);
  eos expects colours in [0, 1], and one stored as 0-255 (mean above 2) is divided
  by 255. Per-vertex ``uv`` comes from the texture coordinates (v pointing down, as
  eos stores them) when there is one per vertex and no separate texture
  triangulation, else it is None.

  Args:
    path: the model file, e.g. ``sfm_shape_3448.bin``.
    blendshapes: ``"auto"``: the file's own expression model if it has one, else a
      sibling ``expression_blendshapes_<V>.bin`` with the model's vertex count V if
      present; ``None``: no expressions (the file's own expression model is dropped);
      a path: that blendshapes file (replaces the file's own expression model).
    landmarks: ``"auto"``: a sibling ``ibug_to_sfm.txt`` if present (entries beyond
      the model's vertex count, which that file notes exist only in the higher
      SFM resolutions, become -1 with a warning), else none; ``None``: no landmarks;
      a path to an ``ibug_to_*.txt`` table; or a [68] int array. The SFM table leaves
      the jaw contour (iBUG 1-8, 10-17) at -1. Named landmark definitions stored in
      the file (versions 3-4) are not used (see :func:`read_eos_model`).
    name: model name; defaults to the file name(s).

  Returns:
    A :class:`~focus_jax.morphable.model.MorphableModel`.

  Raises:
    ModelFileError: a missing, truncated or corrupt model, blendshapes or landmark
      file, or blendshapes with a different vertex count than the model.
  """
  path = os.fspath(path)
  raw = read_eos_model(path)
  mean = raw["mean"]
  num_vertices = mean.shape[0]
  names = [os.path.basename(path)]

  expression_basis = None
  blendshapes_path = None
  use_own_expressions = False
  if isinstance(blendshapes, str) and blendshapes == "auto":
    use_own_expressions = raw["expression"] is not None
    if not use_own_expressions:
      blendshapes_path = _sibling(path, f"expression_blendshapes_{num_vertices}.bin")
  elif isinstance(blendshapes, (str, os.PathLike)):
    blendshapes_path = os.fspath(blendshapes)
  elif blendshapes is not None:
    raise TypeError(f"load_eos_model: blendshapes must be 'auto', None or a path, got "
                    f"{blendshapes!r}")
  if blendshapes_path is not None:
    _, expression_basis = read_eos_blendshapes(blendshapes_path)
    if expression_basis.shape[1] != num_vertices:
      raise ModelFileError(
          f"{blendshapes_path}: blendshapes have {expression_basis.shape[1]} vertices but "
          f"the model {path} has {num_vertices}; use the blendshapes file made for this "
          "model (expression_blendshapes_<vertex count>.bin)")
    names.append(os.path.basename(blendshapes_path))
  elif use_own_expressions:
    expression = raw["expression"]
    if expression["type"] == "pca":
      mean = mean + expression["mean"]
      expression_basis = _rescaled(expression)
    else:
      expression_basis = expression["deformations"]

  if isinstance(landmarks, str) and landmarks == "auto":
    table_path = _sibling(path, "ibug_to_sfm.txt")
    table = None
    if table_path is not None:
      table = read_ibug_mapping(table_path)
      beyond = table >= num_vertices
      if beyond.any():
        warnings.warn(f"{table_path}: iBUG points {list(np.flatnonzero(beyond) + 1)} map to "
                      f"vertices beyond this model's {num_vertices}; they are left undefined")
        table = np.where(beyond, -1, table).astype(np.int32)
  elif landmarks is None:
    table = None
  elif isinstance(landmarks, (str, os.PathLike)):
    table_path = os.fspath(landmarks)
    table = read_ibug_mapping(table_path)
    if (table >= num_vertices).any():
      raise ModelFileError(f"{table_path}: maps landmarks to vertex {table.max()} but the "
                           f"model {path} has {num_vertices} vertices")
  else:
    table = np.asarray(landmarks, np.int32)

  color = raw["color"]
  if color is None:
    albedo_mean, albedo_basis = default_albedo(mean)
  else:
    albedo_mean, albedo_basis = color["mean"], _rescaled(color)
    if albedo_mean.max() > 2.0:
      albedo_mean, albedo_basis = albedo_mean / 255.0, albedo_basis / 255.0

  texcoords = raw["texture_coordinates"]
  uv = (texcoords if texcoords.shape[0] == num_vertices
        and not raw["texture_triangle_indices"].size else None)
  return model_lib.make_model(
      mean=mean, shape_basis=_rescaled(raw), expression_basis=expression_basis,
      albedo_mean=albedo_mean, albedo_basis=albedo_basis, triangles=raw["triangles"],
      landmarks=table, uv=uv, name=name or " + ".join(names))
