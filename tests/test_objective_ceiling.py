"""The stage-1 objective as a function of encoder outputs, and the per-image optimum
benchmark built on it (benchmarks/objective_ceiling.py, issue 22)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from tests import benchmark_modules
from focus_jax import losses
from focus_jax.autoencoder import networks as networks_lib
from focus_jax.train import config as config_lib
from focus_jax.train import state as state_lib
from focus_jax.train import steps as steps_lib



@pytest.fixture(scope="module")
def ceiling():
  return benchmark_modules.load("objective_ceiling")


@pytest.fixture(scope="module")
def setup():
  cfg = config_lib.tiny(batch_size=2).replace(image_size=48)
  nets = state_lib.make_networks(cfg, axis_name=None)
  return cfg, nets


def _truth(cfg, nets, c2=2.5):
  """Rendered faces of the config's own model: raw outputs with shape c2 = ±c2 and a
  small yaw, their images [2, S, S, 3] and landmarks [2, 68, 2]."""
  raw = np.zeros((2, nets.encoder.num_outputs), np.float32)
  raw[0, 1], raw[1, 1] = c2, -c2
  off = cfg.num_shape + cfg.num_expression + cfg.num_albedo
  raw[:, off + 1] = [0.3, -0.2]   # yaw (× rotation_scale rad)
  out = nets.encoder.postprocess(jnp.asarray(raw))
  background = jnp.full((2, cfg.image_size, cfg.image_size, 3), 0.3)
  r = networks_lib.render_faces(cfg, nets, nets.model, out, background)
  return raw, r.image, r.landmarks


def test_objective_terms_and_weights(setup):
  """pretrain_objective (which the stage-1 step calls on the encoder's outputs) is the
  weighted sum of its terms; the landmark term vanishes at the truth; its L2 variant
  outside pmap is the face-pixel mean."""
  cfg, nets = setup
  raw, images, lms = _truth(cfg, nets)
  out = nets.encoder.postprocess(jnp.asarray(raw))
  total, terms = steps_lib.pretrain_objective(cfg, nets, nets.model, out, images, lms,
                                              axis_name=None)
  # At the truth the landmark term vanishes and the photometric term is small.
  assert float(terms["landmark"]) < 1e-6
  expect = (cfg.w_photo * terms["photometric"] + cfg.w_reg * terms["regularization"])
  np.testing.assert_allclose(float(total), float(expect), rtol=1e-6)
  # The L2 photometric variant outside pmap is the face-pixel mean in units of 2σ².
  l2, t2 = steps_lib.pretrain_objective(cfg.replace(photo_loss="l2"), nets, nets.model,
                                        out, images + 0.1, lms, axis_name=None)
  r = networks_lib.render_faces(cfg, nets, nets.model, out, images + 0.1)
  f = np.asarray(r.mask)
  mse = np.sum(f[..., None] * (np.asarray(r.image) - np.asarray(images + 0.1)) ** 2) / f.sum()
  mse /= 2 * float(losses.SIGMA) ** 2
  assert float(t2["photometric"]) == pytest.approx(mse, rel=1e-4)


def test_per_image_minimum_recovers_a_known_shape(setup, ceiling):
  """From the mean face, the per-image minimisation recovers the sign and most of a
  2.5σ in-plane shape coefficient, and the 3D error drops below the mean face's."""
  cfg, nets = setup
  raw, images, lms = _truth(cfg, nets)
  c = cfg.replace(w_reg=0.3)
  fn = ceiling.make_optimizer_fn(c, nets, steps=300, lr=0.02)
  fit = np.asarray(fn(jnp.zeros_like(jnp.asarray(raw)), images, lms))
  assert np.isfinite(fit).all()
  assert fit[0, 1] > 1.2 and fit[1, 1] < -1.2, fit[:, 1]
  from focus_jax.morphable import model as model_lib
  verts = lambda r: np.asarray(model_lib.vertices(
      nets.model, nets.encoder.postprocess(jnp.asarray(r)).shape,
      nets.encoder.postprocess(jnp.asarray(r)).expression))
  truth = verts(raw)
  err_fit = ceiling.vertex_errors(verts(fit), truth)
  err_mean = ceiling.vertex_errors(verts(np.zeros_like(raw)), truth)
  assert np.all(err_fit < 0.6 * err_mean), (err_fit, err_mean)


def test_settings_parser(ceiling):
  assert ceiling.parse_settings("0.5:5e-4:3, 0:1:0") == [(0.5, 5e-4, 3.0), (0.0, 1.0, 0.0)]
  for bad in ("0.5:1", "a:b:c", "0.5:-1:1", "nan:1:1", ""):
    with pytest.raises(ValueError, match="--settings"):
      ceiling.parse_settings(bad)


def test_ceiling_smoke(ceiling, tmp_path):
  """A 32² run on a few faces writes both files, the chosen row marked."""
  js, md = tmp_path / "c.json", tmp_path / "c.md"
  res = ceiling.main(["--label", "smoke", "--size", "32", "--faces", "6", "--steps", "3",
                      "--batch", "3", "--settings", "0.5:5e-4:1,0.5:0:3", "--json", str(js),
                      "--out", str(md)])
  assert len(res["settings"]) == 2 and res["chosen"] in (0, 1)
  for row in res["settings"]:
    for half in ("tune", "report"):
      assert np.isfinite(row[half]["median_3d_mm"]) and len(row[half]["shape_r2"]) == 5
  assert json.loads(js.read_text())["smoke"]["faces"] == 6
  text = md.read_text()
  assert "## smoke" in text and "(chosen on tune)" in text
  with pytest.raises(SystemExit, match="objective_ceiling"):
    ceiling.main(["--settings", "1:2", "--json", str(js), "--out", str(md)])


# ---------------------------------------------------------------------------------
# benchmarks/stage1_screen.py


@pytest.fixture(scope="module")
def screen():
  return benchmark_modules.load("stage1_screen")


def test_screen_overrides(screen):
  assert screen.parse_overrides(["w_reg=1", "num_shape=80"]) == {"w_reg": 1.0, "num_shape": 80}
  for bad in (["w_reg"], ["lr=1"], ["num_shape=1.5"], ["w_reg="]):
    with pytest.raises(ValueError, match="--set"):
      screen.parse_overrides(bad)
  for name in ("../escape", "/tmp/x", ".."):
    with pytest.raises(SystemExit, match="plain folder name"):
      screen.main(["--out", "/nonexistent", "--name", name])
  cfg = screen.make_config(64, {"w_reg": 0.5})
  assert cfg.w_reg == 0.5 and cfg.image_size == 64 and cfg.encoder_stages == (1, 1, 1, 1)


@pytest.mark.slow
def test_screen_smoke(screen, tmp_path):
  """A 32² run of two step counts writes two scored rows; the true coefficients with
  their best pose explain the exact landmarks better than the mean face does."""
  row = screen.main(["--out", str(tmp_path), "--num", "100", "--clean", "4", "--image_size",
                     "32", "--steps", "2,3", "--set", "w_reg=2"])
  lines = (tmp_path / "results.jsonl").read_text().splitlines()
  assert [json.loads(l)["steps"] for l in lines] == [2, 3]
  assert np.isfinite(row["clean_ratio"]) and np.isfinite(row["landmark_px"])
  refs = row["landmark_references_px"]
  assert refs["true_coefficients"] < refs["mean_face"]
