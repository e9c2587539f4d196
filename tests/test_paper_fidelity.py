"""paper.flags follows the FOCUS reference's training (issue 21, docs/FIDELITY.md): the EM
learning rates, the gradient through the UNet mask, the identity-net inputs, the stage-3
loss variants, adaptation that continues the EM run, the stage lengths and the refusal
of the built-in model."""

import json
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags as absl_flags

from focus_jax import losses
from focus_jax.autoencoder.networks import load_model, segment
from focus_jax.errors import FocusError
from focus_jax.train import checkpoint as ckpt_lib
from focus_jax.train import config as config_lib
from focus_jax.train import flags as train_flags
from focus_jax.train import parallel, schedules, steps, trainer
from focus_jax.train import state as state_lib
from tests import train_setup
from tests.train_fixtures import compile_cache, jax_cache_dir  # noqa: F401  pylint: disable=unused-import

PAPER = train_setup.REPO / "experiments" / "configs" / "paper.flags"


def paper_flags(stage, *extra):
  fv = absl_flags.FlagValues()
  train_flags.define_config_flags(fv)
  fv(["prog", f"--flagfile={PAPER}", *extra])
  return train_flags.config_from_flags(stage, fv)


# ------------------------------------------------------------------ EM learning rates


def test_em_reference_rates_at_chosen_global_steps():
  cfg = paper_flags("em")
  assert cfg.em_lr_schedule == "reference"
  # Step4_UNet_MoFA_EM.py: 0.1 * 0.99 ** (300000 // 5000) * 0.8, the UNet's * 0.06; StepLR
  # every 5000 global steps, x0.99 (encoder) and x0.95 (UNet).
  base = 0.1 * 0.99 ** 60 * 0.8
  assert base == pytest.approx(0.04377253139, rel=1e-9)
  for g in (0, 4999, 5000, 29999, 30000, 123456):
    want_enc = base * 0.99 ** (g // 5000)
    want_unet = base * 0.06 * 0.95 ** (g // 5000)
    assert float(schedules.em_rate(cfg, "encoder", g)) == pytest.approx(want_enc, rel=2e-6)
    assert float(schedules.em_rate(cfg, "unet", g)) == pytest.approx(want_unet, rel=2e-6)
  # Adaptation resumed at EM iteration 123456 (S4 --pretrained_model): the rate starts at
  # base * d^(123456 // 5000), then its new schedulers count from 0.
  adapt = cfg.replace(stage="adapt", em_step_offset=123456)
  for k in (0, 1543, 1544, 5000, 12000):
    want = base * 0.06 * 0.95 ** (123456 // 5000) * 0.95 ** (k // 5000)
    assert float(schedules.em_rate(adapt, "unet", k)) == pytest.approx(want, rel=2e-6)
  # 'own': each optimiser from its stage rate, decayed by its own update count.
  own = cfg.replace(em_lr_schedule="own")
  assert float(schedules.learning_rate(own, "unet", 12000, own_updates=2000)) == \
      pytest.approx(0.03, rel=1e-6)
  assert float(schedules.learning_rate(own, "encoder", 12000, own_updates=10000)) == \
      pytest.approx(0.1 * 0.99 ** 2, rel=1e-6)


def _one_step(cfg, phase, st, batch, nets, step):
  fn = parallel.pmap_step(steps.make_step(cfg, state_lib.make_networks(cfg), phase),
                          devices=jax.devices()[:1])
  state = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], st.replace(step=step))
  new, metrics = fn(state, {k: v[None] for k, v in batch.items()}, nets.model, None)
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], new), metrics


def _change(a, b):
  return np.concatenate([np.ravel(x - y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                         jax.tree_util.tree_leaves(b))])


def test_em_reference_rate_scales_the_update_by_the_global_step(compile_cache):  # noqa: F811  pylint: disable=redefined-outer-name
  cfg = train_setup.micro(stage="em", em_lr_schedule="reference", lr_decay=0.5,
                          lr_decay_steps=2, em_lr_pretrain_steps=4)
  nets, st, batch = train_setup.tiny_state_and_batch(cfg, cfg.batch_size)
  first, _ = _one_step(cfg, "em_encoder", st, batch, nets, 0)
  later, _ = _one_step(cfg, "em_encoder", st, batch, nets, 5)
  d0 = _change(first.encoder["params"], st.encoder["params"])
  d5 = _change(later.encoder["params"], st.encoder["params"])
  assert np.max(np.abs(d0)) > 0
  # Both optimisers are fresh (no own updates): only the global step lowers the rate.
  # (parameter changes of ~1e-4 on values up to ~1: float32 rounding of ~1e-7)
  np.testing.assert_allclose(d5, 0.25 * d0, rtol=1e-3, atol=2e-7)
  base = schedules.em_base_rates(cfg)[0]
  # Adam's first update is lr * g / (|g| + eps): about the rate wherever g is not tiny.
  assert np.max(np.abs(d0)) == pytest.approx(base, rel=1e-3)


def test_em_encoder_gradient_reaches_the_encoder_through_the_mask(compile_cache):  # noqa: F811  pylint: disable=redefined-outer-name
  # Only the EM encoder's area term Σ F(1 − M) / Σ F: without antialiasing F has no
  # gradient, so the encoder's whole gradient is the one through M.
  only_area = dict(w_rec=0.0, w_reg=0.0, w_landmark=0.0, w_perceptual=0.0, w_enc_area=1.0)
  norms = {}
  for through in (False, True):
    cfg = train_setup.micro(stage="em", em_mask_gradient=through, **only_area)
    assert not cfg.antialias
    nets, st, batch = train_setup.tiny_state_and_batch(cfg, cfg.batch_size)
    new, metrics = _one_step(cfg, "em_encoder", st, batch, nets, 0)
    norms[through] = float(np.asarray(metrics["grad_norm"])[0])
    assert float(np.asarray(metrics["area"])[0]) > 0
    # The UNet is never updated in the encoder step.
    assert np.all(_change(new.unet, st.unet) == 0)
  assert norms[False] == 0.0
  assert norms[True] > 1e-6


# ------------------------------------------------------------- identity-net inputs


class _RecordingIdentity:
  """Stands in for the identity net: the embedding is the landmarks it was given and the
  shallow features the image itself, so the loss values reveal its inputs."""

  def __call__(self, images, lms):
    return types.SimpleNamespace(embedding=lms.reshape(lms.shape[0], -1), shallow=images)


def _on_axis(fn):
  # The losses use pmean over steps.AXIS (global ratios): one device of a named axis.
  return jax.vmap(lambda _: fn(), axis_name=steps.AXIS)(jnp.zeros(1))


def test_perceptual_aligns_the_render_with_its_predicted_landmarks():
  ident = _RecordingIdentity()
  got = {}
  for which in ("target", "predicted"):
    cfg = train_setup.micro(stage="pretrain", identity_render_landmarks=which)
    nets, st, batch = train_setup.tiny_state_and_batch(cfg, cfg.batch_size)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    _, terms, _ = _on_axis(lambda: steps._loss_pretrain(  # pylint: disable=protected-access
        cfg, nets, st.encoder["params"], st, batch, nets.model, ident, None))
    got[which] = float(terms["perceptual"][0])
    _, r, _ = _on_axis(lambda: steps._encode_and_render(  # pylint: disable=protected-access
        cfg, nets, st.encoder["params"], st, nets.model, batch["image"]))  # noqa: B023
  # With the target's landmarks on both sides the recorded embeddings are equal.
  assert got["target"] == pytest.approx(0.0, abs=1e-6)
  want = losses.cosine_distance(r.landmarks[0].reshape(2, -1),
                                batch["landmarks"].reshape(2, -1))
  assert got["predicted"] == pytest.approx(float(want), rel=1e-4)
  assert got["predicted"] > 1e-5


def test_preserve_and_dist_use_the_reference_inputs():
  ident = _RecordingIdentity()
  cfg0 = train_setup.micro(stage="em")
  nets, st, batch = train_setup.tiny_state_and_batch(cfg0, cfg0.batch_size)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  rng = jax.random.key(5, impl=state_lib.RNG_IMPL)
  images = batch["image"]
  r = steps._frozen_render(cfg0, nets, st, batch, nets.model)  # pylint: disable=protected-access
  m = _on_axis(lambda: segment(cfg0, nets, st.unet, r.image, images, train=True, rng=rng,
                               face=r.mask)[0])[0]
  f = r.mask
  assert float(jnp.max(m * (1 - f))) > 0.05   # M is not 0 outside the face
  want = {
      "reference": (losses.preserve_loss(images, images * (m * f)[..., None]),
                    losses.dist_loss(r.image * (f * m * f)[..., None],
                                     images * (m * f)[..., None])),
      "composite": (losses.preserve_loss(images, images * m[..., None]),
                    losses.dist_loss(r.image * m[..., None], images * m[..., None])),
  }
  for inputs, (preserve, dist) in want.items():
    cfg = cfg0.replace(identity_inputs=inputs)
    _, terms, _ = _on_axis(lambda: steps._loss_em_unet(  # pylint: disable=protected-access
        cfg, nets, st.unet["params"], st, batch, nets.model, ident, rng))  # noqa: B023
    assert float(terms["preserve"][0]) == pytest.approx(float(preserve), rel=1e-5)
    assert float(terms["dist"][0]) == pytest.approx(float(dist), rel=1e-5)
  assert abs(float(want["reference"][0]) - float(want["composite"][0])) > 1e-4


def test_unet_bce_reference_is_the_double_sigmoid_over_all_pixels():
  cfg0 = train_setup.micro(stage="unet")
  nets, st, batch = train_setup.tiny_state_and_batch(cfg0, cfg0.batch_size, pseudo=True)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  rng = jax.random.key(2, impl=state_lib.RNG_IMPL)
  r = steps._frozen_render(cfg0, nets, st, batch, nets.model)  # pylint: disable=protected-access
  logits = _on_axis(lambda: segment(cfg0, nets, st.unet, r.image, batch["image"], train=True,
                                    rng=rng, face=r.mask)[1])[0]
  target = batch["pseudo"]
  ref = jnp.mean(optax.sigmoid_binary_cross_entropy(jax.nn.sigmoid(logits), target))
  face = jnp.sum(r.mask * optax.sigmoid_binary_cross_entropy(logits, target)) / jnp.sum(r.mask)
  for kind, want in (("reference", ref), ("face", face)):
    cfg = cfg0.replace(unet_bce=kind)
    _, terms, _ = _on_axis(lambda: steps._loss_unet(  # pylint: disable=protected-access
        cfg, nets, st.unet["params"], st, batch, nets.model, None, rng))  # noqa: B023
    assert float(terms["bce"][0]) == pytest.approx(float(want), rel=1e-5)
  assert abs(float(ref) - float(face)) > 1e-3


# ------------------------------------------------------ adaptation continues the EM run


def test_adapt_continues_the_em_runs_global_step(tmp_path):
  em_cfg = train_setup.micro(stage="em")
  nets = state_lib.make_networks(em_cfg)
  host = state_lib.to_host(state_lib.init_state(em_cfg, nets))
  ck = ckpt_lib.Checkpointer(str(tmp_path / "em" / "checkpoints"), em_cfg)
  ck.save(7, host.replace(step=np.asarray(7, np.int32)))
  ck.close()
  cfg = train_setup.micro(stage="adapt", adapt_continue=True, em_lr_schedule="reference")
  got = trainer.continue_em(cfg, str(tmp_path / "adapt"), str(tmp_path / "em"))
  assert got.em_step_offset == 7
  # Cycle 2 UNet + 3 encoder steps: global steps 7-9 are the 2nd cycle's encoder steps.
  assert [got.em_phase(k) for k in range(4)] == ["encoder", "encoder", "encoder", "unet"]
  assert [cfg.em_phase(k) for k in range(4)] == ["unet", "unet", "encoder", "encoder"]
  n = cfg.lr_decay_steps
  assert float(schedules.em_rate(got, "encoder", 0)) == pytest.approx(
      schedules.em_base_rates(cfg)[0] * cfg.lr_decay ** (7 // n), rel=1e-6)
  # Without adapt_continue the adaptation restarts at step 0.
  assert trainer.continue_em(cfg.replace(adapt_continue=False), str(tmp_path / "a2"),
                             str(tmp_path / "em")).em_step_offset == 0
  # Resumed without --init_from: the offset its own checkpoint was written with.
  ck = ckpt_lib.Checkpointer(str(tmp_path / "adapt" / "checkpoints"), got)
  ck.save(3, host.replace(step=np.asarray(3, np.int32)))
  ck.close()
  assert trainer.continue_em(cfg, str(tmp_path / "adapt"), None).em_step_offset == 7


# ------------------------------------------------------------ stage lengths, model


def test_paper_flags_set_the_reference_lengths_and_refuse_the_builtin_model():
  lengths = {s: paper_flags(s).stage_steps() for s in config_lib.STAGES}
  assert lengths == dict(pretrain=300000, unet=30000, em=120000, adapt=30000)
  assert paper_flags("em", "--num_steps=7").stage_steps() == 7
  cfg = paper_flags("pretrain")
  assert cfg.model == "builtin" and cfg.require_reference_model
  with pytest.raises(FocusError, match="--model=PATH"):
    load_model(cfg)
  ok = paper_flags("pretrain", "--norequire_reference_model", "--model_resolution=25",
                   "--num_shape=4", "--num_expression=2", "--num_albedo=4")
  assert load_model(ok).num_shape == 4
  # The tiny configuration keeps its pipeline lengths (run_pipeline's old defaults).
  assert [getattr(config_lib.tiny(), f"{s}_num_steps") for s in config_lib.STAGES] == \
      [40, 30, 40, 16]


def test_reference_parity_script_skips_without_a_checkout(tmp_path):
  script = train_setup.REPO / "benchmarks" / "reference_parity.py"
  proc = subprocess.run([sys.executable, str(script), str(tmp_path / "absent")],
                        capture_output=True, text=True, timeout=120,
                        env=train_setup.subprocess_env())
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "SKIPPED" in proc.stdout and "absent" in proc.stdout


def test_pipeline_lengths_come_from_the_flag_file():
  # `focus-jax train` (the pipeline) runs each stage for the config's <stage>_num_steps
  # unless a --<stage>_steps flag is given: paper.flags' reference lengths, tiny's 40/30/40.
  def plan(*args):
    proc = subprocess.run([sys.executable, "-m", "focus_jax.cli", "train", "--dry_run",
                           "--data_dir=d", "--workdir=w", *args], capture_output=True,
                          text=True, timeout=120, env=train_setup.subprocess_env(),
                          cwd=train_setup.REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])["steps"]

  assert plan(f"--config={PAPER}", "--unet_steps=5") == dict(pretrain=300000, unet=5,
                                                             em=120000)
  assert plan("--config=tiny", "--target_dir=t") == dict(pretrain=40, unet=30, em=40, adapt=16)
