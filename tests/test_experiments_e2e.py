"""Every ``experiments/`` script end to end, as a user runs it (a subprocess each, the
micro configuration's flags, a few steps), with assertions on what it wrote.

The scripts chain like the pipeline: make_synthetic (tests.train_fixtures.micro_data)
→ train_encoder → build_prior → make_pseudo_masks → train_unet → train_em → adapt;
run_pipeline chains them again in one process; plot_losses draws two of the runs;
detect_landmarks reads a real photo. (export_model.py: tests/test_cli.py.)
Compiled programs are shared through the session's persistent compilation cache.
"""

import json
import shutil

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from focus_jax.data import detect
from focus_jax.data import landmarks as lm_lib
from focus_jax.train import logs
from focus_jax.train import state as state_lib
from focus_jax.train import trainer
from tests import train_setup
from tests.train_fixtures import (astronaut_dir, compile_cache, jax_cache_dir, micro_data,  # pylint: disable=unused-import
                                  micro_runs)

pytestmark = pytest.mark.usefixtures("compile_cache")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("e2e")


def run(script, *args, cache):
  return train_setup.run_script(script, *args, cache=cache)


def assert_logged(workdir, steps, phases=None):
  m = logs.read_metrics(str(workdir / "metrics.csv"))
  assert list(m["step"]) == list(steps)
  assert np.all(np.isfinite(m["loss"])) and np.all(m["finite"] == 1)
  if phases is not None:
    assert list(m["phase"]) == phases
  return m


def printed_json(stdout: str):
  """The JSON object a script printed last (after its progress lines)."""
  lines = stdout.splitlines()
  start = max(i for i, l in enumerate(lines) if l == "{")
  return json.loads("\n".join(lines[start:]))


def leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# ------------------------------------------------------------------ data


def test_make_synthetic_writes_the_reference_layout(micro_data):
  table = lm_lib.read_landmarks_csv(micro_data / "train_landmarks.csv")
  assert table.names == tuple(f"{i:06d}.png" for i in range(5))
  for name, lms in zip(table.names, table.landmarks):
    image = iio.imread(micro_data / "images" / name)
    mask = iio.imread(micro_data / "images" / name.replace(".png", "_visible_skin_mask.png"))
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert set(np.unique(mask)) == {0, 255}               # some visible skin, some not
    assert np.all(np.isfinite(lms)) and np.all((lms > -8) & (lms < 40))
  with np.load(micro_data / "params.npz") as p:
    assert p["vertices"].shape[0] == 5 and np.all(np.isfinite(p["vertices"]))
    assert np.all((p["coverage"] >= 0) & (p["coverage"] <= 1))


# ------------------------------------------------------------------ stage 1


@pytest.fixture(scope="module")
def encoder_run(root, micro_data, jax_cache_dir):
  work = root / "pretrain"
  run("train_encoder.py", f"--data_dir={micro_data}", f"--workdir={work}", "--num_steps=5",
      "--checkpoint_every=2", "--image_every=5", cache=jax_cache_dir)
  return work


def test_train_encoder_writes_a_resumable_run_equal_to_the_in_process_one(
    encoder_run, micro_runs, tmp_path):
  assert_logged(encoder_run, range(1, 6), ["pretrain"] * 5)
  assert any(f.name.startswith("events.out.tfevents") for f in encoder_run.iterdir())
  tile = iio.imread(encoder_run / "images" / "step_000005.png")
  assert tile.ndim == 3 and tile.shape[2] == 3 and tile.std() > 5
  assert sorted(int(p.name) for p in (encoder_run / "checkpoints").iterdir()
                if p.name.isdigit()) == [2, 4, 5]
  # The script's run, in its own process, holds the same bits as the same run made in
  # this process (tests.train_fixtures.micro_runs).
  cfg = train_setup.micro(stage="pretrain", num_steps=5)
  step_a, a = train_setup.saved_state(encoder_run, cfg)
  step_b, b = train_setup.saved_state(micro_runs["pretrain"], cfg)
  assert step_a == step_b == 5
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_array_equal(x, y)
  # Resumable: a longer run continues from its last checkpoint.
  copy = tmp_path / "pretrain"
  shutil.copytree(encoder_run, copy)
  more = trainer.train(cfg.replace(num_steps=6), str(copy), str(micro_runs["data"]))
  assert more.resumed_from == 5 and more.step == 6 and more.history["step"] == [6]
  assert_logged(copy, range(1, 7))


# ------------------------------------------------------------------ prior, pseudo masks


@pytest.fixture(scope="module")
def prior_file(root, jax_cache_dir):
  out = root / "prior" / "misfit_prior.npz"
  run("build_prior.py", f"--out={out}", "--num_faces=3", cache=jax_cache_dir)
  return out


def test_build_prior_writes_a_misfit_prior(prior_file):
  from focus_jax import prior as prior_lib
  p = prior_lib.load(prior_file, state_lib.make_networks(train_setup.micro()).model)
  seen = p.count >= 3                     # vertices visible in all three fits (~25 %)
  assert p.sigma_scale.shape == (p.count.size,) and seen.mean() > 0.1
  assert np.all(np.isfinite(p.rms)) and np.all(p.rms[seen] > 0)
  assert np.all((p.sigma_scale >= 1) & (p.sigma_scale <= 3))
  assert np.all(p.sigma_scale[~seen] == 1)
  # σ multiplier = RMS / median RMS of the seen vertices, clipped below at 1: about
  # half of them are above 1.
  assert 0.2 < np.mean(p.sigma_scale[seen] > 1) < 0.7


@pytest.fixture(scope="module")
def pseudo_dir(root, encoder_run, prior_file, micro_data, jax_cache_dir):
  out = root / "pseudo"
  run("make_pseudo_masks.py", f"--data_dir={micro_data}", f"--init_from={encoder_run}",
      f"--workdir={out}", f"--prior={prior_file}", cache=jax_cache_dir)
  return out


def test_make_pseudo_masks_writes_a_mask_per_example(pseudo_dir):
  with np.load(pseudo_dir / "pseudo_masks_p0.npz") as z:
    index, masks = z["index"], z["mask"]
  assert sorted(index.tolist()) == list(range(5)) and masks.shape == (5, 32, 32)
  assert set(np.unique(masks)) <= {0, 255} and 0 < np.mean(masks == 255) < 1
  summary = json.loads((pseudo_dir / "summary.json").read_text())
  assert summary["examples"] == 5 and summary["encoder_step"] == 5
  assert 0 < summary["inlier_fraction_of_face"] < 1 and summary["prior"].endswith(".npz")
  assert iio.imread(pseudo_dir / "tile.png").std() > 5


# ------------------------------------------------------------------ stages 3 and 4


@pytest.fixture(scope="module")
def unet_run(root, encoder_run, pseudo_dir, micro_data, jax_cache_dir):
  work = root / "unet"
  run("train_unet.py", f"--data_dir={micro_data}", f"--workdir={work}",
      f"--init_from={encoder_run}", f"--pseudo_dir={pseudo_dir}", "--num_steps=2",
      cache=jax_cache_dir)
  return work


def test_train_unet_trains_the_unet_on_the_frozen_encoder(unet_run, encoder_run):
  m = assert_logged(unet_run, [1, 2], ["unet"] * 2)
  assert np.all((m["pseudo_fraction"] > 0) & (m["pseudo_fraction"] < 1))
  step, st = train_setup.saved_state(unet_run, train_setup.micro(stage="unet", num_steps=2))
  _, before = train_setup.saved_state(encoder_run,
                                      train_setup.micro(stage="pretrain", num_steps=5))
  assert step == 2
  for x, y in zip(leaves(st.encoder), leaves(before.encoder)):
    np.testing.assert_array_equal(x, y)
  assert max(np.abs(x - y).max() for x, y in zip(leaves(st.unet["params"]),
                                                 leaves(before.unet["params"]))) > 1e-4


@pytest.fixture(scope="module")
def em_run(root, unet_run, micro_data, jax_cache_dir):
  work = root / "em"
  run("train_em.py", f"--data_dir={micro_data}", f"--workdir={work}",
      f"--init_from={unet_run}", "--num_steps=3", cache=jax_cache_dir)
  return work


def test_train_em_alternates_the_blocks_and_moves_both_networks(em_run, unet_run):
  m = assert_logged(em_run, [1, 2, 3], ["em_unet", "em_unet", "em_encoder"])
  assert np.all(np.isfinite(m["neighbour"][:2])) and np.all(np.isfinite(m["reconstruction"][2:]))
  step, st = train_setup.saved_state(em_run, train_setup.micro(stage="em", num_steps=3))
  _, before = train_setup.saved_state(unet_run, train_setup.micro(stage="unet", num_steps=2))
  assert step == 3
  for net in ("encoder", "unet"):
    assert max(np.abs(x - y).max() for x, y in zip(leaves(getattr(st, net)["params"]),
                                                   leaves(getattr(before, net)["params"]))) > 1e-5


def test_adapt_exports_fits_and_masks_of_the_target_set(root, em_run, micro_data,
                                                        jax_cache_dir):
  work = root / "adapt"
  proc = run("adapt.py", f"--data_dir={micro_data}", f"--workdir={work}",
             f"--init_from={em_run}", "--num_steps=1", cache=jax_cache_dir)
  assert printed_json(proc.stdout)["examples"] == 5
  assert_logged(work, [1], ["em_unet"])
  with np.load(work / "export" / "predictions.npz") as z:
    assert sorted(z["names"].tolist()) == [f"{i:06d}.png" for i in range(5)]
    mask, face, lms = z["mask"], z["face"], z["landmarks"]
  assert mask.shape == face.shape == (5, 32, 32) and set(np.unique(mask)) <= {0, 1}
  assert face.mean() > 0.05 and np.all(np.isfinite(lms)) and lms.shape == (5, 68, 2)
  assert iio.imread(work / "export" / "tile.png").std() > 5


# ------------------------------------------------------------------ the chain, plots


def test_run_pipeline_chains_every_stage_and_resumes(root, micro_data, jax_cache_dir):
  work = root / "chain"

  def pipeline(em_steps):
    return printed_json(run("run_pipeline.py", f"--data_dir={micro_data}", f"--workdir={work}",
                            "--pretrain_steps=1", "--unet_steps=1", f"--em_steps={em_steps}",
                            "--adapt_steps=1", f"--target_dir={micro_data}",
                            cache=jax_cache_dir).stdout)

  out = pipeline(1)
  assert {k: out[k] for k in ("pretrain", "unet", "em", "adapt")} == dict(
      pretrain=1, unet=1, em=1, adapt=1)
  assert out["pseudo"]["examples"] == 5 and out["adapt_export"]["examples"] == 5
  for stage in ("pretrain", "unet", "em", "adapt"):
    assert_logged(work / stage, [1])
  assert (work / "pseudo" / "pseudo_masks_p0.npz").exists()
  # Run again with one more EM step: the finished stages resume without a step, EM
  # takes one more.
  out = pipeline(2)
  assert (out["pretrain"], out["unet"], out["em"]) == (1, 1, 2)
  assert_logged(work / "pretrain", [1])
  assert_logged(work / "em", [1, 2], ["em_unet", "em_unet"])


def test_plot_losses_draws_the_runs(root, encoder_run, em_run):
  out = root / "curves.png"
  train_setup.run_script("plot_losses.py", f"--runs={encoder_run},{em_run}", f"--out={out}",
                         micro_flags=False)
  image = iio.imread(out)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200
  assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20   # drawn curves


@pytest.mark.skipif(not detect.available(), reason="dlib / face-recognition-models not installed")
def test_detect_landmarks_writes_the_cache_of_a_real_photo(astronaut_dir):
  folder = astronaut_dir()
  proc = train_setup.run_script("detect_landmarks.py", f"--images={folder}",
                                micro_flags=False)
  assert "1 images: 1 found by HOG" in proc.stdout
  table = lm_lib.read_landmarks_csv(folder / "detected_landmarks.csv")
  assert table.names == ("astronaut.png",)
  lms = table.landmarks[0]
  # The astronaut's face: eyes above the mouth, inside the upper middle of the photo.
  assert np.all(np.isfinite(lms))
  assert lms[36:48, 1].mean() < lms[48:68, 1].mean()
  assert 120 < lms[:, 0].mean() < 300 and 50 < lms[:, 1].mean() < 250
