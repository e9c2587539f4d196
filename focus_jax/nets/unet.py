"""The segmentation UNet of FOCUS: render ⊕ target → inlier (visible-face) mask.

Architecture of the reference (``UNet/UNet.py`` there), NHWC here:

* encoder: ``depth`` blocks of (3×3 conv + bias → BN → ReLU) × 2, widths
  base·(1, 2, 4, 8, 16) = 64 … 1024 at the default, 2×2 max-pool between blocks; the
  two deepest blocks end with dropout (p = 0.5);
* decoder: per level, nearest-neighbour ×2 upsampling → 3×3 conv → BN → ReLU (halving
  the width), concatenation with the encoder skip (skip first), then a conv block;
* head: 1×1 conv to one channel, output ``sigmoid(5 · x)``.

Input ``[B, H, W, 6]`` = rendered image ⊕ target image (both in [0, 1]); H and W must be
divisible by 2^(depth-1) (224 is, for the default depth 5). Output ``[B, H, W, 1]`` in
(0, 1), 1 = face pixel the model should explain. Training mode needs a ``dropout`` rng
and updates ``batch_stats``.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from focus_jax.nets import layers


class ConvBlock(nn.Module):
  """(3×3 conv → BN → ReLU) × 2, optionally followed by dropout."""
  features: int
  dropout_rate: float = 0.0
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in (1, 2):
      x = layers.conv(self.features, 3, 1, 1, use_bias=True, name=f"conv{i}",
                      kernel_init=nn.initializers.kaiming_uniform())(x)
      x = nn.relu(layers.batch_norm(train, f"bn{i}", self.bn_axis_name)(x))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return x


class UpConv(nn.Module):
  """Nearest ×2 upsampling → 3×3 conv → BN → ReLU."""
  features: int
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    x = layers.conv(self.features, 3, 1, 1, use_bias=True, name="conv",
                    kernel_init=nn.initializers.kaiming_uniform())(x)
    return nn.relu(layers.batch_norm(train, "bn", self.bn_axis_name)(x))


class UNet(nn.Module):
  """FOCUS's segmentation network.

  Attributes:
    base_width: channels of the first block (64 in the reference; 4–8 for CPU tests).
    depth: number of encoder blocks (5 in the reference: widths base·2^0 … base·2^4).
    out_channels: output maps (1: the inlier mask).
    dropout_rate: dropout at the end of the deepest ``num_dropout_blocks`` encoder blocks.
    num_dropout_blocks: 2 in the reference.
    logit_scale: the output is ``sigmoid(logit_scale · x)`` (5 in the reference).
    bn_axis_name: pmap axis for synchronised BatchNorm, or None.

  Call: ``x [B, H, W, C_in], train: bool -> [B, H, W, out_channels]`` in (0, 1);
  ``return_logits=True`` gives ``logit_scale · x`` instead (for a stable BCE).
  """
  base_width: int = 64
  depth: int = 5
  out_channels: int = 1
  dropout_rate: float = 0.5
  num_dropout_blocks: int = 2
  logit_scale: float = 5.0
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_logits: bool = False):
    factor = 2 ** (self.depth - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"UNet of depth {self.depth} needs H and W divisible by {factor}, "
                       f"got {x.shape[1]}x{x.shape[2]}")
    widths = [self.base_width * 2**i for i in range(self.depth)]
    skips = []
    for i, w in enumerate(widths):
      if i > 0:
        x = layers.max_pool(x, 2, 2)
      rate = self.dropout_rate if i >= self.depth - self.num_dropout_blocks else 0.0
      x = ConvBlock(w, rate, self.bn_axis_name, name=f"down{i + 1}")(x, train)
      skips.append(x)
    for i in reversed(range(self.depth - 1)):
      x = UpConv(widths[i], self.bn_axis_name, name=f"up{i + 1}")(x, train)
      x = jnp.concatenate([skips[i], x], axis=-1)
      x = ConvBlock(widths[i], 0.0, self.bn_axis_name, name=f"up_block{i + 1}")(x, train)
    logits = self.logit_scale * layers.conv(
        self.out_channels, 1, use_bias=True, name="out",
        kernel_init=nn.initializers.kaiming_uniform())(x)
    return logits if return_logits else jax.nn.sigmoid(logits)


def tiny_unet(**kwargs) -> UNet:
  """A CPU test variant: base width 4, depth 3."""
  defaults = dict(base_width=4, depth=3)
  defaults.update(kwargs)
  return UNet(**defaults)
