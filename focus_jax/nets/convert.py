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


class _StorageType:
  def __init__(self, name):
    self.name = name


class _Storage:
  """A storage placeholder: filled with a flat numpy array once its bytes are read."""

  def __init__(self, key, dtype, numel):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.array = None

  def fill(self, raw: bytes):
    if self.dtype == "bfloat16":
      u16 = np.frombuffer(raw, "<u2", self.numel)
      self.array = (u16.astype(np.uint32) << 16).view(np.float32)
    else:
      self.array = np.frombuffer(raw, np.dtype(self.dtype).newbyteorder("<"), self.numel)

  @property
  def itemsize(self):
    return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Tensor:
  """A tensor placeholder (``torch._utils._rebuild_tensor_v2``'s arguments)."""

  def __init__(self, storage, offset, size, stride, *unused):
    self.storage, self.offset = storage, offset
    self.size, self.stride = tuple(size), tuple(stride)

  def materialize(self) -> np.ndarray:
    flat = self.storage.array
    if not self.size:
      return np.array(flat[self.offset], copy=True)
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                           strides=tuple(st * itemsize for st in self.stride))
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
    raise WeightsError(f"{self.path}: unexpected object {module}.{name} in the checkpoint; "
                       f"expected a plain state_dict of tensors")

  def persistent_load(self, pid):
    if pid[0] != "storage" or len(pid) < 5:
      raise WeightsError(f"{self.path}: unsupported persistent object {pid[0]!r}")
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
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
    unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pkls[0])), path)
    obj = unpickler.load()
    for key, storage in unpickler.storages.items():
      storage.fill(archive.read(f"{prefix}data/{key}"))
  return obj


class _NoGlobalsUnpickler(pickle.Unpickler):
  def __init__(self, fileobj, path):
    super().__init__(fileobj)
    self.path = path

  def find_class(self, module, name):
    raise WeightsError(f"{self.path}: unexpected object {module}.{name}; not a checkpoint")


def _read_legacy(path: str):
  """torch.save's pre-1.6 format: magic, protocol, sys_info pickles, the object pickle,
  a pickle of storage keys, then per storage an int64 element count and its bytes."""
  with open(path, "rb") as f:
    header = _NoGlobalsUnpickler(f, path)
    if header.load() != _LEGACY_MAGIC:
      raise WeightsError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    header.load()   # protocol version
    header.load()   # sys_info
    unpickler = _StateDictUnpickler(f, path)
    obj = unpickler.load()
    keys = _NoGlobalsUnpickler(f, path).load()
    for key in keys:
      storage = unpickler.storages[str(key)]
      count = int(np.frombuffer(f.read(8), "<i8")[0])
      storage.numel = count
      storage.fill(f.read(count * storage.itemsize))
  return obj


def _materialize(obj):
  if isinstance(obj, _Tensor):
    return obj.materialize()
  if isinstance(obj, Mapping):
    return {k: _materialize(v) for k, v in obj.items()}
  return obj


def load_torch_state_dict(path: str | os.PathLike) -> Dict[str, np.ndarray]:
  """Reads a ``torch.save``-d state_dict into ``{name: numpy array}``, without torch.

  Both of torch.save's formats are read (zip since PyTorch 1.6, and the older "legacy"
  stream, in which e.g. torchvision's original ImageNet weights were saved). Accepts a
  bare state_dict or a checkpoint dict holding one under ``state_dict`` / ``model``;
  strips a DataParallel ``module.`` prefix.

  Raises:
    WeightsError: the file is missing, not a checkpoint, or holds more than tensors.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise WeightsError(f"weights file not found: {path}")
  try:
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  except WeightsError:
    raise
  except Exception as e:  # truncated or corrupt pickle / archive
    raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
  obj = _materialize(obj)
  for key in ("state_dict", "model"):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise WeightsError(f"{path}: expected a state_dict (a dict of tensors), got {type(obj)}")
  return {re.sub(r"^module\.", "", k): np.asarray(v) for k, v in obj.items()
          if isinstance(v, np.ndarray)}


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
    mod, leaf = key.rsplit(".", 1)
    if leaf == "running_mean":
      bn_like.add(mod)
  for key, value in state_dict.items():
    mod, leaf = key.rsplit(".", 1)
    if mod.split(".")[0] in skip or leaf == "num_batches_tracked":
      continue
    v = _as_numpy(value)
    path = _flax_module_path(mod)
    if mod in bn_like:
      target, name = {"weight": (params, "scale"), "bias": (params, "bias"),
                      "running_mean": (stats, "mean"), "running_var": (stats, "var")}[leaf]
      _set(target, path + (name,), v)
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
  channels = _as_numpy(state_dict["bn2.weight"]).shape[0]
  fc_in = _as_numpy(state_dict["fc.weight"]).shape[1]
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
