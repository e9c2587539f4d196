"""The image encoder: a ResNet regressing 3DMM coefficients, pose and SH light.

Layout of the regressed vector (the FOCUS reference's, ``encoder/encoder.py`` there)::

    [ shape (Ks) | expression (Ke) | albedo (Ka) | pose (6) | light (27) ]

pose = 3 Euler angles (rad) then 3 translation (mm) in the conventions of
:mod:`focus_jax.render.camera`; light = 27 SH numbers R(9), G(9), B(9)
(:func:`focus_jax.render.shading.light_from_vector`).

The raw head output is rescaled as the reference does before rendering: albedo × 3,
angles × 0.3, translation z × 0.005 (x and y unscaled), and the light is added to the
default ambient light (DC 0.7·2π). Components beyond the reference's truncation
(shape 80, expression 64, albedo 80) are switched off: they are always zero. The head
is zero-initialised, so an untrained encoder predicts the mean face, zero pose and the
default light whatever the image.

Images are ``[B, H, W, 3]`` float in [0, 1] (the reference feeds them without ImageNet
normalisation; ``imagenet_normalize=True`` adds it). Any size works; 224² is the
reference's.

Initialisation from ImageNet: :func:`encoder_variables_from_torchvision` (via
:mod:`focus_jax.nets.convert`) turns a torchvision ResNet ``state_dict`` into the
trunk's Flax variables.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import flax.core
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.morphable.model import REFERENCE_TRUNCATION
from focus_jax.nets import layers
from focus_jax.render import shading

# depth -> (block type, blocks per stage), as torchvision.
RESNET_CONFIGS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NUM_POSE = 6
NUM_LIGHT = 27


class BasicBlock(nn.Module):
  """ResNet-18/34 block: 3×3 conv (stride) → BN → ReLU → 3×3 conv → BN, + shortcut."""
  features: int
  stride: int = 1
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: layers.batch_norm(train, name, self.bn_axis_name)
    y = layers.conv(self.features, 3, self.stride, 1, name="conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = layers.conv(self.features, 3, 1, 1, name="conv2")(y)
    y = bn("bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = layers.conv(self.features, 1, self.stride, 0, name="downsample_conv")(x)
      x = bn("downsample_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """ResNet-50 block (torchvision v1.5, stride on the 3×3): 1×1 → 3×3 → 1×1 (4× wide)."""
  features: int
  stride: int = 1
  expansion: int = 4
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: layers.batch_norm(train, name, self.bn_axis_name)
    out_features = self.features * self.expansion
    y = nn.relu(bn("bn1")(layers.conv(self.features, 1, name="conv1")(x)))
    y = nn.relu(bn("bn2")(layers.conv(self.features, 3, self.stride, 1, name="conv2")(y)))
    y = bn("bn3")(layers.conv(out_features, 1, name="conv3")(y))
    if self.stride != 1 or x.shape[-1] != out_features:
      x = layers.conv(out_features, 1, self.stride, 0, name="downsample_conv")(x)
      x = bn("downsample_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """torchvision-compatible ResNet (18/34/50/101), NHWC.

  Attributes:
    depth: 18, 34, 50 or 101 (picks block type and blocks per stage).
    width: channels of the stem and first stage (64 in torchvision; 8 or 16 make a
      tiny CPU test variant); stage i has width·2^i (×4 for bottlenecks).
    stage_sizes: override of the blocks per stage (e.g. (1, 1) for a 2-stage toy).
    num_outputs: size of the final dense layer ``fc``; None returns the pooled features.
    head_init: initialiser of ``fc``'s kernel and bias (zeros for the face encoder).
    bn_axis_name: pmap axis over which BatchNorm statistics are averaged, or None.

  Call: ``x [B, H, W, 3] -> [B, num_outputs]`` (or ``[B, C]`` pooled features).
  Parameter names mirror torchvision's (``layer1_0/conv1`` ⇔ ``layer1.0.conv1``).
  """
  depth: int = 50
  width: int = 64
  stage_sizes: Optional[Sequence[int]] = None
  num_outputs: Optional[int] = 1000
  head_init: Any = None
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    kind, default_sizes = RESNET_CONFIGS[self.depth]
    sizes = tuple(self.stage_sizes) if self.stage_sizes is not None else default_sizes
    x = layers.conv(self.width, 7, 2, 3, name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, "bn1", self.bn_axis_name)(x))
    x = layers.max_pool(x, 3, 2, 1)
    block = Bottleneck if kind == "bottleneck" else BasicBlock
    for i, n in enumerate(sizes):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        x = block(self.width * 2**i, stride, bn_axis_name=self.bn_axis_name,
                  name=f"layer{i + 1}_{j}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_outputs is None:
      return x
    if self.head_init is not None:
      return nn.Dense(self.num_outputs, kernel_init=self.head_init, bias_init=self.head_init,
                      name="fc")(x)
    # torchvision's nn.Linear default: U(±1/sqrt(fan_in)) for kernel and bias.
    bound = 1.0 / np.sqrt(x.shape[-1])

    def uniform(key, shape, dtype=jnp.float32):
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nn.Dense(self.num_outputs, kernel_init=uniform, bias_init=uniform, name="fc")(x)


@flax.struct.dataclass
class EncoderOutput:
  """What the encoder predicts, scaled and truncated, ready for the renderer.

  Attributes:
    shape: [B, Ks] shape coefficients (standard normal units), zero beyond truncation.
    expression: [B, Ke] expression coefficients, zero beyond truncation.
    albedo: [B, Ka] albedo coefficients (already × albedo_scale), zero beyond truncation.
    angles: [B, 3] Euler angles, radians (already × rotation_scale).
    translation: [B, 3] camera translation, mm (z already × depth_scale).
    light: [B, 9, 3] SH light = default ambient light + predicted offset.
    raw: [B, D] the unscaled head output (D = Ks + Ke + Ka + 6 + 27).
  """
  shape: jnp.ndarray
  expression: jnp.ndarray
  albedo: jnp.ndarray
  angles: jnp.ndarray
  translation: jnp.ndarray
  light: jnp.ndarray
  raw: jnp.ndarray


class FaceEncoder(nn.Module):
  """ResNet + zero-initialised head → :class:`EncoderOutput`.

  Attributes:
    num_shape, num_expression, num_albedo: component counts of the morphable model
      (defaults: BFM 2017, 199 / 100 / 199); the head regresses all of them.
    active_shape, active_expression, active_albedo: how many leading components are
      used (the rest are forced to zero); defaults = the reference's 80 / 64 / 80.
      None uses all.
    depth, width, stage_sizes, bn_axis_name: the trunk (see :class:`ResNet`).
    imagenet_normalize: normalise inputs with ImageNet mean/std (the reference does not).
    albedo_scale, rotation_scale, depth_scale: the reference's output scalings.
    translation_scale: mm per raw head unit of the x and y translation (1 = the
      reference; z uses ``depth_scale``). Training configs raise both when the
      reference's units are too fine to learn in few steps (focus_jax.train.config).

  Call: ``images [B, H, W, 3] in [0, 1], train: bool -> EncoderOutput``. In training
  mode BatchNorm updates ``batch_stats`` (pass ``mutable=["batch_stats"]``).
  """
  num_shape: int = 199
  num_expression: int = 100
  num_albedo: int = 199
  active_shape: Optional[int] = REFERENCE_TRUNCATION["shape"]
  active_expression: Optional[int] = REFERENCE_TRUNCATION["expression"]
  active_albedo: Optional[int] = REFERENCE_TRUNCATION["albedo"]
  depth: int = 50
  width: int = 64
  stage_sizes: Optional[Sequence[int]] = None
  bn_axis_name: Optional[str] = None
  imagenet_normalize: bool = False
  albedo_scale: float = 3.0
  rotation_scale: float = 0.3
  depth_scale: float = 0.005
  translation_scale: float = 1.0

  @property
  def num_outputs(self) -> int:
    return self.num_shape + self.num_expression + self.num_albedo + NUM_POSE + NUM_LIGHT

  def split_sizes(self) -> Dict[str, int]:
    return dict(shape=self.num_shape, expression=self.num_expression, albedo=self.num_albedo,
                pose=NUM_POSE, light=NUM_LIGHT)

  @nn.compact
  def __call__(self, images, train: bool = False) -> EncoderOutput:
    x = images
    if self.imagenet_normalize:
      x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    raw = ResNet(depth=self.depth, width=self.width, stage_sizes=self.stage_sizes,
                 num_outputs=self.num_outputs, head_init=nn.initializers.zeros,
                 bn_axis_name=self.bn_axis_name, name="resnet")(x, train)
    return self.postprocess(raw)

  def postprocess(self, raw) -> EncoderOutput:
    """Splits, scales and truncates a raw head output ``[B, D]`` (no parameters)."""
    bounds = np.cumsum([0] + list(self.split_sizes().values()))
    parts = [raw[..., a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    shape, expression, albedo, pose, light = parts

    def truncate(v, active):
      if active is None or active >= v.shape[-1]:
        return v
      keep = np.arange(v.shape[-1]) < active   # static mask: zero value and zero gradient.
      return v * jnp.asarray(keep, v.dtype)

    pose_scale = jnp.asarray([self.rotation_scale] * 3 + [self.translation_scale] * 2
                             + [self.depth_scale], raw.dtype)
    pose = pose * pose_scale
    return EncoderOutput(
        shape=truncate(shape, self.active_shape),
        expression=truncate(expression, self.active_expression),
        albedo=truncate(albedo * self.albedo_scale, self.active_albedo),
        angles=pose[..., :3],
        translation=pose[..., 3:],
        light=shading.light_from_vector(light) + shading.default_light(dtype=raw.dtype),
        raw=raw)


def tiny_encoder(**kwargs) -> FaceEncoder:
  """A small CPU-friendly encoder for tests: ResNet-18 layout, width 8, 2 stages."""
  defaults = dict(num_shape=10, num_expression=6, num_albedo=10, active_shape=8,
                  active_expression=4, active_albedo=8, depth=18, width=8, stage_sizes=(1, 1))
  defaults.update(kwargs)
  return FaceEncoder(**defaults)


def encoder_variables_from_torchvision(state_dict, encoder: FaceEncoder, variables):
  """Replaces the trunk of ``variables`` with a torchvision ResNet's ImageNet weights.

  Args:
    state_dict: mapping name -> array (numpy or torch tensors), torchvision key names;
      or a path to a ``.pth`` file (needs torch, see :mod:`focus_jax.nets.convert`).
    encoder: the :class:`FaceEncoder` whose variables these are (depth must match).
    variables: its initialised variables ``{"params", "batch_stats"}``.

  Returns:
    New variables: every trunk weight from ``state_dict``, the head (``fc``) untouched
    (zero for a fresh encoder, so predictions start at the mean face).
  """
  from focus_jax.nets import convert
  if isinstance(state_dict, (str, bytes)) or hasattr(state_dict, "__fspath__"):
    state_dict = convert.load_torch_state_dict(state_dict)
  trunk = convert.resnet_variables_from_torch(state_dict, include_fc=False)
  params = flax.core.unfreeze(variables["params"])
  stats = flax.core.unfreeze(variables["batch_stats"])
  convert.check_and_merge(params["resnet"], trunk["params"], "ImageNet ResNet", skip=("fc",))
  convert.check_and_merge(stats["resnet"], trunk["batch_stats"], "ImageNet ResNet")
  return {"params": params, "batch_stats": stats}


def init_variables(encoder: FaceEncoder, key, image_size: int = 224,
                   imagenet_weights=None) -> dict:
  """Initial variables of ``encoder``, optionally with an ImageNet-trained trunk.

  Args:
    encoder: the :class:`FaceEncoder`.
    key: PRNG key (tip: ``jax.random.key(0, impl="rbg")`` initialises much faster on CPU
      than the default threefry key).
    image_size: side of the dummy image used to trace the network.
    imagenet_weights: None (random trunk), a path to a torchvision ResNet ``.pth`` of the
      encoder's depth, or True to take the path from ``$FOCUS_JAX_RESNET_WEIGHTS``.

  Raises:
    WeightsError: the weights file is missing or does not fit the trunk.
  """
  from focus_jax.nets import weights
  variables = jax.jit(encoder.init)(key, jnp.zeros((1, image_size, image_size, 3)))
  if imagenet_weights is None or imagenet_weights is False:
    return variables
  path = weights.resolve_file(None if imagenet_weights is True else imagenet_weights,
                              weights.ENV_RESNET, f"ImageNet ResNet-{encoder.depth} weights",
                              weights.RESNET_HOW)
  return encoder_variables_from_torchvision(path, encoder, variables)


def output_split(encoder: FaceEncoder) -> Tuple[Tuple[str, int], ...]:
  """Names and sizes of the raw output's segments, in order."""
  return tuple(encoder.split_sizes().items())
