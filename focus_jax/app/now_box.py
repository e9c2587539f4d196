"""NoW face-box files (``detected_face/<subject>/<challenge>/<IMG>.npy``), read without
unpickling anything but numbers.

The dataset pickles a dict (``left``, ``top``, ``right``, ``bottom``, px) in a 0-d
object array; :func:`read_box` decodes it with :class:`_BoxUnpickler`, whose only
resolvable names are inert stand-ins for the few numpy pieces such a pickle uses.
:func:`write_box` writes a plain float64 [4] array (no pickle).
"""

from __future__ import annotations

import os
import pickle  # only for the restricted _BoxUnpickler (no global resolves)

import numpy as np

from focus_jax.errors import DataError

# A NoW face box file is a few hundred bytes; anything far larger is not one.
BOX_MAX_BYTES = 1 << 16
_BOX_KEYS = ("left", "top", "right", "bottom")


def read_box(path: str) -> tuple:
  """(left, top, right, bottom) in pixels from a ``detected_face`` .npy file.

  The dataset stores a dict (keys 'left', 'top', 'right', 'bottom') pickled in a 0-d
  object array; a plain numeric array of 4 values in that order is accepted too
  (what :func:`write_box` writes). Nothing is unpickled with Python's full unpickler:
  the dict is decoded by :class:`_BoxUnpickler`, which imports nothing and builds only
  numbers, strings, dicts, lists and numpy scalars of numeric dtypes; any other object
  in the file (e.g. a callable such as ``os.system``) is refused before it is built.

  Raises:
    DataError: missing, larger than :data:`BOX_MAX_BYTES`, not an .npy file, an
      object array other than the box dict, or not a finite box with left < right
      and top < bottom (the message names the file).
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw = f.read(BOX_MAX_BYTES + 1)
  except FileNotFoundError:
    raise DataError(f"face box not found: {path}") from None
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: cannot read the face box ({e})") from e
  if len(raw) > BOX_MAX_BYTES:
    raise DataError(f"{path}: more than {BOX_MAX_BYTES} bytes, not a NoW face box")
  try:
    values = _box_values(raw)
  except DataError as e:
    raise DataError(f"{path}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except  (a malformed header or pickle)
    raise DataError(f"{path}: not a NoW face box .npy ({type(e).__name__}: "
                    f"{_escaped(e, 200)})") from None
  box = tuple(float(v) for v in values)
  if (not all(np.isfinite(box)) or not box[0] < box[2] or not box[1] < box[3]):
    raise DataError(f"{path}: not a valid face box (left < right, top < bottom, finite): {box}")
  return box


def _box_values(raw: bytes) -> list:
  """The 4 numbers of a box .npy's bytes (see :func:`read_box`); DataError otherwise."""
  import io  # pylint: disable=import-outside-toplevel
  import math  # pylint: disable=import-outside-toplevel
  from numpy.lib import format as npy_format  # pylint: disable=import-outside-toplevel
  f = io.BytesIO(raw)
  version = npy_format.read_magic(f)
  if version == (1, 0):
    shape, fortran, dtype = npy_format.read_array_header_1_0(f)
  elif version == (2, 0):
    shape, fortran, dtype = npy_format.read_array_header_2_0(f)
  else:
    raise DataError(f"unsupported .npy version {version}")
  payload = raw[f.tell():]
  if dtype.hasobject:
    if dtype != np.dtype(object) or shape != ():
      raise DataError(f"an object array of shape {shape} and dtype {dtype}, not the dataset's "
                      "box dict; refusing to unpickle it")
    box = _BoxUnpickler(io.BytesIO(payload)).load()
    if not isinstance(box, _NpyArray) or box.item() is None:
      raise DataError("the pickle holds no 0-d object array")
    box = box.item()
    if not isinstance(box, dict) or not all(k in box for k in _BOX_KEYS):
      raise DataError("not a NoW face box (a dict with left, top, right, bottom)")
    values = [box[k] for k in _BOX_KEYS]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
      raise DataError(f"the box's values are not numbers: {values!r:.200}")
    return values
  if dtype.kind not in "iuf" or dtype.fields or dtype.subdtype or math.prod(shape) != 4:
    raise DataError(f"expected 4 numbers, got an array of shape {shape} and dtype {dtype}")
  if len(payload) < 4 * dtype.itemsize:
    raise DataError("truncated array data")
  flat = np.frombuffer(payload, dtype, 4).reshape(shape, order="F" if fortran else "C")
  return flat.ravel().tolist()


def _escaped(text, limit: int = 60) -> str:
  """``text`` from a file, printable on one line (escapes, truncated)."""
  return repr(str(text))[1:-1][:limit]


class _Refused(ValueError):
  """An object in a box pickle that a NoW face box cannot hold."""


class _NDArrayType:
  """Stands in for ``numpy.ndarray`` in a box pickle (never instantiated)."""


class _SafeDtype:
  """Stands in for ``numpy.dtype``: remembers a numeric (or object) type code."""

  def __init__(self, spec, align=False, copy=False):
    del align, copy
    spec = spec.decode("latin1") if isinstance(spec, bytes) else spec
    if not isinstance(spec, str) or not (spec in ("O4", "O8") or (
        len(spec) >= 2 and spec[0] in "iuf" and spec[1:].isdigit() and len(spec) <= 3)):
      raise _Refused(f"dtype {spec!r:.40}")
    self.spec, self.order = spec, "<"

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
      self.order = state[1]

  def numpy(self) -> np.dtype:
    return np.dtype(("<" if self.order in "|=" else self.order) + self.spec)


def _raw_bytes(data) -> bytes:
  if isinstance(data, str):        # Python 2 pickles (read with encoding latin1)
    return data.encode("latin1")
  if isinstance(data, bytes):
    return data
  raise _Refused(f"array data of type {type(data).__name__}")


def _scalar(dtype, data):
  """``numpy.core.multiarray.scalar``: a numeric numpy scalar, as a Python number."""
  if not isinstance(dtype, _SafeDtype) or dtype.spec.startswith("O"):
    raise _Refused("a scalar of a non-numeric dtype")
  dt, raw = dtype.numpy(), _raw_bytes(data)
  if len(raw) != dt.itemsize:
    raise _Refused(f"a {dt} scalar of {len(raw)} bytes")
  return np.frombuffer(raw, dt)[0].item()


class _NpyArray:
  """``numpy.core.multiarray._reconstruct``'s result, filled by the pickle's BUILD: a 0-d
  object array (the box dict) or a numeric array of one value."""

  def __init__(self):
    self.state = None

  def __setstate__(self, state):
    self.state = state

  def item(self):
    st = self.state
    if not (isinstance(st, tuple) and len(st) == 5 and isinstance(st[2], _SafeDtype)):
      return None
    _, shape, dtype, _, data = st
    if not isinstance(shape, tuple) or any(not isinstance(n, int) or n != 1 for n in shape):
      return None
    if dtype.spec.startswith("O"):
      return data[0] if isinstance(data, list) and len(data) == 1 else None
    return _scalar(dtype, data)


def _reconstruct(cls, shape, typecode):
  del shape, typecode
  if cls is not _NDArrayType:
    raise _Refused("_reconstruct of something other than numpy.ndarray")
  return _NpyArray()


def _codecs_encode(text, encoding="utf-8"):
  """``_codecs.encode``, which protocol-2 pickles of Python 3 use for bytes."""
  if not isinstance(text, str) or encoding != "latin1":
    raise _Refused("_codecs.encode other than of a string to latin1")
  return text.encode("latin1")


class _BoxUnpickler(pickle.Unpickler):
  """Decodes a box pickle: only the names below resolve, each to one of the stand-ins
  above (none imports or runs anything); every other name is refused."""

  _NAMES = {("numpy", "ndarray"): _NDArrayType, ("numpy", "dtype"): _SafeDtype,
            ("_codecs", "encode"): _codecs_encode}
  for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _NAMES[(_module, "_reconstruct")] = _reconstruct
    _NAMES[(_module, "scalar")] = _scalar
  del _module

  def __init__(self, fileobj):
    super().__init__(fileobj, encoding="latin1")

  def find_class(self, module, name):
    found = self._NAMES.get((module, name))
    if found is None:
      raise DataError(f"refusing to unpickle {_escaped(module)}.{_escaped(name)} (a NoW face "
                      "box holds only "
                      "numbers; this file tries to build or call other objects)")
    return found

  def persistent_load(self, pid):
    raise DataError("a persistent reference in a box pickle")


def write_box(path: str, box) -> None:
  """Writes a face box as a plain float64 [4] .npy (left, top, right, bottom; no pickle)."""
  left, top, right, bottom = (float(v) for v in box)
  os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
  np.save(path, np.array([left, top, right, bottom], np.float64), allow_pickle=False)
