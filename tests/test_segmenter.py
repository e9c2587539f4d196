"""The real-face segmenter (nets/segmenter.py) and the fit's per-pixel inlier prior.

The segmenter's file format is checked against a freshly built network; the fit's
``inlier_prior`` is checked by what it must do: a neutral prior changes nothing, a
prior that calls a clean region "occluder" makes the fit label it outlier (the
colour model and the residual alone never would), and the first light follows it.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import focus_jax as fj
from focus_jax import fitting
from focus_jax.fitting import inliers as inliers_lib
from focus_jax.nets import segmenter
from focus_jax.nets.weights import WeightsError
from tests.test_fitting import MIN_CFG, SIZE, _scene

TINY = segmenter.Segmenter(input_size=32, base_width=4, depth=3)


@pytest.fixture(scope="module")
def model():
  return fj.morphable.builtin(resolution=37, num_shape=20, num_expression=10, num_albedo=20)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
  variables = TINY.init(jax.random.PRNGKey(3))
  # Non-trivial batch statistics so that a loader mixing them up is caught.
  variables = jax.tree_util.tree_map(
      lambda a: a + 0.01 * jnp.arange(a.size, dtype=a.dtype).reshape(a.shape), variables)
  path = str(tmp_path_factory.mktemp("seg") / "tiny.npz")
  segmenter.save(path, TINY, variables)
  return path, variables


def test_save_load_round_trip_gives_the_same_probabilities(tiny_file):
  path, variables = tiny_file
  loaded = segmenter.load(path)
  assert (loaded.input_size, loaded.base_width, loaded.depth) == (32, 4, 3)
  assert path in loaded.source and "sha256" in loaded.source
  crops = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3))
  want = segmenter.face_probability(TINY, crops, variables)
  got = segmenter.face_probability(loaded, crops)
  assert got.shape == (2, 64, 64)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _rewrite(src, dst, edit):
  with np.load(src, allow_pickle=False) as z:
    files = {k: z[k] for k in z.files}
  edit(files)
  np.savez(dst, **files)
  return dst


def test_load_refuses_broken_files_naming_file_and_array(tiny_file, tmp_path):
  path, _ = tiny_file
  name = "v/params/down1/conv1/kernel"
  cases = {
      "missing": (lambda f: f.pop(name), "missing array v/params/down1/conv1/kernel"),
      "shape": (lambda f: f.__setitem__(name, np.zeros((3, 3))), "has shape"),
      "nan": (lambda f: f[name].__setitem__((0, 0, 0, 0), np.nan), "not finite"),
      "extra": (lambda f: f.__setitem__("v/params/evil", np.zeros(1)), "unexpected array"),
      "format": (lambda f: f.__setitem__("meta", np.asarray('{"format": "x"}')), "format"),
      "huge": (lambda f: f.__setitem__("meta", np.asarray(
          '{"format": "focus-jax-segmenter-1", "input_size": 96, "base_width": 100000, '
          '"depth": 4}')), "implausible"),
  }
  for case, (edit, message) in cases.items():
    bad = _rewrite(path, str(tmp_path / f"{case}.npz"), edit)
    with pytest.raises(WeightsError, match=message) as info:
      segmenter.load(bad)
    assert bad in str(info.value), case
  bomb = tmp_path / "bomb.npz"     # 100 MiB of zeros packs into ~100 kB
  np.savez_compressed(bomb, meta=np.asarray("{}"), big=np.zeros(100 * 2**20, np.uint8))
  with pytest.raises(WeightsError, match="unpacks to more than"):
    segmenter.load(str(bomb))
  pickled = tmp_path / "pickled.npz"   # an object array would need the unpickler
  np.savez(pickled, meta=np.asarray('{"format": "focus-jax-segmenter-1"}'),
           evil=np.array([{"x": 1}], dtype=object))
  with pytest.raises(WeightsError, match="cannot read") as info:
    segmenter.load(str(pickled))
  assert str(pickled) in str(info.value)
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"not a zip")
  with pytest.raises(WeightsError, match="cannot read"):
    segmenter.load(str(junk))
  with pytest.raises(WeightsError, match="cannot read"):
    segmenter.load(str(tmp_path / "absent.npz"))


def test_save_refuses_non_finite_weights_and_leaves_nothing(tmp_path):
  variables = TINY.init(jax.random.PRNGKey(0))
  variables = jax.tree_util.tree_map(lambda a: a * jnp.nan, variables)
  out = tmp_path / "w.npz"
  with pytest.raises(ValueError, match="non-finite"):
    segmenter.save(str(out), TINY, variables)
  assert os.listdir(tmp_path) == []


def test_prior_logit_moves_the_posterior():
  residual = jnp.full((8, 8), 0.02)
  face = jnp.ones((8, 8), bool)
  sigma = jnp.ones((8, 8))
  cfg = fitting.FitConfig().estep
  base = inliers_lib.inlier_posterior(residual, face, sigma, cfg)
  logit = jnp.zeros((8, 8)).at[:, :4].set(-40.0)
  moved = inliers_lib.inlier_posterior(residual, face, sigma, cfg, prior_logit=logit)
  assert float(base.min()) > 0.5
  assert float(moved[:, :2].max()) < 0.05 and float(moved[:, 6:].min()) > 0.5
  np.testing.assert_array_equal(
      inliers_lib.inlier_posterior(residual, face, sigma, cfg, prior_logit=jnp.zeros((8, 8))),
      base)


def test_neutral_prior_changes_nothing_and_a_firm_one_is_obeyed(model):
  scene = _scene(model, seed=1, occlude=True)
  free = fitting.fit(model, scene["image"], scene["landmarks"], config=MIN_CFG)
  neutral = fitting.fit(model, scene["image"], scene["landmarks"], config=MIN_CFG,
                        inlier_prior=np.full((SIZE, SIZE), 0.5, np.float32))
  np.testing.assert_allclose(np.asarray(neutral.inlier_probability),
                             np.asarray(free.inlier_probability), atol=2e-3)
  np.testing.assert_allclose(neutral.shape, free.shape, atol=2e-3)
  # Clean skin on the left half called "occluder" by the prior: the free fit keeps it,
  # the prior-led fit drops it; the right half stays face.
  prior = np.full((SIZE, SIZE), 0.9, np.float32)
  prior[:, :SIZE // 2] = 0.01
  led = fitting.fit(model, scene["image"], scene["landmarks"], config=MIN_CFG,
                    inlier_prior=prior)
  face = np.asarray(led.mask) > 0.5
  left, right = face.copy(), face.copy()
  left[:, SIZE // 2 - 2:] = False
  right[:, :SIZE // 2 + 2] = False
  right &= ~scene["occ"]
  led_in, free_in = np.asarray(led.inlier) > 0.5, np.asarray(free.inlier) > 0.5
  assert free_in[left].mean() > 0.6
  assert led_in[left].mean() < 0.2
  assert led_in[right].mean() > 0.6
  # Zero weight: the prior is ignored.
  off = fitting.fit(model, scene["image"], scene["landmarks"], inlier_prior=prior,
                    config=dataclasses.replace(MIN_CFG, inlier_prior_weight=0.0))
  assert (np.asarray(off.inlier) > 0.5)[left].mean() > 0.6


def test_first_light_follows_the_prior(model):
  """A green box over most of the face: with the prior marking it, the first light
  is solved on the skin only and the box is an outlier from the first E-step on."""
  scene = _scene(model, seed=2)
  image = scene["image"].copy()
  box = np.zeros((SIZE, SIZE), bool)
  box[18:56, 10:54] = True
  box &= scene["face"]
  image[box] = [0.1, 0.8, 0.2]
  prior = np.where(box, 0.02, 0.98).astype(np.float32)
  cfg = dataclasses.replace(MIN_CFG, rounds=0)
  led = fitting.fit(model, image, scene["landmarks"], config=cfg, inlier_prior=prior,
                    inlier_mask=None)
  tint = np.asarray(led.light).sum(0)
  tint = tint / tint.mean()
  assert tint[1] < 1.15, tint            # not pulled to the box's green
  assert (np.asarray(led.inlier) > 0.5)[box].mean() < 0.1


def test_non_finite_prior_pixels_are_neutral(model):
  scene = _scene(model, seed=1, occlude=True)
  prior = np.full((SIZE, SIZE), 0.5, np.float32)
  holes = prior.copy()
  holes[::3, ::2] = np.nan
  a = fitting.fit(model, scene["image"], scene["landmarks"], config=MIN_CFG, inlier_prior=prior)
  b = fitting.fit(model, scene["image"], scene["landmarks"], config=MIN_CFG, inlier_prior=holes)
  assert np.isfinite(np.asarray(b.shape)).all()
  np.testing.assert_array_equal(np.asarray(b.inlier), np.asarray(a.inlier))


def test_fit_rejects_a_misshapen_prior(model):
  with pytest.raises(ValueError, match="inlier_prior"):
    fitting.fit(model, np.zeros((SIZE, SIZE, 3)), np.zeros((68, 2)),
                inlier_prior=np.ones((SIZE, SIZE + 1)))


@pytest.mark.slow
def test_training_script_writes_a_loadable_segmenter(tmp_path, shared_dir):
  """experiments/train_segmenter.py end to end on two tune photos (few examples, steps):
  the weights it writes load, are finite and give a probability map; the benchmark's
  occluder stream (seed 0) is refused."""
  import subprocess
  import sys
  from pathlib import Path
  from focus_jax.data import detect
  if not (shared_dir / "data" / "real_faces").is_dir():
    pytest.skip("shared real_faces photos missing")
  if not detect.available():
    pytest.skip("dlib / face-recognition-models not installed")
  script = Path(__file__).resolve().parents[1] / "experiments" / "train_segmenter.py"
  out = tmp_path / "seg.npz"
  common = [sys.executable, str(script), "--data", str(shared_dir / "data" / "real_faces"),
            "--exclude_people", "p01,p03,p08,p11", "--samples", "6", "--steps", "3",
            "--batch", "2", "--input_size", "32", "--base_width", "4", "--depth", "3"]
  refused = subprocess.run(common + ["--out", str(out), "--seed", "0"], capture_output=True,
                           text=True, check=False)
  assert refused.returncode == 2 and "benchmark" in refused.stderr and not out.exists()
  done = subprocess.run(common + ["--out", str(out)], capture_output=True, text=True,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "2 people" in done.stdout
  seg = segmenter.load(str(out))
  prob = segmenter.face_probability(seg, jnp.full((1, 64, 64, 3), 0.5))
  assert prob.shape == (1, 64, 64) and bool(jnp.all(jnp.isfinite(prob)))
