"""Face-recognition features for the perceptual, preserve and dist losses.

Two networks, each with its landmark alignment (:mod:`focus_jax.nets.align`):

* ``"dlib"`` (default): dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1
  .dat``, 29 conv layers, 128-D metric embedding; LFW 99.38 %). Its weights install from
  PyPI (``pip install face-recognition-models``) and are read without dlib
  (:mod:`focus_jax.nets.dlib_reader`). Crop: dlib's 150×150 face chip (padding 0.25).
* ``"arcface"``: insightface's ArcFace iResNet-50 (arcface_torch ``ms1mv3_arcface_r50``
  ``backbone.pth``, what the FOCUS reference used), 512-D embedding. Weights are not on
  PyPI: download ``backbone.pth`` and pass its path. Crop: insightface's 112×112
  five-point alignment.

Features (:class:`IdentityFeatures`):

* ``embedding``: [B, D] L2-normalised identity embedding (perceptual loss: 1 − cosine);
* ``shallow``: [B, h, w, c] output of the first residual stage — ArcFace ``layer1``
  ([B, 56, 56, 64], what the reference's ``is_shallow`` returns) or dlib's first level
  ([B, 35, 35, 32]) — for the preserve and dist losses (per-pixel cosine over channels).
  Not normalised here. (The reference L2-normalises that map along its *width* axis —
  ``F.normalize(dim=-1)`` on NCHW — before the channel cosine; reproduce that in the
  loss if wanted.)

Usage::

    net = identity.load("dlib")                   # or load("arcface", weights="backbone.pth")
    feats = net(images, landmarks)                # images [B,H,W,3] in [0,1], landmarks [B,68,2] px
    loss = 1 - jnp.sum(feats.embedding * other.embedding, -1)

:class:`IdentityNet` is a pytree (its weights are leaves, the configuration is static),
so pass it into ``jax.jit``/``pmap``-ed functions as an argument.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.nets import align, convert, dlib_reader, layers, weights as weights_lib
from focus_jax.nets.weights import WeightsError

# ------------------------------------------------------------------ ArcFace iResNet


class IBasicBlock(nn.Module):
  """insightface's improved residual block: BN → 3×3 → BN → PReLU → 3×3 (stride) → BN."""
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    bn = lambda name: layers.batch_norm(False, name)
    y = bn("bn1")(x)
    y = layers.conv(self.features, 3, 1, 1, name="conv1")(y)
    y = layers.PReLU(name="prelu")(bn("bn2")(y))
    y = layers.conv(self.features, 3, self.stride, 1, name="conv2")(y)
    y = bn("bn3")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn("downsample_bn")(layers.conv(self.features, 1, self.stride, name="downsample_conv")(x))
    return x + y


class IResNet(nn.Module):
  """ArcFace iResNet (inference; BatchNorm uses its running statistics).

  Attributes:
    stage_sizes: blocks per stage: (3, 4, 14, 3) = iResNet-50, (2, 2, 2, 2) = -18, ...
    widths: channels per stage (64, 128, 256, 512); the stem has widths[0].
    num_features: embedding size (512).

  Call: ``x [B, 112, 112, 3]`` normalised to [-1, 1] -> dict(``embedding`` [B, F],
  ``shallow`` [B, 56, 56, widths[0]] = output of ``layer1``).
  """
  stage_sizes: Sequence[int] = (3, 4, 14, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  num_features: int = 512

  @nn.compact
  def __call__(self, x):
    x = layers.conv(self.widths[0], 3, 1, 1, name="conv1")(x)
    x = layers.PReLU(name="prelu")(layers.batch_norm(False, "bn1")(x))
    shallow = None
    for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = IBasicBlock(w, 2 if j == 0 else 1, name=f"layer{i + 1}_{j}")(x)
      if i == 0:
        shallow = x
    x = layers.batch_norm(False, "bn2")(x)
    x = x.reshape(x.shape[0], -1)    # NHWC flattening; the converter permutes fc to match.
    x = nn.Dense(self.num_features, name="fc")(x)
    x = layers.batch_norm(False, "features")(x)
    return dict(embedding=x, shallow=shallow)


# ------------------------------------------------------------------ dlib ResNet


class Affine(nn.Module):
  """dlib's ``affine`` layer: frozen per-channel scale and shift (a folded BatchNorm)."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return x * scale + bias


def _pad_add(a, b):
  """dlib's ``add_prev``: sum of two maps zero-padded (bottom/right, extra channels) to
  the larger shape."""
  shape = tuple(max(p, q) for p, q in zip(a.shape, b.shape))

  def pad(t):
    return jnp.pad(t, [(0, s - d) for s, d in zip(shape, t.shape)])

  return pad(a) + pad(b)


class DlibBlock(nn.Module):
  """dlib ``ares`` / ``ares_down``: relu(block(x) ⊕ shortcut), block = con→affine→relu→
  con→affine; the down version strides the first conv (no padding) and shortcuts
  through a 2×2 average pool."""
  features: int
  down: bool = False

  @nn.compact
  def __call__(self, x):
    stride, pad = (2, 0) if self.down else (1, 1)
    y = layers.conv(self.features, 3, stride, pad, use_bias=True, name="conv1")(x)
    y = nn.relu(Affine(name="affine1")(y))
    y = layers.conv(self.features, 3, 1, 1, use_bias=True, name="conv2")(y)
    y = Affine(name="affine2")(y)
    shortcut = nn.avg_pool(x, (2, 2), (2, 2)) if self.down else x
    return nn.relu(_pad_add(y, shortcut))


# (width, downsampling block first?, number of plain blocks) per dlib "level", input side first.
DLIB_LEVELS = ((32, False, 3), (64, True, 3), (128, True, 2), (256, True, 2), (256, True, 0))
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)


class DlibResNet(nn.Module):
  """dlib's face-recognition ResNet (``anet_type`` of dlib's dnn_face_recognition_ex).

  Attributes:
    levels: ((width, down, n_plain), ...) as :data:`DLIB_LEVELS`; scale the widths for a
      tiny test variant.
    embedding_size: 128.
    mean_rgb: per-channel means (0..255) the input layer subtracts.

  Call: ``x [B, 150, 150, 3]`` RGB in [0, 1] -> dict(``embedding`` [B, 128] (dlib's
  descriptor, unnormalised), ``shallow`` [B, 35, 35, 32] = output of the first level).
  """
  levels: Sequence[Sequence[Any]] = DLIB_LEVELS
  embedding_size: int = 128
  mean_rgb: Sequence[float] = DLIB_MEAN_RGB

  @nn.compact
  def __call__(self, x):
    x = (255.0 * x - jnp.asarray(self.mean_rgb, x.dtype)) / 256.0
    x = layers.conv(self.levels[0][0], 7, 2, 0, use_bias=True, name="conv1")(x)
    x = nn.relu(Affine(name="affine1")(x))
    x = layers.max_pool(x, 3, 2, 0)
    shallow = None
    for i, (width, down, n_plain) in enumerate(self.levels):
      if down:
        x = DlibBlock(width, True, name=f"level{i}_down")(x)
      for j in range(n_plain):
        x = DlibBlock(width, name=f"level{i}_{j}")(x)
      if i == 0:
        shallow = x
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.embedding_size, use_bias=False, name="fc")(x)
    return dict(embedding=x, shallow=shallow)


def dlib_variables_from_file(path=None) -> dict:
  """Reads dlib's .dat into variables of :class:`DlibResNet` (default architecture)."""
  net = dlib_reader.read_dlib_net(weights_lib.resolve_dlib_weights(path))
  return dlib_variables_from_layers(net, DlibResNet())


def dlib_variables_from_layers(net: dict, module: DlibResNet) -> dict:
  """Maps :func:`~focus_jax.nets.dlib_reader.read_dlib_net`'s layer list onto ``module``."""
  stream = list(net["layers"])
  pos = [0]

  def take(kind, **expect):
    if pos[0] >= len(stream):
      raise WeightsError("dlib network has fewer layers than the DlibResNet architecture")
    layer = stream[pos[0]]
    pos[0] += 1
    if layer["type"] != kind or any(layer.get(k) != v for k, v in expect.items()):
      raise WeightsError(f"dlib layer {pos[0] - 1} is {layer['type']} "
                         f"{ {k: layer.get(k) for k in expect} }, expected {kind} {expect}: "
                         f"the file is not dlib's face-recognition ResNet")
    return layer

  def conv(stride, pad):
    layer = take("con", stride=(stride, stride), padding=(pad, pad))
    return dict(kernel=np.transpose(layer["kernel"], (2, 3, 1, 0)), bias=layer["bias"])

  def affine():
    layer = take("affine")
    return dict(scale=layer["gamma"], bias=layer["beta"])

  params = {"conv1": conv(2, 0), "affine1": affine()}
  take("relu")
  take("max_pool", window=(3, 3), stride=(2, 2))
  for i, (width, down, n_plain) in enumerate(module.levels):
    names = ([f"level{i}_down"] if down else []) + [f"level{i}_{j}" for j in range(n_plain)]
    for name in names:
      is_down = name.endswith("_down")
      block = {"conv1": conv(2 if is_down else 1, 0 if is_down else 1), "affine1": affine()}
      take("relu")
      block["conv2"] = conv(1, 1)
      block["affine2"] = affine()
      if is_down:
        take("avg_pool", window=(2, 2), stride=(2, 2))
      take("add_prev")
      take("relu")
      params[name] = block
  take("avg_pool", window=(0, 0))  # avg_pool_everything
  params["fc"] = dict(kernel=take("fc")["weights"])
  if pos[0] != len(stream):
    raise WeightsError(f"dlib network has {len(stream) - pos[0]} more layers than expected")
  mean_rgb = tuple(net["input"]["mean_rgb"])
  if not np.allclose(mean_rgb, DLIB_MEAN_RGB, atol=1e-3):
    raise WeightsError(f"dlib input means {mean_rgb} differ from {DLIB_MEAN_RGB}")
  return {"params": params}


# ------------------------------------------------------------------ the wrapper


@flax.struct.dataclass
class IdentityFeatures:
  """embedding: [B, D] unit-norm; shallow: [B, h, w, c] first-stage feature map."""
  embedding: jnp.ndarray
  shallow: jnp.ndarray


@flax.struct.dataclass
class IdentityNet:
  """A face-recognition network with its alignment: a pytree (weights = leaves).

  Attributes:
    variables: the Flax variables of ``module``.
    module: :class:`DlibResNet` or :class:`IResNet` (static).
    kind: "dlib" or "arcface" (static): picks crop and input normalisation.
    crop_size: side of the aligned crop in pixels (150 dlib, 112 ArcFace).
    unit_input: ArcFace only — feed the crop in [0, 1] instead of [-1, 1]. The FOCUS
      reference does this (its ``preprocess`` result is overwritten); keep False for the
      normalisation ArcFace was trained with.
    landmark_gradient: let gradients flow into the landmarks through the alignment
      (the reference computes the alignment on detached landmarks: False).
  """
  variables: Any
  module: nn.Module = flax.struct.field(pytree_node=False)
  kind: str = flax.struct.field(pytree_node=False, default="dlib")
  crop_size: int = flax.struct.field(pytree_node=False, default=150)
  unit_input: bool = flax.struct.field(pytree_node=False, default=False)
  landmark_gradient: bool = flax.struct.field(pytree_node=False, default=False)

  def transform(self, landmarks) -> jnp.ndarray:
    """[B, 68, 2] landmarks (pixels) -> [B, 2, 3] crop-to-image affine."""
    if not self.landmark_gradient:
      landmarks = jax.lax.stop_gradient(landmarks)
    if self.kind == "dlib":
      return align.dlib_chip_transform(landmarks, self.crop_size, 0.25)
    return align.arcface_transform(landmarks, self.crop_size)

  def crop(self, images, landmarks) -> jnp.ndarray:
    """[B, H, W, 3] images in [0, 1] -> [B, S, S, 3] aligned crops."""
    return align.warp_affine(images, self.transform(landmarks), self.crop_size)

  def _forward(self, crops) -> dict:
    if self.kind == "arcface" and not self.unit_input:
      crops = 2.0 * crops - 1.0     # ArcFace was trained on (x - 0.5) / 0.5
    return self.module.apply(self.variables, crops)

  def features_of_crops(self, crops) -> IdentityFeatures:
    """Features of already aligned crops [B, S, S, 3] in [0, 1]."""
    out = self._forward(crops)
    emb = out["embedding"]
    emb = emb / jnp.sqrt(jnp.sum(emb * emb, axis=-1, keepdims=True) + 1e-12)
    return IdentityFeatures(embedding=emb, shallow=out["shallow"])

  def __call__(self, images, landmarks) -> IdentityFeatures:
    """images [B, H, W, 3] in [0, 1], landmarks [B, 68, 2] px -> :class:`IdentityFeatures`."""
    return self.features_of_crops(self.crop(images, landmarks))

  def descriptor(self, images, landmarks) -> jnp.ndarray:
    """[B, D] raw (unnormalised) embedding, e.g. dlib's 128-D face descriptor."""
    return self._forward(self.crop(images, landmarks))["embedding"]


def load_dlib(weights: Optional[str | os.PathLike] = None, **kwargs) -> IdentityNet:
  """dlib's face-recognition ResNet with real weights.

  Args:
    weights: path of ``dlib_face_recognition_resnet_model_v1.dat``; default
      ``$FOCUS_JAX_DLIB_FACE_MODEL`` or the ``face-recognition-models`` package's copy.
    **kwargs: IdentityNet options (``landmark_gradient``).

  Raises:
    WeightsError: no weights found (the message says how to install them).
  """
  variables = jax.tree_util.tree_map(jnp.asarray, dlib_variables_from_file(weights))
  return IdentityNet(variables=variables, module=DlibResNet(), kind="dlib", crop_size=150,
                     **kwargs)


def load_arcface(weights: Optional[str | os.PathLike] = None,
                 stage_sizes: Sequence[int] = (3, 4, 14, 3), **kwargs) -> IdentityNet:
  """ArcFace iResNet (default -50) from an insightface arcface_torch ``backbone.pth``.

  Args:
    weights: path of ``backbone.pth``; default ``$FOCUS_JAX_ARCFACE_WEIGHTS``.
    stage_sizes: blocks per stage of the checkpoint's iResNet ((3, 4, 14, 3) = r50).
    **kwargs: IdentityNet options (``unit_input``, ``landmark_gradient``).
  """
  path = weights_lib.resolve_file(weights, weights_lib.ENV_ARCFACE,
                                  "ArcFace iResNet weights (backbone.pth)",
                                  weights_lib.ARCFACE_HOW)
  module = IResNet(stage_sizes=tuple(stage_sizes))
  converted = convert.iresnet_variables_from_torch(convert.load_torch_state_dict(path))
  template = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 112, 112, 3))))
  variables = convert.variables_like(template, converted, f"ArcFace weights {path}")
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  return IdentityNet(variables=variables, module=module, kind="arcface", crop_size=112,
                     **kwargs)


def load(kind: str = "dlib", weights: Optional[str | os.PathLike] = None,
         **kwargs) -> IdentityNet:
  """``load("dlib")`` (default, weights from PyPI) or ``load("arcface", weights=...)``."""
  if kind == "dlib":
    return load_dlib(weights, **kwargs)
  if kind == "arcface":
    return load_arcface(weights, **kwargs)
  raise ValueError(f"unknown identity network {kind!r}: use 'dlib' or 'arcface'")


def random_identity(kind: str, key, module: Optional[nn.Module] = None,
                    crop_size: Optional[int] = None, **kwargs) -> IdentityNet:
  """An IdentityNet with random weights (tests, benchmarks). ``module`` may be a tiny
  variant; ``crop_size`` defaults to the network's native size."""
  if module is None:
    module = DlibResNet() if kind == "dlib" else IResNet()
  size = crop_size or (150 if kind == "dlib" else 112)
  variables = jax.jit(module.init)(key, jnp.zeros((1, size, size, 3)))
  return IdentityNet(variables=variables, module=module, kind=kind, crop_size=size, **kwargs)
