"""Training infrastructure: config, checkpoints, logs, the CLI, resumption, faults.

The tiny configuration on a 16-face synthetic dataset (64², written once per
session). Entry points run as subprocesses sharing one persistent compilation
cache, so a stage compiled once is reused by the later runs.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from focus_jax.autoencoder import checkpoints as ckpt_io
from focus_jax.autoencoder import networks as networks_lib
from focus_jax.train import checkpoint as ckpt_lib
from focus_jax.train import config as config_lib
from focus_jax.train import logs, trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "configs" / "tiny.flags"


def _write_tiny(out, num=16):
  """16 synthetic 64² faces of the tiny config's model, reference layout."""
  from focus_jax import morphable
  from focus_jax.data import synthetic
  gen = synthetic.SyntheticFaces(morphable.builtin(resolution=37),
                                 synthetic.SyntheticConfig(size=64), seed=0, batch_size=16)
  synthetic.write_dataset(str(out), gen, num, progress=False, save_maps=False)
  return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  return _write_tiny(tmp_path_factory.mktemp("tiny_faces"))


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


def run_cli(script, *args, cache=None, timeout=600, check=True):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  cmd = [sys.executable, str(REPO / "experiments" / script), f"--flagfile={TINY}",
         "--noprogress", *args]
  if cache is not None:
    cmd.append(f"--compilation_cache={cache}")
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def latest_state(workdir):
  enc, unet, cfg, step = ckpt_io.load_networks(str(workdir))
  return enc, unet, step


# ----------------------------------------------------------------------- config


def test_tiny_flag_file_matches_tiny_preset():
  from absl import flags as absl_flags
  from focus_jax.train import flags as train_flags
  fv = absl_flags.FlagValues()
  train_flags.define_config_flags(fv)
  fv(["prog", f"--flagfile={TINY}"])
  got = train_flags.config_from_flags("pretrain", fv)
  assert got.mismatches(config_lib.tiny()) == []
  fv = absl_flags.FlagValues()
  train_flags.define_config_flags(fv)
  fv(["prog", f"--flagfile={TINY.parent / 'paper.flags'}"])
  assert train_flags.config_from_flags("pretrain", fv).mismatches(config_lib.paper()) == []


def test_config_validation_and_em_schedule():
  with pytest.raises(ValueError, match="identity"):
    config_lib.tiny(identity="vgg")
  with pytest.raises(ValueError, match="divisible"):
    config_lib.tiny(image_size=66)
  cfg = config_lib.tiny(em_unet_steps=2, em_encoder_steps=3)
  assert [cfg.em_phase(s) for s in range(6)] == ["unet"] * 2 + ["encoder"] * 3 + ["unet"]
  # Run-length fields may change on resume, network fields may not.
  assert cfg.mismatches(cfg.replace(num_steps=999, log_every=7)) == []
  assert [d[0] for d in cfg.mismatches(cfg.replace(unet_width=12))] == ["unet_width"]
  assert config_lib.TrainConfig.from_dict(cfg.to_dict()) == cfg
  # A checkpoint config written before em_encoder_lr existed counts as its default (0).
  old = {k: v for k, v in cfg.to_dict().items() if k != "em_encoder_lr"}
  assert cfg.replace(em_encoder_lr=0.0).mismatches(old) == []
  assert [d[0] for d in cfg.mismatches(old)] == ["em_encoder_lr"]


def test_photo_loss_config_l2_is_stage_ones_face_pixel_mse(tiny_data):
  """photo_loss='l2' swaps stage 1's photometric term for losses.l2_photometric of the
  same render (a ratio of global sums under the device axis); 'robust' is the default."""
  from focus_jax import losses
  from focus_jax.train import data as data_lib, state as state_lib, steps as steps_lib
  with pytest.raises(ValueError, match="photo_loss"):
    config_lib.tiny(photo_loss="l1")
  assert config_lib.TrainConfig().photo_loss == "robust" == config_lib.paper().photo_loss
  cfg = config_lib.tiny(image_size=32, batch_size=2)
  nets = state_lib.make_networks(cfg, axis_name=None)
  st = state_lib.init_state(cfg, nets)
  source = data_lib.AlignedSource(data_lib.open_data(str(tiny_data), "train"), 32)
  ex = [source.load(i) for i in range(2)]
  batch = dict(image=np.stack([e["image"] for e in ex])[None].astype(np.float32),
               landmarks=np.stack([e["landmarks"] for e in ex])[None].astype(np.float32))

  def terms(c):
    fn = lambda b: steps_lib._loss_pretrain(c, nets, st.encoder["params"], st, b, nets.model,
                                            None, None)[1]
    return jax.vmap(fn, axis_name=steps_lib.AXIS)(batch)

  rob, l2 = terms(cfg), terms(cfg.replace(photo_loss="l2"))
  out, r, _ = steps_lib._encode_and_render(cfg, nets, st.encoder["params"], st, nets.model,
                                           batch["image"][0])
  want_l2 = float(losses.l2_photometric(r.image, batch["image"][0], r.mask))
  want_rob = float(losses.robust_photometric(r.image, batch["image"][0], r.mask)[0])
  assert float(l2["photometric"][0]) == pytest.approx(want_l2, rel=1e-4)
  assert float(rob["photometric"][0]) == pytest.approx(want_rob, rel=1e-4)
  assert abs(want_l2 - want_rob) > 0.1 * abs(want_rob)
  # The other terms do not depend on the choice.
  assert float(l2["landmark"][0]) == pytest.approx(float(rob["landmark"][0]), rel=1e-6)


def test_encoder_translation_units_follow_the_config():
  from focus_jax.train import state as state_lib
  for cfg, want in ((config_lib.tiny(), (10.0, 10.0, 50.0)),
                    (config_lib.tiny(translation_scale=1.0, depth_scale=0.005),
                     (1.0, 1.0, 0.005))):
    enc = state_lib.make_networks(cfg, axis_name=None).encoder
    m = networks_lib.load_model(cfg)
    raw = np.zeros((1, enc.num_outputs), np.float32)
    at = m.num_shape + m.num_expression + m.num_albedo + 3     # pose: 3 angles, then t
    raw[0, at:at + 3] = [1.0, -2.0, 3.0]
    t = np.asarray(enc.postprocess(raw).translation[0])
    np.testing.assert_allclose(t, np.multiply(want, [1.0, -2.0, 3.0]), rtol=1e-6)
  # Stages must agree on the units (they change what the encoder's weights mean).
  check = trainer._check_compatible  # pylint: disable=protected-access
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="depth_scale"):
    check(config_lib.tiny(), config_lib.tiny(depth_scale=1.0), "x")


def test_em_stages_use_the_em_encoder_learning_rate():
  from focus_jax.train import state as state_lib
  params = dict(w=np.ones((3,), np.float32))
  grads = dict(w=np.asarray([1.0, -2.0, 0.5], np.float32))
  cfg = config_lib.tiny(encoder_lr=2e-3, em_encoder_lr=5e-4)
  for stage, lr in (("pretrain", 2e-3), ("unet", 2e-3), ("em", 5e-4), ("adapt", 5e-4)):
    tx = state_lib.make_networks(cfg.replace(stage=stage), axis_name=None).encoder_tx
    upd, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step moves every parameter by the learning rate.
    np.testing.assert_allclose(np.abs(upd["w"]), lr, rtol=1e-3)
  tx = state_lib.make_networks(cfg.replace(stage="em", em_encoder_lr=0.0),
                               axis_name=None).encoder_tx
  upd, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.abs(upd["w"]), 2e-3, rtol=1e-3)


def test_unet_sees_the_render_only_inside_the_face_and_learns_only_there():
  """Stage 3: outside the rendered face F the UNet input's render channels are black
  (a composited render equals the target there) and the pseudo label does not count."""
  import jax.numpy as jnp
  from focus_jax.train import state as state_lib, steps as steps_lib
  cfg = config_lib.tiny(image_size=32, batch_size=2, stage="unet")
  nets = state_lib.make_networks(cfg, axis_name=None)
  st = state_lib.init_state(cfg, nets)
  rng = np.random.default_rng(0)
  render = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  target = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  face = np.zeros((2, 32, 32), np.float32)
  face[:, 8:24, 6:26] = 1.0
  seg = jax.jit(lambda r, f: networks_lib.segment(cfg, nets, st.unet, r, jnp.asarray(target),
                                                  train=False, face=f)[1])
  other = np.where(face[..., None] > 0, render, rng.uniform(size=render.shape))
  np.testing.assert_array_equal(seg(render, face), seg(other.astype(np.float32), face))
  # Without F the background of the render does reach the UNet.
  assert np.abs(np.asarray(seg(render, None)) - np.asarray(seg(other.astype(np.float32),
                                                               None))).max() > 1e-4

  class FakeRender:  # the frozen encoder's render, fixed
    image, mask = jnp.asarray(render), jnp.asarray(face)

  def loss(pseudo):
    orig = steps_lib._frozen_render
    steps_lib._frozen_render = lambda *a: FakeRender
    try:
      fn = jax.pmap(lambda b: steps_lib._loss_unet(cfg, nets, st.unet["params"], st, b,
                                                    nets.model, None, jax.random.PRNGKey(0))[1],
                    axis_name=steps_lib.AXIS)
      return jax.device_get(fn(dict(image=target[None], pseudo=pseudo[None])))
    finally:
      steps_lib._frozen_render = orig

  pseudo = (rng.uniform(size=face.shape) > 0.5).astype(np.float32) * face
  a, b = loss(pseudo), loss(np.where(face > 0, pseudo, 1.0 - pseudo))
  np.testing.assert_allclose(a["bce"], b["bce"], rtol=1e-6)
  np.testing.assert_allclose(a["pseudo_fraction"], pseudo.sum() / face.sum(), rtol=1e-5)
  c = loss(np.where(face > 0, 1.0 - pseudo, pseudo))
  assert abs(float(c["bce"][0]) - float(a["bce"][0])) > 1e-4


def test_em_unet_neighbour_term_is_divided_by_the_misfit_prior():
  """The EM UNet loss with a misfit prior: σ multiplier 1 everywhere changes nothing,
  2 everywhere halves the neighbour term (zero off the face) and leaves the others."""
  from focus_jax import prior as prior_lib
  from focus_jax.train import state as state_lib, steps as steps_lib
  cfg = config_lib.tiny(image_size=32, batch_size=2, stage="em")
  nets = state_lib.make_networks(cfg, axis_name=None)
  st = state_lib.init_state(cfg, nets)
  v = nets.model.num_vertices
  rng = np.random.default_rng(0)
  batch = dict(image=rng.uniform(size=(1, 2, 32, 32, 3)).astype(np.float32),
               landmarks=np.full((1, 2, 68, 2), 16.0, np.float32))

  def terms(prior):
    fn = jax.pmap(lambda b: steps_lib._loss_em_unet(cfg, nets, st.unet["params"], st, b,
                                                     nets.model, None, jax.random.PRNGKey(0),
                                                     prior=prior)[1],
                  axis_name=steps_lib.AXIS)
    return jax.device_get(fn(batch))

  make = lambda s: prior_lib.MisfitPrior(sigma_scale=np.full(v, s, np.float32),
                                         rms=np.zeros(v, np.float32),
                                         count=np.zeros(v, np.int32))
  none, one, two = terms(None), terms(make(1.0)), terms(make(2.0))
  assert float(none["neighbour"][0]) > 1e-3
  np.testing.assert_allclose(one["neighbour"], none["neighbour"], rtol=1e-6)
  np.testing.assert_allclose(two["neighbour"], 0.5 * none["neighbour"], rtol=1e-5)
  for k in ("area", "binary"):
    np.testing.assert_allclose(two[k], none[k], rtol=1e-6)


# ----------------------------------------------------------------------- checkpoints


def _small_state(value=1.0):
  return dict(a=np.full((3,), value, np.float32), b=dict(c=np.arange(4, dtype=np.int32)))


def test_checkpoint_corrupt_latest_falls_back_and_other_config_is_refused(tmp_path):
  cfg = config_lib.tiny(keep_checkpoints=3)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), cfg)
  for step in (1, 2, 3):
    ck.save(step, _small_state(step))
  assert ck.steps() == [1, 2, 3]
  ck.save(4, _small_state(4))
  assert ck.steps() == [2, 3, 4]            # keep-last-K
  step, state = ck.restore_latest(_small_state())
  assert step == 4 and state["a"][0] == 4
  ck.close()
  # Corrupt every data file of the newest checkpoint's state.
  for root, _, files in os.walk(tmp_path / "ck" / "4" / "state"):
    for f in files:
      if not f.startswith("_") or "manifest" in f or f.endswith("METADATA"):
        p = Path(root) / f
        p.write_bytes(b"garbage" * 3)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), cfg)
  with pytest.warns(UserWarning, match="unreadable"):
    step, state = ck.restore_latest(_small_state())
  assert step == 3 and state["a"][0] == 3
  ck.close()
  other = ckpt_lib.Checkpointer(str(tmp_path / "ck"), cfg.replace(unet_width=16))
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="unet_width"):
    other.restore_latest(_small_state())
  other.close()


# ----------------------------------------------------------------------- logs


def test_event_file_round_trip_and_tiles(tmp_path):
  log = logs.MetricsLog(str(tmp_path), ("loss", "area"))
  log.write(1, "em_unet", dict(loss=2.5, area=0.25), 0.1)
  log.write(2, "em_unet", dict(loss=1.5), 0.1)
  rng = np.random.default_rng(0)
  img = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
  mask = (rng.uniform(size=(2, 8, 8)) > 0.5).astype(np.float32)
  t = logs.tile(img, img, np.ones((2, 8, 8)), mask)
  assert t.shape == (16, 32, 3)
  assert os.path.exists(log.image(2, t))
  log.close()
  events = logs.read_events(log.events.path)
  assert events[0] == (1, pytest.approx({"em_unet/loss": 2.5, "em_unet/area": 0.25}))
  m = logs.read_metrics(str(tmp_path / "metrics.csv"))
  assert list(m["step"]) == [1, 2] and np.isnan(m["area"][1])
  assert logs.crc32c(b"123456789") == 0xE3069283   # the CRC-32C check value


# ----------------------------------------------------------------------- end to end


def test_help_lists_every_flag():
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "train_em.py"), "--help"],
                        capture_output=True, text=True, env=dict(os.environ,
                                                                 PYTHONPATH=str(REPO)))
  for flag in ("--em_unet_steps", "--w_neighbour", "--identity_weights", "--compute_dtype",
               "--init_from", "--coordinator_address", "--workdir"):
    assert flag in proc.stdout, flag


@pytest.mark.slow
def test_cli_pretrain_resume_is_bit_identical(tiny_data, jax_cache,
                                                                   tmp_path):
  common = [f"--data_dir={tiny_data}", "--checkpoint_every=2", "--image_every=3"]
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  run_cli("train_encoder.py", *common, f"--workdir={whole}", "--num_steps=6", cache=jax_cache)
  # "Killed" after step 3 (its last checkpoint), then restarted with the full length.
  run_cli("train_encoder.py", *common, f"--workdir={parts}", "--num_steps=3", cache=jax_cache)
  proc = run_cli("train_encoder.py", *common, f"--workdir={parts}", "--num_steps=6",
                 cache=jax_cache)
  assert "resuming" in proc.stdout + proc.stderr
  a_enc, _, a_step = latest_state(whole)
  b_enc, _, b_step = latest_state(parts)
  assert a_step == b_step == 6
  for x, y in zip(jax.tree_util.tree_leaves(a_enc), jax.tree_util.tree_leaves(b_enc)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
  m = logs.read_metrics(str(whole / "metrics.csv"))
  assert list(m["step"]) == [1, 2, 3, 4, 5, 6]
  assert np.all(m["finite"] == 1)
  assert (whole / "images" / "step_000003.png").exists()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(whole))
  # A different network config is refused with a clear message.
  proc = run_cli("train_encoder.py", *common, f"--workdir={whole}", "--num_steps=7",
                 "--encoder_width=16", cache=jax_cache, check=False)
  assert proc.returncode != 0 and "encoder_width" in proc.stderr


def test_non_finite_steps_are_skipped_then_stop_the_run(tiny_data, tmp_path, monkeypatch):
  from focus_jax.train import steps as steps_lib

  def cheap_loss(config, nets, params, state, batch, model, identity, rng):
    # A cheap stand-in for the stage-1 loss: same plumbing, seconds to compile.
    total = sum(jax.numpy.sum(x ** 2) for x in jax.tree_util.tree_leaves(params)) * 1e-3
    total = total + 0.0 * jax.numpy.mean(batch["image"])
    return total, dict(photometric=total), dict(encoder=state.encoder["batch_stats"])

  monkeypatch.setitem(steps_lib._LOSSES, "pretrain", cheap_loss)
  cfg = config_lib.tiny(num_steps=20, fault_step=3, max_bad_steps=4, progress=False,
                        checkpoint_every=100, image_every=100)
  with pytest.raises(trainer.TrainingDiverged, match="4 non-finite steps in a row"):
    trainer.train(cfg, str(tmp_path / "run"), str(tiny_data))
  enc, _, step = latest_state(tmp_path / "run")
  assert step == 7
  m = logs.read_metrics(str(tmp_path / "run" / "metrics.csv"))
  assert list(m["finite"]) == [1, 1, 1, 0, 0, 0, 0]
  # The saved networks are those after step 3, before the fault: rerun 3 clean steps.
  clean = trainer.train(cfg.replace(num_steps=3, fault_step=-1), str(tmp_path / "clean"),
                        str(tiny_data))
  for x, y in zip(jax.tree_util.tree_leaves(enc), jax.tree_util.tree_leaves(
      clean.state.encoder)):
    np.testing.assert_array_equal(x, y)


def test_predict_dataset_compiles_once_and_pads_consistently(tiny_data):
  from focus_jax.train import data as data_lib, state as state_lib
  cfg = config_lib.tiny(image_size=32, batch_size=2, progress=False)
  nets = state_lib.make_networks(cfg, axis_name=None)
  st = state_lib.to_host(state_lib.init_state(cfg, nets))
  source = data_lib.AlignedSource(data_lib.open_data(str(tiny_data), "train"), 32)
  kw = dict(with_unet=False, keys=("face", "vertices"))
  a = trainer.predict_dataset(cfg, st.encoder, st.unet, source, indices=[0, 1, 2], **kw)
  # Another call (other run-only fields, a padded batch of one) reuses the compiled
  # function and gives example 2 the same prediction as in the full batch above.
  b = trainer.predict_dataset(cfg.replace(num_steps=7), st.encoder, st.unet, source,
                              indices=[2], **kw)
  assert a["face"].shape == (3, 32, 32) and list(b["index"]) == [2]
  np.testing.assert_allclose(b["vertices"][0], a["vertices"][2], rtol=1e-6, atol=1e-4)
  np.testing.assert_array_equal(b["face"][0], a["face"][2])
  _, fn = trainer._predict_fn(cfg, False, None)  # pylint: disable=protected-access
  assert fn._cache_size() == 1  # pylint: disable=protected-access


def test_evaluate_reports_per_image_3d_errors_in_dataset_order(tiny_data, tmp_path):
  import jax.numpy as jnp
  from focus_jax.eval import mesh_metrics
  from focus_jax.morphable import model as model_lib
  from focus_jax.train import data as data_lib, stages, state as state_lib
  cfg = config_lib.tiny(image_size=32, batch_size=2, progress=False)
  nets = state_lib.make_networks(cfg, axis_name=None)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"), cfg)
  ck.save(1, state_lib.to_host(state_lib.init_state(cfg, nets)))
  ck.close()
  ev = stages.evaluate(cfg, str(tmp_path / "run"), str(tiny_data), "train", with_unet=False,
                       max_examples=3)
  # The fresh encoder's head is zero: every prediction is the mean face, so the
  # per-image errors are the mean face's against each image's own true mesh.
  m = nets.model
  mean = np.asarray(model_lib.vertices(m, jnp.zeros((m.num_shape,)),
                                       jnp.zeros((m.num_expression,))))
  ds = data_lib.open_data(str(tiny_data), "train")
  with np.load(tiny_data / "params.npz") as z:
    row = {str(n): i for i, n in enumerate(z["names"])}
    truth = [z["vertices"][row[ds[i].name]] for i in range(3)]
  expect = []
  for g in truth:
    t = mesh_metrics.similarity_transform(mean, g)
    expect.append(np.median(np.linalg.norm(mesh_metrics.apply_transform(mean, t) - g, axis=-1)))
  assert len(set(np.round(expect, 6))) == 3     # distinct faces: the order is checked
  np.testing.assert_allclose(ev["per_image_3d_mm"], expect, rtol=1e-5)
  assert ev["median_3d_mm"] == pytest.approx(np.median(expect))


@pytest.mark.slow
def test_cli_every_stage_end_to_end(tiny_data, jax_cache, tmp_path):
  root = tmp_path / "focus"
  d = lambda name: f"--workdir={root / name}"
  data = f"--data_dir={tiny_data}"
  run_cli("build_prior.py", f"--out={root / 'prior' / 'prior.npz'}", "--num_faces=4",
          cache=jax_cache)
  run_cli("train_encoder.py", data, d("pretrain"), "--num_steps=4", cache=jax_cache)
  run_cli("make_pseudo_masks.py", data, d("pseudo"), f"--init_from={root / 'pretrain'}",
          f"--prior={root / 'prior' / 'prior.npz'}", cache=jax_cache)
  assert (root / "pseudo" / "pseudo_masks_p0.npz").exists()
  run_cli("train_unet.py", data, d("unet"), f"--init_from={root / 'pretrain'}",
          f"--pseudo_dir={root / 'pseudo'}", "--num_steps=3", cache=jax_cache)
  run_cli("train_em.py", data, d("em"), f"--init_from={root / 'unet'}", "--num_steps=9",
          cache=jax_cache)
  m = logs.read_metrics(str(root / "em" / "metrics.csv"))
  assert list(m["phase"]) == ["em_unet"] * 3 + ["em_encoder"] * 5 + ["em_unet"]
  run_cli("adapt.py", data, d("adapt"), f"--init_from={root / 'em'}", "--num_steps=2",
          cache=jax_cache)
  assert (root / "adapt" / "export" / "tile.png").exists()
  proc = run_cli("run_pipeline.py", data, f"--workdir={root / 'chain'}", "--pretrain_steps=2",
                 "--unet_steps=2", "--em_steps=2", cache=jax_cache)
  assert '"em": 2' in proc.stdout
  # Losses go down over a longer stage-1 run.
  run_cli("train_encoder.py", data, d("long"), "--num_steps=40", "--log_every=1",
          cache=jax_cache)
  m = logs.read_metrics(str(root / "long" / "metrics.csv"))
  assert np.mean(m["loss"][-8:]) < np.mean(m["loss"][:8])


def test_example_cache_serves_identical_read_only_examples_within_its_budget(tiny_data):
  from focus_jax.train import data as data_lib
  ds = data_lib.open_data(str(tiny_data), "train")
  plain = data_lib.AlignedSource(ds, 32)
  cached = data_lib.AlignedSource(ds, 32, cache_mb=64)
  loads = []
  cached._load = lambda i, f=cached._load: loads.append(i) or f(i)  # pylint: disable=protected-access
  for _ in range(2):
    for i in range(len(ds)):
      a, b = plain.load(i), cached.load(i)
      assert sorted(a) == sorted(b)
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  assert loads == list(range(len(ds)))          # each example decoded once
  with pytest.raises(ValueError):
    cached.load(0)["image"][0, 0, 0] = 1.0       # cached arrays are read-only
  one = sum(v.nbytes for v in plain.load(0).values() if isinstance(v, np.ndarray))
  small = data_lib.AlignedSource(ds, 32, cache_mb=1.5 * one / 2**20)
  small._load = lambda i, f=small._load: loads.append(i) or f(i)  # pylint: disable=protected-access
  loads.clear()
  for _ in range(2):
    for i in range(3):
      small.load(i)
  assert loads == [0, 1, 2, 1, 2]               # only the first fits the budget


def test_shape_coefficients_share_units_across_encoder_model_and_generator():
  """Issue 7: the encoder's shape/expression outputs, the truncated training model and the
  synthetic generator's coefficients are all in the model's std units (N(0, 1) identity),
  so the coefficient regulariser and the 3D scoring see the same numbers."""
  from focus_jax import morphable
  from focus_jax.data import synthetic
  from focus_jax.morphable import model as model_lib
  from focus_jax.train import state as state_lib
  cfg = config_lib.tiny()
  nets = state_lib.make_networks(cfg, axis_name=None)
  m = nets.model
  ks, ke = m.num_shape, m.num_expression
  rng = np.random.default_rng(0)
  raw = rng.normal(size=(2, nets.encoder.num_outputs)).astype(np.float32)
  out = nets.encoder.postprocess(raw)
  np.testing.assert_array_equal(np.asarray(out.shape), raw[:, :ks])
  np.testing.assert_array_equal(np.asarray(out.expression), raw[:, ks:ks + ke])
  # The training model's leading components are the generator's model's, unscaled.
  full = morphable.builtin(resolution=cfg.model_resolution)
  pad = lambda x, k: np.concatenate([x, np.zeros((x.shape[0], k - x.shape[1]), x.dtype)], 1)
  np.testing.assert_allclose(
      np.asarray(model_lib.vertices(m, out.shape, out.expression)),
      np.asarray(model_lib.vertices(full, pad(raw[:, :ks], full.num_shape),
                                    pad(raw[:, ks:ks + ke], full.num_expression))),
      atol=1e-3)
  # The generator draws N(0, shape_std) coefficients of that model.
  gen = synthetic.SyntheticFaces(full, synthetic.SyntheticConfig(size=cfg.image_size), seed=0)
  shapes = np.stack([gen.params(i)["shape"] for i in range(200)])
  assert shapes.shape[1] == full.num_shape
  assert abs(shapes[:, :ks].std() - gen.config.shape_std) < 0.1
  assert abs(shapes[:, :ks].mean()) < 0.05
