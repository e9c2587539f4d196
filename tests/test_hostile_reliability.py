"""Hostile inputs to ``focus-jax fit``, the model loaders and training resumption.

Each case was seen to fail on the code before issue 17's fixes: black/white photos
fitted to NaN, one bad photo aborted a whole batch, ``--out`` was only checked
after the work, a fit picked up its own outputs, a photo's files could be left
as a mixed set, models with NaN loaded, a corrupt newest checkpoint made the run
fail at its step, and a resumed run logged its steps twice.
"""

import numpy as np
import jax.numpy as jnp

from focus_jax import fitting
from focus_jax.render import shading


# ----------------------------------------------------------------------------- NaN causes


def test_solve_light_black_target_and_zero_weights_stay_finite():
  rng = np.random.default_rng(0)
  normals = rng.normal(size=(50, 3))
  normals[:, 2] = np.abs(normals[:, 2])
  normals = jnp.asarray(normals / np.linalg.norm(normals, axis=1, keepdims=True), jnp.float32)
  albedo = jnp.full((50, 3), 0.6, jnp.float32)
  for target, weight in ((0.0, 1.0), (1.0, 0.0), (0.0, 0.0)):
    for tint_ridge in (0.0, 1.0):
      g, t = fitting.solve_light(albedo, normals, jnp.full((50, 3), target, jnp.float32),
                                 jnp.full((50,), weight, jnp.float32), 1e-3, 0.13, 2,
                                 tint_ridge=tint_ridge)
      assert np.isfinite(np.asarray(g)).all() and np.isfinite(np.asarray(t)).all()
      np.testing.assert_allclose(t, 1.0)    # no colour information: a white tint
      if target == 0.0 and weight:          # a black face is explained by (almost) no light
        colors = shading.shade(albedo, normals, fitting.light_from_factors(g, t))
        assert float(jnp.abs(colors).mean()) < 0.05 and float(jnp.abs(colors).max()) < 0.15
