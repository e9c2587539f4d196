"""Reader for dlib's serialized ``loss_metric`` ResNet (``dlib_face_recognition_resnet_model_v1.dat``).

No dlib needed: this parses dlib's binary serialization directly (format of
``dlib/serialize.h``, ``dlib/dnn/core.h``, ``layers.h``, ``input.h``, ``loss.h`` and
``dlib/cuda/tensor.h``), so the face-recognition weights load on any machine.

The format, as far as this network needs it:

* integers: one control byte (low nibble = number of bytes, bit 0x80 = negative),
  then that many little-endian magnitude bytes;
* strings: integer length, then the raw bytes; bools: the ASCII character '0' or '1';
* floats/doubles (scalars only): ``float_details``, an integer mantissa then an integer
  exponent, value = mantissa · 2^exponent;
* tensors: version 2, then num_samples, k, nr, nc, then k·nr·nc·n little-endian float32;
  alias tensors (views into a layer's ``params``): version 1 and the four dimensions;
* a network ``add_loss_layer<LOSS, add_layer<L1, add_layer<L2, ... input>>>`` is written
  outermost first, each ``add_layer`` writing ``version, subnetwork, layer details,
  bookkeeping``. Hence the file holds: the loss, then one version number per layer from
  the top down (tag/skip layers contribute only a version), then the input layer, then
  the layer details *bottom-up*, each followed by the add_layer's bookkeeping (three
  bools and two or three, usually empty, tensors).

:func:`read_dlib_net` returns that bottom-up list of layers as plain dicts of numpy
arrays; :func:`focus_jax.nets.identity.dlib_variables_from_layers` maps them onto the
Flax port.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import numpy as np

from focus_jax.nets.weights import WeightsError


class _Stream:
  """A cursor over the file's bytes with dlib's primitive decoders."""

  def __init__(self, data: bytes, path: str):
    self.data = data
    self.pos = 0
    self.path = path

  def fail(self, what: str):
    raise WeightsError(
        f"{self.path}: not a dlib loss_metric ResNet file or truncated ({what} at byte "
        f"{self.pos}). Use dlib_face_recognition_resnet_model_v1.dat from the "
        f"face-recognition-models package (pip install face-recognition-models).")

  def eof(self) -> bool:
    return self.pos >= len(self.data)

  def byte(self) -> int:
    if self.pos >= len(self.data):
      self.fail("unexpected end of file")
    b = self.data[self.pos]
    self.pos += 1
    return b

  def int(self) -> int:
    ctrl = self.byte()
    size = ctrl & 0x0F
    if size == 0 or size > 8 or ctrl & 0x70:
      self.fail(f"bad integer control byte 0x{ctrl:02x}")
    raw = self.data[self.pos:self.pos + size]
    if len(raw) != size:
      self.fail("unexpected end of file")
    self.pos += size
    value = int.from_bytes(raw, "little")
    return -value if ctrl & 0x80 else value

  def peek_int(self) -> int:
    pos = self.pos
    try:
      return self.int()
    finally:
      self.pos = pos

  def string(self) -> str:
    n = self.int()
    if n < 0 or n > 1000:
      self.fail(f"implausible string length {n}")
    raw = self.data[self.pos:self.pos + n]
    self.pos += n
    try:
      return raw.decode("ascii")
    except UnicodeDecodeError:
      self.fail("non-ASCII layer name")

  def peek_string(self) -> str | None:
    pos = self.pos
    try:
      n = self.int()
      if not 0 < n < 64:
        return None
      raw = self.data[self.pos:self.pos + n]
      return raw.decode("ascii") if all(32 <= c < 127 for c in raw) else None
    except WeightsError:
      return None
    finally:
      self.pos = pos

  def bool(self) -> bool:
    c = self.byte()
    if c not in (ord("0"), ord("1")):
      self.fail(f"bad bool byte 0x{c:02x}")
    return c == ord("1")

  def real(self) -> float:
    mantissa = self.int()
    exponent = self.int()
    if abs(exponent) > 1100:
      self.fail(f"float exponent {exponent} out of range")
    return float(np.ldexp(float(mantissa), exponent))

  def tensor(self) -> np.ndarray:
    if self.int() != 2:
      self.fail("unknown tensor version")
    shape = tuple(self.int() for _ in range(4))
    if any(n < 0 for n in shape):
      self.fail(f"negative tensor dimension {shape}")
    count = shape[0] * shape[1] * shape[2] * shape[3]   # Python ints: no overflow
    nbytes = 4 * count
    if self.pos + nbytes > len(self.data):
      self.fail("tensor data past the end of the file")
    arr = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
    self.pos += nbytes
    return arr.astype(np.float32)

  def alias_tensor(self) -> tuple:
    if self.int() != 1:
      self.fail("unknown alias_tensor version")
    shape = tuple(self.int() for _ in range(4))
    if any(n < 0 for n in shape):
      self.fail(f"negative alias_tensor dimension {shape}")
    return shape


def _split(s: _Stream, params: np.ndarray, *shapes) -> List[np.ndarray]:
  """Cuts a layer's flat ``params`` tensor into the alias-tensor views it holds."""
  flat = params.reshape(-1)
  out, offset = [], 0
  for shape in shapes:
    n = shape[0] * shape[1] * shape[2] * shape[3]
    if offset + n > flat.size:
      s.fail(f"alias tensors of {offset + n} values in a params tensor of {flat.size}")
    out.append(flat[offset:offset + n].reshape(shape))
    offset += n
  return out


def _layer_details(s: _Stream) -> Dict[str, Any]:
  """Parses one layer's details, dispatching on its version string."""
  name = s.string()
  if name.startswith("con_"):
    if name not in ("con_4", "con_5", "con_6"):
      s.fail(f"unsupported conv version {name!r}")
    params = s.tensor()
    num_filters = s.int()
    nr, nc, stride_y, stride_x, pad_y, pad_x = (s.int() for _ in range(6))
    filters_shape = s.alias_tensor()
    biases_shape = s.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers.
      s.real()
    use_bias = s.bool() if name in ("con_5", "con_6") else True
    if name == "con_6":
      s.bool()  # use_relu: a fused-relu flag, only set by dlib's layer fusion.
    shapes = [filters_shape] + ([biases_shape] if params.size > np.prod(filters_shape) else [])
    parts = _split(s, params, *shapes)
    if filters_shape[0] != num_filters or filters_shape[2:] != (nr, nc):
      s.fail("conv filter shape disagrees with its header")
    return dict(type="con", kernel=parts[0],  # [out, in, kh, kw]
                bias=parts[1].reshape(-1) if len(parts) > 1 and use_bias else None,
                stride=(stride_y, stride_x), padding=(pad_y, pad_x))
  if name in ("affine_", "affine_2"):
    params = s.tensor()
    gamma_shape = s.alias_tensor()
    beta_shape = s.alias_tensor()
    mode = s.int()
    disabled = s.bool() if name == "affine_2" else False
    gamma, beta = _split(s, params, gamma_shape, beta_shape)
    return dict(type="affine", gamma=gamma.reshape(-1), beta=beta.reshape(-1), mode=mode,
                disabled=disabled)
  if name in ("relu_", "relu_2"):
    disabled = s.bool() if name == "relu_2" else False
    return dict(type="relu", disabled=disabled)
  if name in ("max_pool_2", "avg_pool_2"):
    nr, nc, stride_y, stride_x, pad_y, pad_x = (s.int() for _ in range(6))
    return dict(type=name[:-2], window=(nr, nc), stride=(stride_y, stride_x),
                padding=(pad_y, pad_x))
  if name == "add_prev_":
    return dict(type="add_prev")
  if name in ("fc_2", "fc_3"):
    num_outputs = s.int()
    num_inputs = s.int()
    params = s.tensor()
    weights_shape = s.alias_tensor()
    biases_shape = s.alias_tensor()
    bias_mode = s.int()
    for _ in range(4):
      s.real()
    if name == "fc_3":
      s.bool()
    shapes = [weights_shape] + ([biases_shape] if bias_mode == 0 else [])
    parts = _split(s, params, *shapes)
    if parts[0].size != num_inputs * num_outputs:
      s.fail(f"fc weights of {parts[0].size} values for {num_inputs}x{num_outputs}")
    return dict(type="fc", weights=parts[0].reshape(num_inputs, num_outputs),
                bias=parts[1].reshape(-1) if len(parts) > 1 else None)
  s.fail(f"layer type {name!r} is not supported by this reader")


def read_dlib_net(path: str | os.PathLike) -> Dict[str, Any]:
  """Reads a dlib ``loss_metric`` network file.

  Args:
    path: e.g. ``dlib_face_recognition_resnet_model_v1.dat``.

  Returns:
    dict with ``loss`` (its name and margin/threshold), ``input`` (``mean_rgb``: the
    per-channel means in 0..255 that dlib subtracts, ``size``: (rows, cols)), and
    ``layers``: the list of layers bottom-up (input side first), each a dict with a
    ``type`` in {con, affine, relu, max_pool, avg_pool, add_prev, fc} and its arrays
    (conv kernels [out, in, kh, kw] float32, as stored).

  Raises:
    WeightsError: the file is missing, truncated or not such a network.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise WeightsError(f"cannot read dlib network file {path}: {e}") from e
  return parse_dlib_net(data, path)


def parse_dlib_net(data: bytes, path: str = "<bytes>") -> Dict[str, Any]:
  """:func:`read_dlib_net` of the file's bytes (``path`` names it in errors)."""
  s = _Stream(data, path)
  try:
    return _read_net(s)
  except WeightsError:
    raise
  except (ValueError, IndexError, OverflowError, TypeError, MemoryError) as e:
    s.fail(f"{type(e).__name__}: {' '.join(str(e).split())[:120]}")


def _read_net(s: _Stream) -> Dict[str, Any]:
  if s.int() != 1:
    s.fail("unknown add_loss_layer version")
  loss_name = s.string()
  if loss_name == "loss_metric_2":
    loss = dict(name=loss_name, margin=s.real(), dist_thresh=s.real())
  elif loss_name == "loss_metric_":
    loss = dict(name=loss_name)
  else:
    s.fail(f"expected a loss_metric network, found {loss_name!r}")

  # One version number per layer, top down, until the input layer's name shows up.
  versions = []
  while True:
    versions.append(s.int())
    if (s.peek_string() or "").startswith("input"):
      break
    if len(versions) > 10000:
      s.fail("no input layer found")
  input_name = s.string()
  if input_name != "input_rgb_image_sized":
    s.fail(f"unsupported input layer {input_name!r}")
  mean_rgb = (s.real(), s.real(), s.real())
  size = (s.int(), s.int())

  # add_layer versions >= 2 write a params_grad tensor after cached_output; the
  # bottom layer (input specialisation) writes grad_final and, from version 3, an int.
  top_versions = versions[:-1]
  add_layer_version = max(top_versions) if top_versions else 2
  layers = []

  def bookkeeping(input_level: bool):
    for _ in range(3):
      s.bool()
    s.tensor()  # x_grad
    s.tensor()  # cached_output
    if input_level:
      s.tensor()  # grad_final
      if versions[-1] >= 3:
        s.int()   # sample expansion factor
    elif add_layer_version >= 2:
      s.tensor()  # params_grad

  layers.append(_layer_details(s))
  bookkeeping(True)
  while not s.eof():
    layers.append(_layer_details(s))
    bookkeeping(False)
  return dict(loss=loss, input=dict(mean_rgb=mean_rgb, size=size), layers=layers,
              num_versions=len(versions))


def summary(net: Dict[str, Any]) -> str:
  """One line per layer (debugging aid): type and array shapes."""
  lines = []
  for i, layer in enumerate(net["layers"]):
    info = {k: (v.shape if isinstance(v, np.ndarray) else v) for k, v in layer.items()
            if k != "type"}
    lines.append(f"{i:3d} {layer['type']:9s} {info}")
  return "\n".join(lines)

