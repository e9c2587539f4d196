"""Resuming a training run is bit-exact, for every stage.

For each stage an uninterrupted run (tests.train_fixtures.micro_runs) is compared
with the same run stopped and resumed from its checkpoint: the final checkpoints
must hold the same bits in every field (step, both networks, both optimiser states,
the RNG, the skip counters and every host's data position), and every step logged
after the resumption (the first one included) must have the same loss terms and
gradient norm. The stops are "kills" (the process ends after a step that has no
checkpoint, so the resumed run redoes it) and a clean stop; they land at an epoch
boundary and inside an epoch, and for EM inside a UNet block and inside an encoder
block.
"""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from focus_jax.train import trainer
from tests import train_setup
from tests.train_fixtures import compile_cache, jax_cache_dir, micro_data, micro_runs  # pylint: disable=unused-import

pytestmark = pytest.mark.usefixtures("compile_cache")


def assert_same_state(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b) > 10
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x),
                                  err_msg=jax.tree_util.keystr(path))


def assert_same_steps(whole, part):
  """Every step ``part`` logged has the bits ``whole`` logged at that step."""
  at = {s: i for i, s in enumerate(whole.history["step"])}
  assert part.history["step"], "nothing logged"
  for j, s in enumerate(part.history["step"]):
    i = at[s]
    assert part.history["phase"][j] == whole.history["phase"][i]
    for col, values in part.history.items():
      if col in ("step", "phase"):
        continue
      np.testing.assert_array_equal(values[j], whole.history[col][i],
                                    err_msg=f"step {s} {col}")


def check_resumed(whole_dir, whole, final, config):
  step_a, a = train_setup.saved_state(whole_dir, config)
  step_b, b = train_setup.saved_state(Path(final.workdir), config)
  assert step_a == step_b == config.num_steps
  assert len(jax.tree_util.tree_leaves(a)) > 100      # networks, optimisers, counters
  assert_same_state(a, b)
  # The data position after num_steps batches of 2 from epochs of 2 batches (the
  # pipeline moves to the next epoch when it makes the next batch).
  epoch, batches = divmod(config.num_steps - 1, 2)
  assert b.data.tolist() == [[epoch, 2 * (batches + 1), 0]]
  assert_same_steps(whole, final)


def test_pretrain_resumes_bit_exactly_after_a_kill(micro_runs, tmp_path):
  cfg = train_setup.micro(stage="pretrain", num_steps=5)
  work = str(tmp_path / "run")
  # Killed after step 3; its last checkpoint is step 2 (an epoch boundary).
  killed = trainer.train(cfg.replace(checkpoint_every=2), work, str(micro_runs["data"]),
                         stop_after=3)
  assert killed.step == 3
  assert_same_steps(micro_runs["results"]["pretrain"], killed)
  resumed = trainer.train(cfg, work, str(micro_runs["data"]))
  assert resumed.resumed_from == 2 and resumed.history["step"] == [3, 4, 5]
  check_resumed(micro_runs["pretrain"], micro_runs["results"]["pretrain"], resumed, cfg)


def test_pretrain_resumes_bit_exactly_with_an_unreadable_image(micro_runs, tmp_path):
  """The pipeline skips an unreadable image (and counts it); the checkpoint keeps the
  count but not which image, so the resumed run meets it again: same batches, same
  count, same bits."""
  data = tmp_path / "data"
  shutil.copytree(micro_runs["data"], data)
  (data / "images" / "000002.png").write_bytes(b"not a png")
  cfg = train_setup.micro(stage="pretrain", num_steps=5)
  with pytest.warns(UserWarning, match="skipping example 2"):
    whole = trainer.train(cfg, str(tmp_path / "whole"), str(data))
  work = str(tmp_path / "run")
  with pytest.warns(UserWarning, match="skipping example 2"):
    trainer.train(cfg.replace(checkpoint_every=2), work, str(data), stop_after=3)
  with pytest.warns(UserWarning, match="skipping example 2"):
    resumed = trainer.train(cfg, work, str(data))
  assert resumed.resumed_from == 2
  (_, a) = train_setup.saved_state(tmp_path / "whole", cfg)
  (_, b) = train_setup.saved_state(tmp_path / "run", cfg)
  assert a.data[0, 2] >= 2             # met in more than one epoch, counted each time
  assert_same_state(a, b)
  assert_same_steps(whole, resumed)


def test_unet_resumes_bit_exactly_after_a_kill(micro_runs, tmp_path):
  cfg = train_setup.micro(stage="unet", num_steps=4)
  work, data = str(tmp_path / "run"), str(micro_runs["data"])
  kw = dict(init_from=str(micro_runs["pretrain"]), pseudo_dir=str(micro_runs["pseudo"]))
  # Killed after its last step, before the final checkpoint; it has one at step 3
  # (inside the second epoch).
  killed = trainer.train(cfg.replace(checkpoint_every=3), work, data, stop_after=4, **kw)
  assert killed.step == 4
  resumed = trainer.train(cfg, work, data, **kw)
  assert resumed.resumed_from == 3 and resumed.history["step"] == [4]
  check_resumed(micro_runs["unet"], micro_runs["results"]["unet"], resumed, cfg)


def test_em_resumes_bit_exactly_inside_a_unet_block_and_an_encoder_block(micro_runs,
                                                                          tmp_path):
  cfg = train_setup.micro(stage="em", num_steps=6)
  assert [cfg.em_phase(s) for s in range(6)] == ["unet"] * 2 + ["encoder"] * 3 + ["unet"]
  work, data = str(tmp_path / "run"), str(micro_runs["data"])
  kw = dict(init_from=str(micro_runs["unet"]))
  # A clean stop after step 1 (the next step is the UNet block's second) ...
  first = trainer.train(cfg.replace(num_steps=1), work, data, **kw)
  assert first.step == 1
  # ... resumed, then killed after step 4 with its last checkpoint at step 3 (the
  # next step is the encoder block's second) ...
  killed = trainer.train(cfg.replace(checkpoint_every=3), work, data, stop_after=3, **kw)
  assert killed.resumed_from == 1 and killed.history["step"] == [2, 3, 4]
  assert_same_steps(micro_runs["results"]["em"], killed)
  # ... and resumed to the end (across the next UNet block).
  resumed = trainer.train(cfg, work, data, **kw)
  assert resumed.resumed_from == 3 and resumed.history["phase"] == [
      "em_encoder", "em_encoder", "em_unet"]
  check_resumed(micro_runs["em"], micro_runs["results"]["em"], resumed, cfg)


def test_every_stage_moved_its_network(micro_runs):
  """The comparisons above are not of runs that did nothing: each stage changed the
  network it trains (and only that one) and its losses are finite."""
  res = micro_runs["results"]
  for stage, trained, frozen in (("unet", "unet", "encoder"), ("em", "encoder", None),
                                 ("em", "unet", None)):
    before = res["pretrain"].state if stage == "unet" else res["unet"].state
    after = res[stage].state
    moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(jax.tree_util.tree_leaves(getattr(after, trained)["params"]),
                                jax.tree_util.tree_leaves(getattr(before, trained)["params"])))
    assert moved > 1e-4, (stage, trained, moved)
    if frozen:
      assert_same_state(getattr(before, frozen), getattr(after, frozen))
  for r in res.values():
    assert np.all(np.isfinite(r.history["loss"])) and set(r.history["finite"]) == {1.0}
