"""PyTorch ``state_dict`` → Flax variables, for torchvision ResNets and ArcFace iResNets.

Reading ``.pth`` files does **not** need torch: :func:`load_torch_state_dict` reads
both formats of ``torch.save`` — the zip archive written since PyTorch 1.6 (a pickle of
the dict plus one raw little-endian buffer per storage) and the older single-stream
"legacy" format — with a restricted unpickler that only rebuilds tensors as numpy
arrays; any other object in the pickle is refused, nothing in it is executed.

Name mapping (PyTorch → Flax, see :class:`focus_jax.nets.encoder.ResNet` and
:class:`focus_jax.nets.identity.IResNet`):

* ``layer1.0.conv1`` → ``layer1_0/conv1``; ``downsample.0`` / ``downsample.1`` →
  ``downsample_conv`` / ``downsample_bn``; other modules keep their names;
* conv ``weight`` [O, I, kh, kw] → ``kernel`` [kh, kw, I, O]; linear ``weight`` [O, I] →
  ``kernel`` [I, O]; BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` →
  params ``scale``/``bias`` and batch_stats ``mean``/``var``; PReLU ``weight`` → ``alpha``;
* a linear layer fed by a flattened NCHW feature map (ArcFace's ``fc``) has its input
  axis permuted to the NHWC flattening order.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Iterable, Mapping, Optional

import numpy as np

from focus_jax.nets.weights import WeightsError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


# Caps against files that make the reader allocate far more than they hold.
MAX_PICKLE_BYTES = 1 << 28
# Elements all tensors together may have, as a multiple of the elements stored: tensors
# may share a storage, but never expand it much (that would be a memory bomb).
MAX_VIEW_FACTOR = 4


class _StorageType:
  def __init__(self, name):
    self.name = name


class _Storage:
  """A storage placeholder: filled with a flat numpy array once its bytes are read."""

  def __init__(self, key, dtype, numel):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.array = None

  def fill(self, raw: bytes, path: str):
    expected = self.numel * self.itemsize
    if len(raw) != expected:
      raise WeightsError(f"{path}: storage {self.key} declares {self.numel} elements "
                         f"({expected} bytes) but the file holds {len(raw)} bytes for it")
    if self.dtype == "bfloat16":
      u16 = np.frombuffer(raw, "<u2", self.numel)
      self.array = (u16.astype(np.uint32) << 16).view(np.float32)
    else:
      self.array = np.frombuffer(raw, np.dtype(self.dtype).newbyteorder("<"), self.numel)

  @property
  def itemsize(self):
    return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


def _escaped(text, limit: int = 60) -> str:
  """``text`` from a file, printable on one line (escapes, truncated)."""
  return repr(str(text))[1:-1][:limit]


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


class _Tensor:
  """A tensor placeholder (``torch._utils._rebuild_tensor_v2``'s arguments).

  Nothing is checked here: the pickle could still change the attributes (BUILD);
  :meth:`materialize` validates them all against the storage.
  """

  def __init__(self, storage, offset, size, stride, *unused):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def materialize(self, where: str) -> np.ndarray:
    """A copy of the tensor; ``where`` ('file: tensor name') prefixes every error.

    Raises:
      WeightsError: no storage, a storage never filled, or offset / size / stride
        that are not non-negative integers or reach outside the storage.
    """
    storage = self.storage
    if not isinstance(storage, _Storage):
      raise WeightsError(f"{where}: the tensor has no storage (got {type(storage).__name__}); "
                         "expected a tensor of a torch.save-d state_dict")
    flat = storage.array
    if not isinstance(flat, np.ndarray):
      raise WeightsError(f"{where}: its storage {storage.key} has no data in the file")
    size, stride, offset = self.size, self.stride, self.offset
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(_is_int(v) for v in size + stride) and _is_int(offset)):
      raise WeightsError(f"{where}: malformed tensor header (size {size!r:.80}, stride "
                         f"{stride!r:.80}, offset {offset!r:.40})")
    if offset < 0 or any(v < 0 for v in size) or any(v < 0 for v in stride):
      raise WeightsError(f"{where}: negative offset, size or stride (offset {offset}, size "
                         f"{size}, stride {stride})")
    count = int(np.prod(size, dtype=object)) if size else 1
    # Last element read: offset + sum((n - 1) * stride); Python ints, no overflow.
    extent = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1 if count else offset
    if extent > flat.size or count > max(flat.size, 1):
      raise WeightsError(f"{where}: size {size} with stride {stride} at offset {offset} "
                         f"reaches past its storage of {flat.size} elements")
    if count == 0:
      try:
        return np.zeros(size, flat.dtype)
      except ValueError as e:   # e.g. (0, 2**62): numpy refuses the dimensions
        raise WeightsError(f"{where}: empty tensor of size {size} ({e})") from None
    if not size:
      return np.array(flat[offset], copy=True)
    itemsize = flat.dtype.itemsize
    strides = tuple(st * itemsize if n > 1 else 0 for n, st in zip(size, stride))
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=strides,
                                           writeable=False)
    return np.array(view, copy=True)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  return data


class _StateDictUnpickler(pickle.Unpickler):
  """Rebuilds tensors as placeholders over storages; refuses every other global."""

  def __init__(self, fileobj, path: str):
    super().__init__(fileobj)
    self.path = path
    self.storages: Dict[str, _Storage] = {}

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _Tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise WeightsError(f"{self.path}: unexpected object {_escaped(module)}.{_escaped(name)} "
                       "in the checkpoint; "
                       f"expected a plain state_dict of tensors")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
      raise WeightsError(f"{self.path}: unsupported persistent object {pid!r:.80}")
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    if not isinstance(storage_type, _StorageType):
      raise WeightsError(f"{self.path}: storage {key!r:.40} of unknown type "
                         f"{storage_type!r:.60}; expected one of {sorted(_STORAGE_DTYPES)}")
    if not _is_int(numel) or numel < 0:
      raise WeightsError(f"{self.path}: storage {key!r:.40} declares {numel!r:.40} elements")
    if len(pid) > 5 and pid[5] is not None:
      raise WeightsError(f"{self.path}: storage views (pre-1.0 checkpoints) are not supported")
    if key not in self.storages:
      self.storages[key] = _Storage(key, _STORAGE_DTYPES[storage_type.name], numel)
    return self.storages[key]


def _read_zip(path: str):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkls:
      raise WeightsError(f"{path}: zip file without data.pkl, not a torch checkpoint")
    prefix = pkls[0][:-len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
      raise WeightsError(f"{path}: big-endian checkpoints are not supported")
    if archive.getinfo(pkls[0]).file_size > MAX_PICKLE_BYTES:
      raise WeightsError(f"{path}: {pkls[0]} is larger than {MAX_PICKLE_BYTES} bytes, not a "
                         "state_dict's pickle")
    unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pkls[0])), path)
    obj = unpickler.load()
    for key, storage in unpickler.storages.items():
      name = f"{prefix}data/{key}"
      if name not in names:
        raise WeightsError(f"{path}: storage {key!r:.40} has no data ({name} missing)")
      # Checked before reading, so a small (compressed) entry cannot expand to more.
      if archive.getinfo(name).file_size != storage.numel * storage.itemsize:
        raise WeightsError(f"{path}: storage {key} declares {storage.numel} elements but "
                           f"{name} holds {archive.getinfo(name).file_size} bytes")
      storage.fill(archive.read(name), path)
  return obj


class _NoGlobalsUnpickler(pickle.Unpickler):
  def __init__(self, fileobj, path):
    super().__init__(fileobj)
    self.path = path

  def find_class(self, module, name):
    raise WeightsError(f"{self.path}: unexpected object {_escaped(module)}.{_escaped(name)}; "
                       "not a checkpoint")

  def persistent_load(self, pid):
    raise WeightsError(f"{self.path}: unexpected persistent object; not a checkpoint")


def _read_legacy(path: str):
  """torch.save's pre-1.6 format: magic, protocol, sys_info pickles, the object pickle,
  a pickle of storage keys, then per storage an int64 element count and its bytes."""
  file_size = os.path.getsize(path)
  with open(path, "rb") as f:
    header = _NoGlobalsUnpickler(f, path)
    if header.load() != _LEGACY_MAGIC:
      raise WeightsError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    header.load()   # protocol version
    header.load()   # sys_info
    unpickler = _StateDictUnpickler(f, path)
    obj = unpickler.load()
    keys = _NoGlobalsUnpickler(f, path).load()
    if not isinstance(keys, list):
      raise WeightsError(f"{path}: the storage key list is a {type(keys).__name__}")
    for key in keys:
      storage = unpickler.storages.get(str(key))
      if storage is None:
        raise WeightsError(f"{path}: data for storage {key!r:.40}, which no tensor uses")
      head = f.read(8)
      count = int(np.frombuffer(head, "<i8")[0]) if len(head) == 8 else -1
      if count != storage.numel or count * storage.itemsize > file_size - f.tell():
        raise WeightsError(f"{path}: storage {key!r:.40} declares {storage.numel} elements "
                           f"but its data header says {count} or the file ends first")
      storage.fill(f.read(count * storage.itemsize), path)
  return obj


def _materialize(obj, path: str, name: str = "", depth: int = 0, budget: Optional[list] = None):
  """Tensors -> numpy arrays in a (nested) dict; ``budget`` holds the elements still
  allowed (see MAX_VIEW_FACTOR)."""
  if isinstance(obj, _Tensor):
    array = obj.materialize(f"{path}: tensor {name or '<top level>'}")
    budget[0] -= array.size
    if budget[0] < 0:
      raise WeightsError(f"{path}: tensor {name}: the tensors hold {MAX_VIEW_FACTOR}x more "
                         "elements than the file stores; not a state_dict")
    return array
  if isinstance(obj, Mapping):
    if depth > 8:
      raise WeightsError(f"{path}: dicts nested more than 8 deep at {name}; not a state_dict")
    return {k: _materialize(v, path, f"{name}.{k}" if name else str(k), depth + 1, budget)
            for k, v in obj.items()}
  return obj


def load_torch_state_dict(path: str | os.PathLike) -> Dict[str, np.ndarray]:
  """Reads a ``torch.save``-d state_dict into ``{name: numpy array}``, without torch.

  Both of torch.save's formats are read (zip since PyTorch 1.6, and the older "legacy"
  stream, in which e.g. torchvision's original ImageNet weights were saved). Accepts a
  bare state_dict or a checkpoint dict holding one under ``state_dict`` / ``model``;
  strips a DataParallel ``module.`` prefix.

  The file is untrusted: only OrderedDict, tensors and storages are built from its
  pickle (any other name is refused, nothing is run), every storage must hold exactly
  the bytes it declares, and every tensor's offset, size and stride must be
  non-negative integers that stay inside its storage.

  Raises:
    WeightsError: the file is missing, not a checkpoint, holds more than tensors, or a
      tensor that does not fit its storage (naming the file and the tensor).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightsError(f"weights file not found: {path}")
  try:
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if isinstance(obj, _Tensor):
      storages = [obj.storage]
    elif isinstance(obj, Mapping):
      storages = [v.storage for v in _tensors(obj)]
    else:
      storages = []
    stored = sum(s.array.size for s in {id(s): s for s in storages
                                        if isinstance(s, _Storage) and s.array is not None
                                        }.values())
    obj = _materialize(obj, path, budget=[MAX_VIEW_FACTOR * stored + 1024])
  except WeightsError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (truncated or corrupt pickle / archive)
    raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                       f"{_escaped(e, 200)})") from None
  for key in ("state_dict", "model"):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise WeightsError(f"{path}: expected a state_dict (a dict of tensors), got "
                       f"{type(obj).__name__}")
  return {re.sub(r"^module\.", "", k): np.asarray(v) for k, v in obj.items()
          if isinstance(k, str) and isinstance(v, np.ndarray)}


def _tensors(obj, depth: int = 0):
  """The tensor placeholders in a (nested, at most 9 deep) dict."""
  for v in obj.values():
    if isinstance(v, _Tensor):
      yield v
    elif isinstance(v, Mapping) and depth < 8:
      yield from _tensors(v, depth + 1)


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor passed in directly
    value = value.detach().cpu().numpy()
  return np.asarray(value, np.float32)


def _flax_module_path(torch_module: str) -> tuple:
  """``layer1.0.downsample.1`` -> ("layer1_0", "downsample_bn")."""
  parts = torch_module.split(".")
  out = []
  i = 0
  while i < len(parts):
    p = parts[i]
    if p == "downsample" and i + 1 < len(parts):
      if parts[i + 1] not in ("0", "1"):
        raise WeightsError(f"module {torch_module!r}: expected downsample.0 (conv) or "
                           "downsample.1 (BatchNorm) of a ResNet block")
      out.append({"0": "downsample_conv", "1": "downsample_bn"}[parts[i + 1]])
      i += 2
    elif i + 1 < len(parts) and parts[i + 1].isdigit():
      out.append(f"{p}_{parts[i + 1]}")
      i += 2
    else:
      out.append(p)
      i += 1
  return tuple(out)


def _set(tree: dict, path: Iterable[str], value):
  path = tuple(path)
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
    if not isinstance(tree, dict):
      raise WeightsError(f"state_dict module {'/'.join(path)} lies inside a parameter")
  if isinstance(tree.get(path[-1]), dict):
    raise WeightsError(f"state_dict parameter {'/'.join(path)} is also a module")
  tree[path[-1]] = value


def torch_to_flax(state_dict: Mapping[str, Any], skip: Iterable[str] = (),
                  nchw_flatten: Optional[Mapping[str, tuple]] = None) -> Dict[str, dict]:
  """Generic conversion of a conv-net state_dict to ``{"params", "batch_stats"}``.

  Args:
    state_dict: name -> array (numpy or torch tensors).
    skip: top-level torch module names to leave out (e.g. ``("fc",)``).
    nchw_flatten: ``{linear module name: (C, H, W)}`` for linear layers that consume a
      flattened NCHW feature map; their kernels are reordered for NHWC flattening.
  """
  params, stats = {}, {}
  nchw_flatten = dict(nchw_flatten or {})
  bn_like = set()
  for key in state_dict:
    if not isinstance(key, str) or "." not in key:
      raise WeightsError(f"state_dict key {key!r:.80} is not '<module>.<parameter>'; expected "
                         "the state_dict of a conv net (e.g. 'conv1.weight')")
    mod, leaf = key.rsplit(".", 1)
    if leaf == "running_mean":
      bn_like.add(mod)
  bn_leaves = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
  for key, value in state_dict.items():
    mod, leaf = key.rsplit(".", 1)
    if mod.split(".")[0] in skip or leaf == "num_batches_tracked":
      continue
    v = _as_numpy(value)
    path = _flax_module_path(mod)
    if mod in bn_like:
      if leaf not in bn_leaves:
        raise WeightsError(f"don't know how to convert {key}: a BatchNorm holds only "
                           f"{sorted(bn_leaves)}")
      target = stats if leaf.startswith("running_") else params
      _set(target, path + (bn_leaves[leaf],), v)
    elif leaf == "weight" and v.ndim == 4:
      _set(params, path + ("kernel",), np.transpose(v, (2, 3, 1, 0)))
    elif leaf == "weight" and v.ndim == 2:
      if mod in nchw_flatten:
        c, h, w = nchw_flatten[mod]
        v = v.reshape(v.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(v.shape[0], -1)
      _set(params, path + ("kernel",), v.T)
    elif leaf == "weight" and v.ndim == 1 and "prelu" in path[-1]:
      _set(params, path + ("alpha",), v)
    elif leaf == "bias":
      _set(params, path + ("bias",), v)
    else:
      raise WeightsError(f"don't know how to convert {key} with shape {v.shape}")
  return {"params": params, "batch_stats": stats}


def resnet_variables_from_torch(state_dict: Mapping[str, Any],
                                include_fc: bool = True) -> Dict[str, dict]:
  """torchvision ResNet state_dict -> variables of :class:`~focus_jax.nets.encoder.ResNet`."""
  return torch_to_flax(state_dict, skip=() if include_fc else ("fc",))


def iresnet_variables_from_torch(state_dict: Mapping[str, Any]) -> Dict[str, dict]:
  """insightface arcface_torch iResNet state_dict (``backbone.pth``) -> variables of
  :class:`~focus_jax.nets.identity.IResNet`."""
  needed = ("bn2.weight", "fc.weight")
  missing = [k for k in needed if k not in state_dict]
  if missing:
    keys = sorted(state_dict)
    raise WeightsError(f"expected an ArcFace iResNet state_dict (with {', '.join(needed)}), "
                       f"but {', '.join(missing)} is missing; its {len(keys)} keys begin "
                       f"{keys[:4]} (the weights of another network?)")
  bn2, fc = _as_numpy(state_dict["bn2.weight"]), _as_numpy(state_dict["fc.weight"])
  if bn2.ndim != 1 or fc.ndim != 2 or bn2.shape[0] == 0:
    raise WeightsError(f"expected an ArcFace iResNet state_dict: bn2.weight [C] and fc.weight "
                       f"[out, C*H*W], got {bn2.shape} and {fc.shape}")
  channels, fc_in = bn2.shape[0], fc.shape[1]
  side = int(round(np.sqrt(fc_in // channels)))
  if channels * side * side != fc_in:
    raise WeightsError(f"ArcFace fc input {fc_in} is not {channels}·H·W with H = W")
  return torch_to_flax(state_dict, nchw_flatten={"fc": (channels, side, side)})


def check_and_merge(target: dict, source: dict, what: str, skip: Iterable[str] = (),
                    prefix: str = "") -> None:
  """Copies ``source`` leaves into ``target`` in place, checking names and shapes.

  Every leaf of ``target`` (except top-level names in ``skip``) must be present in
  ``source`` with the same shape, and ``source`` must hold nothing else.
  """
  skip = set(skip)
  missing = [k for k in target if k not in source and k not in skip]
  extra = [k for k in source if k not in target]
  if missing or extra:
    raise WeightsError(f"{what}: weights do not match the network at '{prefix or '/'}': "
                       f"missing {sorted(missing)}, unexpected {sorted(extra)}")
  for k in target:
    if k in skip:
      continue
    if isinstance(target[k], Mapping):
      if not isinstance(source[k], Mapping):
        raise WeightsError(f"{what}: {prefix}/{k} should be a module, got an array")
      target[k] = dict(target[k])
      check_and_merge(target[k], source[k], what, prefix=f"{prefix}/{k}")
    else:
      if tuple(np.shape(target[k])) != tuple(np.shape(source[k])):
        raise WeightsError(f"{what}: {prefix}/{k} has shape {np.shape(source[k])} in the "
                           f"weights but {np.shape(target[k])} in the network")
      target[k] = np.asarray(source[k], np.float32)


def variables_like(template: Mapping, converted: Mapping, what: str) -> Dict[str, dict]:
  """Checks ``converted`` against an initialised (or eval_shape-d) ``template``."""
  out = {}
  for col in template:
    tgt = _to_dict(template[col])
    check_and_merge(tgt, converted.get(col, {}), what)
    out[col] = tgt
  return out


def _to_dict(tree):
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree
