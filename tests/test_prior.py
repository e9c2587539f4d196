"""Misfit prior: statistics, save/load, and its effect on the E-step."""

import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax import fitting, prior as prior_lib


def test_from_residuals_scales_relative_to_median():
  sq = np.array([1.0, 1.0, 1.0, 4.0, 100.0, 0.0])     # rms 1, 1, 1, 2, 10, unseen
  count = np.array([1, 1, 1, 1, 1, 0]) * 4
  p = prior_lib.from_residuals(sq * 4, count, max_scale=3.0)
  np.testing.assert_allclose(p.sigma_scale, [1, 1, 1, 2, 3, 1], rtol=1e-6)


def test_save_load_roundtrip_and_errors(tmp_path):
  p = prior_lib.from_residuals(np.ones(5), np.ones(5, int) * 4, model_name="m")
  path = tmp_path / "prior.npz"
  prior_lib.save(path, p)
  q = prior_lib.load(path)
  np.testing.assert_array_equal(q.sigma_scale, p.sigma_scale)
  assert q.model_name == "m"
  with pytest.raises(FileNotFoundError, match="build one"):
    prior_lib.load(tmp_path / "missing.npz")


def test_larger_sigma_keeps_hard_pixels_as_inliers():
  cfg = fitting.FitConfig(smoothing_iterations=0, neighbour_window=1)
  residual = jnp.full((4, 4), 4.0 * cfg.sigma)          # beyond 3σ: an outlier ...
  face = jnp.ones((4, 4), bool)
  plain = fitting.inlier_posterior(residual, face, jnp.ones((4, 4)), cfg)
  assert float(plain.max()) < 0.5
  scaled = fitting.inlier_posterior(residual, face, jnp.full((4, 4), 2.0), cfg)
  assert float(scaled.min()) > 0.5                      # ... but not where σ is doubled


def test_build_prior_from_synthetic_fits():
  import focus_jax as fj   # pylint: disable=import-outside-toplevel
  model = fj.morphable.builtin(resolution=37, num_shape=20, num_expression=10, num_albedo=20)
  cfg = fitting.FitConfig(rounds=1, steps=2, robust=False, max_vertices=0)
  p = fitting.build_prior(model, num_faces=3, size=48, seed=5, config=cfg, batch=2,
                          max_scale=2.5, smooth=0)
  assert p.model_name == model.name and p.sigma_scale.shape == (model.num_vertices,)
  seen = p.count >= 3
  assert 0.1 < seen.mean() < 1.0           # the front of the face, not the back of the head
  assert (p.sigma_scale[~seen] == 1.0).all()
  assert p.sigma_scale.min() == 1.0 and 1.0 < p.sigma_scale.max() <= 2.5
  assert (p.rms[p.count == 0] == 0.0).all() and (p.rms[seen] > 0.0).all()
