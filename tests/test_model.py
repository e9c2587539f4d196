"""MorphableModel pytree and its pure functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax import errors, morphable
from tests.helpers import finite_difference, tiny_model


def test_vertices_is_mean_plus_bases():
  m = tiny_model()
  rng = np.random.default_rng(1)
  s, e = rng.normal(size=m.num_shape), rng.normal(size=m.num_expression)
  expected = (np.asarray(m.mean) + np.tensordot(s, np.asarray(m.shape_basis), 1)
              + np.tensordot(e, np.asarray(m.expression_basis), 1))
  np.testing.assert_allclose(morphable.vertices(m, s, e), expected, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(morphable.vertices(m, np.zeros(m.num_shape)), m.mean)


def test_albedo_and_landmarks():
  m = tiny_model()
  c = np.random.default_rng(2).normal(size=m.num_albedo)
  expected = np.asarray(m.albedo_mean) + np.tensordot(c, np.asarray(m.albedo_basis), 1)
  np.testing.assert_allclose(morphable.albedo(m, c), expected, rtol=1e-5, atol=1e-6)
  verts = morphable.vertices(m, np.zeros(m.num_shape))
  lm = morphable.landmark_positions(m, verts)
  mask = np.asarray(morphable.landmark_mask(m))
  assert lm.shape == (68, 3) and not mask[:5].any() and mask[5:].all()
  np.testing.assert_array_equal(lm[5:], np.asarray(verts)[np.asarray(m.landmarks)[5:]])


def test_batched_jit_vmap_grad_pmap():
  m = tiny_model()
  rng = np.random.default_rng(3)
  s = jnp.asarray(rng.normal(size=(4, m.num_shape)), jnp.float32)
  e = jnp.asarray(rng.normal(size=(4, m.num_expression)), jnp.float32)
  batched = morphable.vertices(m, s, e)
  assert batched.shape == (4, m.num_vertices, 3)
  jitted = jax.jit(morphable.vertices)(m, s, e)
  vmapped = jax.vmap(morphable.vertices, in_axes=(None, 0, 0))(m, s, e)
  np.testing.assert_allclose(jitted, batched, atol=1e-4)
  np.testing.assert_allclose(vmapped, batched, atol=1e-4)
  pmapped = jax.pmap(morphable.vertices, in_axes=(None, 0, 0))(m, s[:1], e[:1])
  np.testing.assert_allclose(pmapped, batched[:1], atol=1e-4)

  def loss(model, shape, expression):
    return jnp.sum(jnp.sin(0.01 * morphable.vertices(model, shape, expression)))
  g = jax.grad(loss, argnums=1)(m, s[0], e[0])
  with jax.enable_x64():  # finite differences need float64 to be meaningful.
    m64 = jax.tree.map(lambda a: np.asarray(a, np.float64) if a.dtype == np.float32 else a, m)
    e64 = np.asarray(e[0], np.float64)
    fd = finite_difference(lambda x: float(loss(m64, x, e64)), s[0], eps=1e-4)
  np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-3)


def test_wrong_coefficient_length_names_the_problem():
  m = tiny_model(num_shape=5)
  with pytest.raises(errors.CoefficientError, match=r"shape coefficients .* 5 shape"):
    morphable.vertices(m, np.zeros(4))
  with pytest.raises(errors.CoefficientError, match="expression"):
    jax.jit(morphable.vertices)(m, np.zeros(5), np.zeros(7))
  with pytest.raises(errors.CoefficientError, match="albedo"):
    morphable.albedo(m, np.zeros(9))


def test_truncate_keeps_leading_components():
  m = tiny_model(num_shape=5, num_expression=3, num_albedo=4)
  t = morphable.truncate(m, shape=2, expression=1, albedo=None)
  assert (t.num_shape, t.num_expression, t.num_albedo) == (2, 1, 4)
  s = np.array([0.5, -1.0])
  np.testing.assert_allclose(morphable.vertices(t, s),
                             morphable.vertices(m, np.r_[s, 0, 0, 0]), atol=1e-5)


def test_subset_keeps_triangles_and_landmarks_consistent():
  m = tiny_model(num_vertices=49)
  keep = np.flatnonzero(np.asarray(m.mean)[:, 0] <= 0)  # left half of the patch
  sub = morphable.subset(m, keep)
  assert sub.num_vertices == keep.size
  old_tris = np.asarray(m.triangles)
  expected = {tuple(keep[t]) for t in np.asarray(sub.triangles)}
  kept_old = {tuple(t) for t in old_tris if np.isin(t, keep).all()}
  assert expected == kept_old and len(kept_old) > 0
  for old, new in zip(np.asarray(m.landmarks), np.asarray(sub.landmarks)):
    if old >= 0 and old in keep:
      assert keep[new] == old
    else:
      assert new == -1
  np.testing.assert_array_equal(sub.shape_basis, np.asarray(m.shape_basis)[:, keep])
  np.testing.assert_array_equal(sub.uv, np.asarray(m.uv)[keep])
  # A boolean mask gives the same model.
  mask = np.zeros(m.num_vertices, bool)
  mask[keep] = True
  np.testing.assert_array_equal(morphable.subset(m, mask).triangles, sub.triangles)


def test_make_model_rejects_bad_arrays():
  m = tiny_model()
  with pytest.raises(errors.CoefficientError, match="triangle indices"):
    morphable.make_model(m.mean, None, None, None, None, np.array([[0, 1, 10_000]]))
  with pytest.raises(errors.CoefficientError, match="landmarks"):
    morphable.make_model(m.mean, None, None, None, None, m.triangles, landmarks=np.zeros(5))


def test_model_without_expression_or_albedo_components():
  """Bases with no components (K = 0, e.g. a shape-only model) give the mean and
  zero-sized gradients, batched and under jit (a -1 in the basis reshape divides
  by zero on newer jax)."""
  m = tiny_model()
  bare = morphable.make_model(m.mean, m.shape_basis, None, m.albedo_mean, None, m.triangles)
  assert bare.num_expression == 0 and bare.num_albedo == 0
  s = np.random.default_rng(3).normal(size=(2, bare.num_shape)).astype(np.float32)
  verts = jax.jit(morphable.vertices)(bare, s, np.zeros((2, 0), np.float32))
  np.testing.assert_allclose(verts, morphable.vertices(m, s), rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(morphable.albedo(bare, np.zeros((2, 0), np.float32)),
                                np.broadcast_to(m.albedo_mean, (2,) + m.albedo_mean.shape))
  grad = jax.grad(lambda e: jnp.sum(morphable.vertices(bare, s, e)))(jnp.zeros((2, 0)))
  assert grad.shape == (2, 0)
