"""TrainState: everything a FOCUS training run needs to continue, as one pytree.

Fields (all arrays; the state is replicated over the local devices while training):

* ``step`` — int32 scalar, steps taken in this stage (skipped steps count too);
* ``encoder`` / ``unet`` — Flax variables ``{"params", "batch_stats"}`` (float32);
* ``encoder_opt`` / ``unet_opt`` — the optax states of the two optimisers (a frozen
  partner's state simply does not change);
* ``rng`` — uint32 key data of an ``rbg`` PRNG key (dropout); raw data so that it
  checkpoints as a plain array;
* ``num_skipped`` — int32, steps whose update was skipped (non-finite loss or
  gradient); ``bad_streak`` — int32, how many of the latest steps in a row were;
* ``data`` — int64 ``[num_processes, 3]``: every host's input-pipeline position
  (epoch, position in the epoch, examples skipped). Only the host loop writes it
  (right before a checkpoint); the step functions pass it through.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from focus_jax.autoencoder import networks as networks_lib
from focus_jax.nets import encoder as encoder_lib
from focus_jax.nets import unet as unet_lib
from focus_jax.render import camera
from focus_jax.train import schedules
from focus_jax.train.config import TrainConfig

RNG_IMPL = "rbg"   # much faster to compile on CPU than threefry; fine for dropout


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  encoder: Any
  unet: Any
  encoder_opt: Any
  unet_opt: Any
  rng: jnp.ndarray
  num_skipped: jnp.ndarray
  bad_streak: jnp.ndarray
  data: jnp.ndarray


class Networks(NamedTuple):
  """The static pieces a stage needs: modules, optimisers, model, camera.

  ``model`` (a MorphableModel pytree) and the identity net are passed to the
  step functions as arguments (broadcast to the devices), the rest is closed over.
  """
  encoder: encoder_lib.FaceEncoder
  unet: unet_lib.UNet
  encoder_tx: optax.GradientTransformation
  unet_tx: optax.GradientTransformation
  model: Any
  intrinsics: camera.Intrinsics


def make_optimizer(config: TrainConfig, lr) -> optax.GradientTransformation:
  """Adadelta (or Adam) with a staircase exponential decay of the learning rate over its
  own updates; ``lr=None``: rate 1 (the step scales the update by
  :func:`focus_jax.train.schedules.step_rate`)."""
  schedule = 1.0 if lr is None else optax.exponential_decay(
      lr, transition_steps=config.lr_decay_steps, decay_rate=config.lr_decay, staircase=True)
  if config.optimizer == "adadelta":
    return optax.adadelta(schedule, rho=0.9, eps=1e-6)
  return optax.adam(schedule)


def make_networks(config: TrainConfig, axis_name: str | None = "batch",
                  model=None) -> Networks:
  """Modules (BatchNorm synchronised over ``axis_name``; see
  :func:`focus_jax.autoencoder.networks.make_modules`), optimisers, model, camera."""
  m = networks_lib.make_modules(config, axis_name=axis_name, model=model)
  stepped = schedules.uses_step_rate(config)
  return Networks(m.encoder, m.unet,
                  make_optimizer(config, None if stepped else config.encoder_lr_of_stage()),
                  make_optimizer(config, None if stepped else config.unet_lr),
                  m.model, m.intrinsics)


def init_state(config: TrainConfig, nets: Networks, num_processes: int = 1) -> TrainState:
  """A fresh TrainState on the host (random encoder trunk with a zero head: the mean
  face; random UNet)."""
  key = jax.random.key(config.seed, impl=RNG_IMPL)
  k_enc, k_unet, k_run = jax.random.split(key, 3)
  s = config.image_size
  plain_enc = nets.encoder.clone(bn_axis_name=None)
  plain_unet = nets.unet.clone(bn_axis_name=None)
  enc_vars = jax.jit(plain_enc.init)(k_enc, jnp.zeros((1, s, s, 3)))
  unet_vars = jax.jit(plain_unet.init)(k_unet, jnp.zeros((1, s, s, 6)))
  enc_vars = {"params": enc_vars["params"], "batch_stats": enc_vars["batch_stats"]}
  unet_vars = {"params": unet_vars["params"], "batch_stats": unet_vars["batch_stats"]}
  return TrainState(
      step=jnp.zeros((), jnp.int32), encoder=enc_vars, unet=unet_vars,
      encoder_opt=nets.encoder_tx.init(enc_vars["params"]),
      unet_opt=nets.unet_tx.init(unet_vars["params"]),
      rng=jax.random.key_data(k_run), num_skipped=jnp.zeros((), jnp.int32),
      bad_streak=jnp.zeros((), jnp.int32),
      data=jnp.zeros((num_processes, 3), jnp.int64 if jax.config.x64_enabled else jnp.int32))


def to_host(state: TrainState) -> TrainState:
  """A NumPy copy (for checkpoints and comparisons)."""
  return jax.tree_util.tree_map(np.asarray, jax.device_get(state))


def with_networks_from(state: TrainState, source: TrainState, encoder: bool = True,
                       unet: bool = True) -> TrainState:
  """``state`` with the network variables of ``source`` (another stage's result);
  optimiser states, step and counters stay fresh."""
  return state.replace(encoder=source.encoder if encoder else state.encoder,
                       unet=source.unet if unet else state.unet)
