"""Learning-rate schedules of the training stages (pure functions of the step).

Two EM schedules (``TrainConfig.em_lr_schedule``):

* ``'own'`` — each optimiser carries its own staircase decay
  (:func:`focus_jax.train.state.make_optimizer`), started at ``encoder_lr`` (or
  ``em_encoder_lr``) / ``unet_lr`` and counted in *its own* updates: the UNet, trained
  one step in six, decays six times slower.
* ``'reference'`` — the reference's ``Step4_UNet_MoFA_EM.py``: both rates continue
  where stage 1 ended, ``base = encoder_lr · lr_decay^(em_lr_pretrain_steps //
  lr_decay_steps) · 0.8`` (encoder) and ``0.06 · base`` (UNet); a run resumed at global
  step ``o`` (``em_step_offset``) starts at ``base · d^(o // n)`` and its PyTorch
  ``StepLR`` schedulers tick on every step whichever network trains, so at this
  stage's step ``k`` the rate is ``base · d^(o // n) · d^(k // n)`` with ``n =
  lr_decay_steps`` and ``d = lr_decay`` (encoder) or 0.95 (UNet). The optimisers then
  run at rate 1 and the step scales their update by :func:`em_rate` (Adadelta's and
  Adam's rate is a plain factor on the update, so this is the same step).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp

from focus_jax.train.config import TrainConfig

EM_ENCODER_FACTOR = 0.8    # S4: learning_rate_begin = ... * 0.8
EM_UNET_FACTOR = 0.06      # S4: unet_lr_begin = learning_rate_begin * 0.06 * ...
EM_UNET_DECAY = 0.95       # S4: decay_rate_unet


def staircase(lr0: float, decay: float, every: int, step):
  """``lr0 · decay^(step // every)`` (``step``: int or int array)."""
  return lr0 * jnp.power(jnp.float32(decay), (jnp.asarray(step) // every).astype(jnp.float32))


def em_base_rates(config: TrainConfig) -> tuple:
  """(encoder, UNet) rates at global EM step 0 under the 'reference' schedule."""
  enc = (config.encoder_lr * config.lr_decay ** (config.em_lr_pretrain_steps
                                                 // config.lr_decay_steps)
         * EM_ENCODER_FACTOR)
  return enc, enc * EM_UNET_FACTOR


def uses_step_rate(config: TrainConfig) -> bool:
  """Whether this stage's optimisers run at rate 1, scaled by :func:`em_rate`."""
  return config.stage in ("em", "adapt") and config.em_lr_schedule == "reference"


def em_rate(config: TrainConfig, network: str, step):
  """'reference' rate of ``network`` ('encoder' or 'unet') at this stage's ``step``
  (global EM step ``step + em_step_offset``); float32."""
  enc, unet = em_base_rates(config)
  lr0, decay = (enc, config.lr_decay) if network == "encoder" else (unet, EM_UNET_DECAY)
  n = config.lr_decay_steps
  resumed = lr0 * decay ** (config.em_step_offset // n)
  return staircase(resumed, decay, n, step)


def step_rate(config: TrainConfig, network: str) -> Optional[Callable]:
  """``step -> rate`` that the step applies to ``network``'s update, or None when the
  optimiser carries its own schedule."""
  if not uses_step_rate(config):
    return None
  return lambda step: em_rate(config, network, step)


def learning_rate(config: TrainConfig, network: str, step, own_updates=None):
  """The rate ``network`` trains with at this stage's ``step`` (for logs and tests).

  ``own_updates``: that optimiser's update count so far ('own' schedule; default
  ``step``, as in the single-network stages)."""
  if uses_step_rate(config):
    return em_rate(config, network, step)
  lr0 = config.encoder_lr_of_stage() if network == "encoder" else config.unet_lr
  count = step if own_updates is None else own_updates
  return staircase(lr0, config.lr_decay, config.lr_decay_steps, count)
