"""Small building blocks shared by the networks (NHWC layout throughout).

Convolutions take explicit PyTorch-style symmetric padding rather than 'SAME', so that
strided layers line up pixel for pixel with the PyTorch/dlib networks whose weights
we import.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

# torchvision's ResNet initialisation: He normal, fan_out.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, use_bias: bool = False,
         name: Optional[str] = None, kernel_init=kaiming_fan_out, dtype: Any = None) -> nn.Conv:
  """A square convolution with PyTorch semantics (``padding`` pixels on every side)."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                 kernel_init=kernel_init, name=name, dtype=dtype)


def batch_norm(train: bool, name: Optional[str] = None, axis_name: Optional[str] = None,
               scale_init=nn.initializers.ones, dtype: Any = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 ⇔ Flax 0.9, eps 1e-5).

  ``axis_name``: average batch statistics over this pmap axis (synchronised BN);
  None keeps them per device, as the single-GPU reference did.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name, scale_init=scale_init, name=name, dtype=dtype)


def max_pool(x, window: int, stride: int, padding: int = 0):
  """Max pooling, padding with -inf as PyTorch does: [B, H, W, C] -> [B, H', W', C]."""
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)))


class PReLU(nn.Module):
  """Per-channel PReLU (PyTorch ``nn.PReLU(C)``): max(x, 0) + alpha_c · min(x, 0)."""
  init_value: float = 0.25

  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.constant(self.init_value), (x.shape[-1],),
                       jnp.float32)
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays (or of ShapeDtypeStructs)."""
  import jax
  import numpy as np
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
