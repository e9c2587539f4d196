"""The training step's randomness: the UNet's dropout masks come from the run key
folded with the step number (and the device), so every step draws new masks, a
repeated step the same ones, and a resumed run continues the sequence (its state
carries the step)."""

import jax
import numpy as np

from focus_jax.train import parallel, state as state_lib, steps
from tests import train_setup
from tests.train_fixtures import compile_cache, jax_cache_dir  # noqa: F401  pylint: disable=unused-import


def test_unet_dropout_masks_change_with_the_step(compile_cache):  # noqa: F811  pylint: disable=redefined-outer-name
  cfg = train_setup.micro(stage="unet")
  nets, st, batch = train_setup.tiny_state_and_batch(cfg, cfg.batch_size, pseudo=True)
  assert nets.unet.dropout_rate > 0
  fn = parallel.pmap_step(steps.make_step(cfg, state_lib.make_networks(cfg), "unet"),
                          devices=jax.devices()[:1])
  batch = {k: v[None] for k, v in batch.items()}

  def loss_at(step):
    state = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], st.replace(step=step))
    _, metrics = fn(state, batch, nets.model, None)
    return float(np.asarray(metrics["loss"])[0])

  first, again, second, later = loss_at(0), loss_at(0), loss_at(1), loss_at(7)
  assert np.isfinite(first)
  assert first == again                       # the same step: the same masks
  assert len({first, second, later}) == 3     # other steps: other masks
