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
