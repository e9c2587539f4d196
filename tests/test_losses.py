"""Loss terms on small hand-computed cases (weights, normalisations, masking)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax import losses


def test_reference_weights_in_one_place():
  assert losses.WEIGHTS["pretrain"] == dict(photometric=0.5, landmark=5e-4, perceptual=0.25,
                                            regularization=0.1)
  assert losses.WEIGHTS["unet"]["binary"] == 10.0 and losses.WEIGHTS["unet"]["neighbour"] == 15.0
  assert losses.WEIGHTS["encoder"]["area"] == 0.06


def test_landmark_weights_nose_ridge_and_inner_mouth():
  w = losses.landmark_weights()
  # The FOCUS reference's table (Occlusion-Robust-MoFA util/load_object.py, commit
  # 33a5add: weight[28:31] = 20, weight[-8:] = 20): 0-based 28-30 (iBUG 29-31) and 60-67.
  heavy = {28, 29, 30} | set(range(60, 68))
  assert all(w[i] == (20.0 if i in heavy else 1.0) for i in range(68))


def test_robust_photometric_hand_computed():
  s = losses.SIGMA
  target = jnp.zeros((1, 1, 4, 3))
  # residual norms: 0, 2σ (inlier), 4σ (outlier: beyond 3σ), 0 but outside F.
  image = jnp.array([[[[0, 0, 0], [2 * s, 0, 0], [0, 4 * s, 0], [0, 0, 0]]]], jnp.float32)
  face = jnp.array([[[1.0, 1.0, 1.0, 0.0]]])
  loss, w = losses.robust_photometric(image, target, face)
  np.testing.assert_array_equal(np.asarray(w), [[[1, 1, 0, 0]]])
  norm = -1.5 * math.log(2 * math.pi) - 3 * math.log(s)
  expected = -(norm + (-0.5 * 4 + norm)) / 4.0   # mean over all 4 pixels
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_l2_photometric_hand_computed():
  s = losses.SIGMA
  target = jnp.full((1, 1, 4, 3), 0.25)
  # residual norms: 0, 2σ, 4σ (an outlier for the robust loss), 5σ but outside F.
  image = target + jnp.array([[[[0, 0, 0], [2 * s, 0, 0], [0, -4 * s, 0], [0, 0, 5 * s]]]],
                             jnp.float32)
  face = jnp.array([[[1.0, 1.0, 1.0, 0.0]]])
  # Σ F‖r‖² / (2σ²) / Σ F = (0 + 4 + 16) / 2 / 3
  got = float(losses.l2_photometric(image, target, face))
  assert got == pytest.approx(20.0 / 6.0, rel=1e-5)
  # Soft coverage weights the pixels (an antialiased silhouette).
  half = face.at[0, 0, 2].set(0.5)
  assert float(losses.l2_photometric(image, target, half)) == pytest.approx(
      (4 + 8) / 2 / 2.5, rel=1e-5)


def test_l2_photometric_gradient_reaches_the_pixels_the_robust_loss_rejects():
  s = losses.SIGMA
  target = jnp.full((1, 1, 3, 3), 0.5)
  image = target + jnp.array([[[[s, 0, 0], [0, 4 * s, 0], [0, 0, 4 * s]]]], jnp.float32)
  face = jnp.array([[[1.0, 1.0, 0.0]]])
  g_l2 = np.asarray(jax.grad(lambda x: losses.l2_photometric(x, target, face))(image))
  g_rob = np.asarray(jax.grad(lambda x: losses.robust_photometric(x, target, face)[0])(image))
  # Pixel 1 (4σ) is an outlier: the robust loss ignores it, the L2 loss pulls it back
  # with dL/dR = F·(R − I) / (σ² Σ F) = 4σ / (σ² · 2).
  assert np.all(g_rob[0, 0, 1] == 0)
  np.testing.assert_allclose(g_l2[0, 0, 1], [0, 4 * s / (s * s * 2), 0], rtol=1e-5)
  # Both pull the inlier pixel 0 the same way; neither sees the pixel outside F.
  assert g_l2[0, 0, 0, 0] > 0 and g_rob[0, 0, 0, 0] > 0
  assert np.all(g_l2[0, 0, 2] == 0) and np.all(g_rob[0, 0, 2] == 0)


def test_robust_threshold_is_three_sigma():
  s = losses.SIGMA
  face = jnp.ones((1, 1, 2))
  image = jnp.array([[[[2.99 * s, 0, 0], [3.01 * s, 0, 0]]]])
  w = losses.robust_inliers(image, jnp.zeros_like(image), face)
  np.testing.assert_array_equal(np.asarray(w), [[[1, 0]]])


def test_masked_reconstruction_is_l2_norm_over_masked_pixels():
  # A non-zero target: with I = 0, ‖I − R‖ = ‖I + R‖ would let a sign error pass.
  target = jnp.full((1, 1, 3, 3), 0.5)
  image = target - jnp.array([[[[3, 4, 0], [1, 0, 0], [100, 0, 0]]]],
                             jnp.float32)  # norms 5, 1, 100
  face = jnp.array([[[1.0, 1.0, 0.0]]])
  inlier = jnp.array([[[1.0, 0.5, 1.0]]])
  # Σ‖M·F·r‖ = 5 + 0.5 ; Σ M·F = 1.5
  assert float(losses.masked_reconstruction(image, target, face, inlier)) == pytest.approx(
      5.5 / 1.5, rel=1e-5)


def test_landmark_loss_weights_before_squaring_and_masks_undefined():
  pred = jnp.zeros((1, 68, 2))
  target = jnp.zeros((1, 68, 2)).at[0, 0, 0].set(1.0).at[0, 28, 1].set(1.0)
  # (1·1)² + (20·1)² over 68·2 coordinates.
  assert float(losses.landmark_loss(pred, target)) == pytest.approx(401.0 / 136.0)
  valid = jnp.ones(68, bool).at[28].set(False)
  target_nan = target.at[0, 28].set(jnp.nan)
  val = losses.landmark_loss(pred, target_nan, valid=valid)
  assert float(val) == pytest.approx(1.0 / 134.0)
  g = jax.grad(lambda p: losses.landmark_loss(p, target_nan, valid=valid))(pred)
  assert np.isfinite(np.asarray(g)).all()


def test_landmark_loss_rejects_wrong_shape():
  with pytest.raises(ValueError, match="68, 2"):
    losses.landmark_loss(jnp.zeros((1, 5, 2)), jnp.zeros((1, 5, 2)))


def test_regularization_divides_by_batch_and_224():
  shape = jnp.ones((2, 3))
  expression = jnp.full((2, 1), 2.0)
  albedo = jnp.zeros((2, 4))
  assert float(losses.coefficient_regularization(shape, expression, albedo)) == pytest.approx(
      (6 + 8) / 2 / 224)


def test_perceptual_and_cosine():
  a = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  b = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  assert float(losses.perceptual_loss(a, b)) == pytest.approx(0.5)
  # Shallow maps: cosine over channels per position, mean over positions.
  fa = jnp.ones((1, 2, 1, 2))
  fb = jnp.array([[[[1.0, 1.0]], [[-1.0, -1.0]]]])
  assert float(losses.preserve_loss(fa, fb)) == pytest.approx(1.0)
  assert float(losses.dist_loss(fa, fa)) == pytest.approx(0.0, abs=1e-6)


def test_area_and_binary():
  face = jnp.array([[[1.0, 1.0, 1.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])
  inlier = jnp.array([[[1.0, 0.0, 0.5, 0.0]], [[1.0, 1.0, 1.0, 1.0]]])
  # image 0: (0 + 1 + 0.5) / 3 ; image 1: 0 -> mean 0.25
  assert float(losses.area_loss(face, inlier)) == pytest.approx(0.25)
  # M·F = [1, 0, 0.5, 0, 1, 0, 0, 0]: |M·F − 0.5| has mean 3.5 / 8
  assert float(losses.binary_loss(face, inlier)) == pytest.approx(0.5 - 3.5 / 8)


def test_neighbour_loss_tolerates_small_shifts_only():
  rng = np.random.default_rng(0)
  target = jnp.asarray(rng.random((1, 12, 12, 3)), jnp.float32)
  ones = jnp.ones((1, 12, 12))
  shifted2 = jnp.roll(target, 2, axis=2)
  assert float(losses.neighbour_loss(shifted2, target, ones)) == pytest.approx(0.0, abs=1e-5)
  shifted3 = jnp.roll(target, 3, axis=2)
  assert float(losses.neighbour_loss(shifted3, target, ones)) > 0.05
  # Interior only: 12x12 with a 5x5 window gives 8x8 values.
  assert losses.neighbour_min_distance(target, target).shape == (1, 8, 8)
  # Known value: constant images differing by (0.3, 0.4, 0) everywhere -> 0.5.
  a = jnp.zeros((1, 6, 6, 3))
  b = a + jnp.array([0.3, 0.4, 0.0])
  assert float(losses.neighbour_loss(a, b, jnp.ones((1, 6, 6)))) == pytest.approx(0.5, rel=1e-4)


def test_neighbour_min_distance_edge_border_against_brute_force():
  # The fit's E-step form (every pixel, target edge-padded, plain norm) against
  # a direct numpy loop; its interior is the 'valid' form; even windows refused.
  rng = np.random.default_rng(1)
  image = rng.random((2, 7, 9, 3)).astype(np.float32)
  target = rng.random((2, 7, 9, 3)).astype(np.float32)
  got = np.asarray(losses.neighbour_min_distance(jnp.asarray(image), jnp.asarray(target), 3,
                                                 border="edge", eps=0.0))
  assert got.shape == (2, 7, 9)
  want = np.full((2, 7, 9), np.inf)
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      ys = np.clip(np.arange(7) + dy, 0, 6)
      xs = np.clip(np.arange(9) + dx, 0, 8)
      d = np.linalg.norm(image - target[:, ys][:, :, xs], axis=-1)
      want = np.minimum(want, d)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  valid = losses.neighbour_min_distance(jnp.asarray(image), jnp.asarray(target), 3, eps=0.0)
  np.testing.assert_array_equal(got[:, 1:-1, 1:-1], np.asarray(valid))
  with pytest.raises(ValueError, match="odd"):
    losses.neighbour_min_distance(jnp.asarray(image), jnp.asarray(target), 4)
  with pytest.raises(ValueError, match="border"):
    losses.neighbour_min_distance(jnp.asarray(image), jnp.asarray(target), 3, border="wrap")


def test_neighbour_loss_divides_by_the_prior_scale_per_pixel():
  # Constant images 0.5 apart: interior of 8x8 with a 5x5 window is 4x4 pixels.
  a = jnp.zeros((1, 8, 8, 3))
  b = a + jnp.array([0.3, 0.4, 0.0])
  scale = np.ones((1, 8, 8), np.float32)
  scale[:, :, :4] = 2.0          # interior columns 2, 3 halved; 4, 5 not
  scale[:, 0, :] = 100.0         # border rows are outside the interior: no effect
  got = float(losses.neighbour_loss(a, b, jnp.ones((1, 8, 8)), scale=jnp.asarray(scale)))
  assert got == pytest.approx((0.25 + 0.5) / 2, rel=1e-4)
  ones = float(losses.neighbour_loss(a, b, jnp.ones((1, 8, 8)), scale=jnp.ones((1, 8, 8))))
  assert ones == pytest.approx(0.5, rel=1e-4)


def test_losses_jit_and_grad():
  image = jnp.full((1, 4, 4, 3), 0.5)
  target = jnp.full((1, 4, 4, 3), 0.52)
  face = jnp.ones((1, 4, 4))
  f = jax.jit(lambda x: losses.robust_photometric(x, target, face)[0]
              + losses.masked_reconstruction(x, target, face, face))
  g = jax.grad(f)(image)
  assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


def test_check_finite_names_the_term():
  with pytest.raises(FloatingPointError, match="landmark"):
    losses.check_finite(dict(photometric=1.0, landmark=float("nan")))
