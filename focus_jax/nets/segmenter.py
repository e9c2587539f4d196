"""The real-face segmenter: aligned photo crop → probability that a pixel is visible face.

A small UNet (:class:`focus_jax.nets.unet.UNet`, image-only input) trained on real
unoccluded faces with pasted occluders of known masks (``experiments/train_segmenter.py``).
It gives the robust per-image fit a per-pixel prior for "face" against "occluder", which
the model's own residual cannot give on real photos: a blue surgical mask under a
light fitted to it, or skin-coloured hands, look like face to the colour model.

It reads the crop of :func:`focus_jax.app.inference.prepare` (any size; the crop
geometry is the fixed alignment template scaled to that size), resizes it to the
network's ``input_size`` with an antialiasing filter, and resizes the logits back.

Weights file (``.npz``, read with ``allow_pickle=False``): ``meta`` (a JSON string
with ``input_size``, ``base_width``, ``depth``, ``format``) and one array per leaf of
``{'params': ..., 'batch_stats': ...}`` named by its '/'-joined path. :func:`load`
checks every name, shape and value against a freshly built network.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from focus_jax.nets.weights import WeightsError
from focus_jax.nets import unet as unet_lib

FORMAT = "focus-jax-segmenter-1"
# Bound on a weights file, packed and unpacked (the packaged one is ~1 MB / ~1.3 MB).
MAX_BYTES = 64 * 2**20
# The packaged segmenter of the built-in pipeline (experiments/train_segmenter.py).
PACKAGED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "priors", "real_face_segmenter.npz")


@dataclasses.dataclass(frozen=True)
class Segmenter:
  """A segmenter: its network shape and weights.

  Attributes:
    input_size: side (px) the crop is resized to before the UNet (divisible by
      2^(depth-1)).
    base_width, depth: the UNet's shape.
    variables: flax variables ``{'params', 'batch_stats'}`` (None until trained/loaded).
    source: where the weights came from (file path and sha256), for logs.
  """
  input_size: int = 96
  base_width: int = 12
  depth: int = 4
  variables: Optional[dict] = None
  source: str = ""

  def network(self) -> unet_lib.UNet:
    return unet_lib.UNet(base_width=self.base_width, depth=self.depth, dropout_rate=0.0,
                         logit_scale=1.0)

  def init(self, rng) -> dict:
    """Fresh variables for this shape."""
    x = jnp.zeros((1, self.input_size, self.input_size, 3), jnp.float32)
    return self.network().init(rng, x, train=False)


def resize(images, size: int):
  """[B, S, S, C] -> [B, size, size, C] (linear, antialiased when shrinking)."""
  b, _, _, c = images.shape
  return jax.image.resize(images, (b, size, size, c), "linear", antialias=True)


def occluder_logits(seg: Segmenter, variables, crops, train: bool = False):
  """Occluder logits at the network's size.

  Args:
    crops: [B, S, S, 3] aligned crops in [0, 1] (already at ``input_size`` when
      training; any S otherwise).
  Returns:
    [B, input_size, input_size] logits of "occluded" (and, with ``train``, the
    updated batch statistics as a second value).
  """
  x = resize(crops, seg.input_size) if crops.shape[1] != seg.input_size else crops
  x = (x - 0.5) * 2.0
  if train:
    out, upd = seg.network().apply(variables, x, train=True, return_logits=True,
                                   mutable=["batch_stats"])
    return out[..., 0], upd["batch_stats"]
  return seg.network().apply(variables, x, train=False, return_logits=True)[..., 0]


def face_probability(seg: Segmenter, crops, variables=None):
  """P(visible face) per crop pixel: [B, S, S, 3] -> [B, S, S] in (0, 1)."""
  variables = seg.variables if variables is None else variables
  logits = occluder_logits(seg, variables, crops)
  s = crops.shape[1]
  up = jax.image.resize(logits[..., None], (crops.shape[0], s, s, 1), "linear")[..., 0]
  return jax.nn.sigmoid(-up)


# ----------------------------------------------------------------------------- files


def _flat(tree) -> dict:
  """{'params/down1/conv1/kernel': leaf, ...} of a nested variables dict."""
  return traverse_util.flatten_dict(tree, sep="/")


def save(path: str, seg: Segmenter, variables) -> None:
  """Writes ``variables`` of ``seg`` (atomically: a temporary file, then a rename)."""
  arrays = {f"v/{k}": np.asarray(v, np.float32) for k, v in _flat(variables).items()}
  if not all(np.isfinite(a).all() for a in arrays.values()):
    raise ValueError("segmenter.save: refusing to write non-finite weights")
  meta = dict(format=FORMAT, input_size=seg.input_size, base_width=seg.base_width,
              depth=seg.depth)
  tmp = f"{path}.tmp{os.getpid()}.npz"
  try:
    np.savez_compressed(tmp, meta=np.asarray(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load(path: str) -> Segmenter:
  """Reads a segmenter file and checks it against the network it describes.

  Raises:
    WeightsError: missing/unreadable file, wrong format, a missing, extra,
      misshapen or non-finite array (the message names the file and the array).
  """
  import hashlib  # pylint: disable=import-outside-toplevel
  import zipfile  # pylint: disable=import-outside-toplevel
  try:
    if os.path.getsize(path) > MAX_BYTES:
      raise ValueError(f"larger than {MAX_BYTES >> 20} MiB")
    with zipfile.ZipFile(path) as zf:   # unpacked sizes, before numpy allocates anything
      if sum(i.file_size for i in zf.infolist()) > MAX_BYTES:
        raise ValueError(f"unpacks to more than {MAX_BYTES >> 20} MiB")
    with open(path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    with np.load(path, allow_pickle=False) as z:
      files = {k: z[k] for k in z.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise WeightsError(f"{path}: cannot read the segmenter weights ({e})") from e
  try:
    meta = json.loads(str(files.pop("meta")))
    if meta.get("format") != FORMAT:
      raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
    sizes = {k: int(meta[k]) for k in ("input_size", "base_width", "depth")}
    if not (1 <= sizes["depth"] <= 6 and 1 <= sizes["base_width"] <= 128
            and 8 <= sizes["input_size"] <= 512
            and sizes["input_size"] % 2 ** (sizes["depth"] - 1) == 0):
      raise ValueError(f"implausible network shape {sizes}")
  except (KeyError, ValueError, TypeError) as e:
    raise WeightsError(f"{path}: not a focus-jax segmenter file ({e})") from e
  seg = Segmenter(**sizes)
  expected = _flat(jax.eval_shape(seg.init, jax.random.PRNGKey(0)))
  got = {k[2:]: v for k, v in files.items() if k.startswith("v/")}
  extra = sorted(set(files) - {f"v/{k}" for k in expected})
  if extra:
    raise WeightsError(f"{path}: unexpected array {extra[0]!r}")
  for name, want in expected.items():
    if name not in got:
      raise WeightsError(f"{path}: missing array v/{name}")
    if tuple(got[name].shape) != tuple(want.shape):
      raise WeightsError(f"{path}: v/{name} has shape {tuple(got[name].shape)}, expected "
                         f"{tuple(want.shape)}")
    if got[name].dtype.kind != "f" or not np.isfinite(got[name]).all():
      raise WeightsError(f"{path}: v/{name} is not finite floating point")
  variables = traverse_util.unflatten_dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in got.items()}, sep="/")
  return dataclasses.replace(seg, variables=variables, source=f"{path} (sha256 {digest[:12]})")


def packaged() -> Optional[Segmenter]:
  """The packaged segmenter, or None when the package was built without it."""
  return load(PACKAGED) if os.path.exists(PACKAGED) else None
