"""Builders of hand-made (possibly hostile) files for the security and fuzz tests.

``.pth`` files are written opcode by opcode, without torch, so a test can declare any
storage size, offset, size or stride — the fields a crafted checkpoint controls.
"""

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _int(v: int) -> bytes:
  """LONG1: any Python int (negative and huge ones too)."""
  raw = int(v).to_bytes(max(1, (int(v).bit_length() + 8) // 8), "little", signed=True)
  return b"\x8a" + bytes([len(raw)]) + raw


def _str(s: str) -> bytes:
  raw = s.encode("utf-8")
  return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def _tuple(items) -> bytes:
  return b"(" + b"".join(items) + b"t"


def _ordered_dict() -> bytes:
  return _global("collections", "OrderedDict") + b")R"


def tensor_pickle(tensors, legacy=False) -> bytes:
  """The data.pkl of a state dict.

  Args:
    tensors: list of dicts with ``name``, ``key`` (storage key), ``numel`` (declared
      storage size), ``offset``, ``size``, ``stride`` and optionally ``storage_type``
      (default FloatStorage) and ``storage`` (raw pickle bytes to use instead of the
      persistent storage reference, e.g. ``_int(5)``).
    legacy: the legacy format's storage references (one more field: the view).
  """
  out = b"\x80\x02" + _ordered_dict()
  for t in tensors:
    storage = t.get("storage")
    if storage is None:
      storage = _tuple([_str("storage"), _global("torch", t.get("storage_type", "FloatStorage")),
                        _str(t["key"]), _str("cpu"), _int(t["numel"])]
                       + ([b"N"] if legacy else [])) + b"Q"
    args = _tuple([storage, _int(t["offset"]), _tuple([_int(v) for v in t["size"]]),
                   _tuple([_int(v) for v in t["stride"]]), b"\x89", _ordered_dict()])
    out += _str(t["name"]) + _global("torch._utils", "_rebuild_tensor_v2") + args + b"R" + b"s"
  return out + b"."


def write_pth_zip(path, tensors, storages, pickle_bytes=None) -> str:
  """A zip-format .pth: ``storages`` maps key -> raw little-endian bytes."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", tensor_pickle(tensors) if pickle_bytes is None else pickle_bytes)
    z.writestr("archive/byteorder", "little")
    for key, raw in storages.items():
      z.writestr(f"archive/data/{key}", raw)
    z.writestr("archive/version", "3\n")
  return str(path)


def legacy_bytes(tensors, storages, counts=None) -> bytes:
  """A legacy-format .pth stream; ``counts`` overrides the element count written before
  each storage's bytes (default: the bytes' float32 count)."""
  out = pickle.dumps(LEGACY_MAGIC, 2) + pickle.dumps(1001, 2)
  out += pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2)
  out += tensor_pickle(tensors, legacy=True) + pickle.dumps(list(storages), 2)
  for key, raw in storages.items():
    count = len(raw) // 4 if counts is None else counts[key]
    out += struct.pack("<q", count) + raw
  return out


def one_tensor(numel=4, offset=0, size=(4,), stride=(1,), name="w", data=None):
  """(tensors, storages) of a single float32 tensor over a storage of ``numel`` values."""
  data = np.arange(numel, dtype="<f4") if data is None else np.asarray(data, "<f4")
  return ([dict(name=name, key="0", numel=numel, offset=offset, size=size, stride=stride)],
          {"0": data.tobytes()})


# Imports focus_jax.nets.convert without focus_jax.nets/__init__ (which loads jax and
# flax): the child process then starts in well under a second.
_CHILD = r"""
import json, sys, types
import focus_jax
pkg = types.ModuleType("focus_jax.nets")
pkg.__path__ = [focus_jax.__path__[0] + "/nets"]
sys.modules["focus_jax.nets"] = pkg
from focus_jax.nets import convert
try:
  sd = convert.load_torch_state_dict(sys.argv[1])
  print(json.dumps(dict(ok={k: [list(v.shape), v.ravel()[:8].tolist()] for k, v in sd.items()})))
except Exception as e:
  print(json.dumps(dict(error=type(e).__name__, message=str(e))))
"""


def load_pth_in_child(path, timeout=120):
  """Reads ``path`` with load_torch_state_dict in a child process, so that a crash
  (SIGSEGV) fails one test instead of killing the run. Returns (returncode, stdout)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                        text=True, timeout=timeout, cwd=root)
  return proc.returncode, proc.stdout.strip() + proc.stderr.strip()[-2000:]


def npy_bytes(array, allow_pickle=True) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=allow_pickle)
  return buf.getvalue()
