"""Landmark-only fit (no image): the MAP shape, expression and perspective pose
under Gaussian landmark noise, by Levenberg–Marquardt from the closed-form pose
(the peer of eos's ``fit_shape_and_pose``; ``benchmarks/eos_peer.py``).

Units: landmarks [B, 68, 2] pixels (centres at +0.5, NaN = ignore); mm; rad.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp

from focus_jax import losses as losses_lib
from focus_jax.fitting import pose as pose_lib
from focus_jax.morphable import model as model_lib
from focus_jax.render import camera as camera_lib
from focus_jax.render import render as render_lib


@dataclasses.dataclass(frozen=True)
class LandmarkFitConfig:
  """Configuration of :func:`fit_landmarks` (hashable: a jit static argument).

  The fit is the MAP estimate under Gaussian landmark noise and the model's
  coefficient prior::

    ½ Σ (w_l·‖π(v_l) − x_l‖ / σ)² + ½ ‖shape‖² + ½ ‖expression / σ_e‖²

  (σ in pixels of a 224-pixel image), minimised by Levenberg–Marquardt over
  shape, expression and the perspective pose, from the closed-form pose.

  Attributes:
    iterations: Levenberg–Marquardt iterations.
    landmark_sigma: landmark noise σ (px at 224²); larger = more regularised.
    expression_sigma: prior std of the expression coefficients.
    landmark_heavy: weight of nose ridge and inner mouth (1 = uniform).
    expression_nonnegative: clamp expression coefficients at 0 (blendshape models,
      whose coefficients are activation strengths).
    damping: initial Marquardt damping (relative to diag(JᵀJ)).
  """
  iterations: int = 15
  landmark_sigma: float = 2.0
  expression_sigma: float = 1.0
  landmark_heavy: float = 1.0
  expression_nonnegative: bool = False
  damping: float = 1e-2


@flax.struct.dataclass
class LandmarkFitResult:
  """What :func:`fit_landmarks` returns (leading B only for batched input).

  Attributes:
    shape, expression: [B, K*] coefficients; angles [B, 3] rad; translation [B, 3] mm.
    vertices: [B, V, 3] model space (mm); vertices_camera: [B, V, 3].
    landmarks: [B, 68, 2] projected model landmarks (px).
    cost: [B, iterations + 1] MAP objective before and after each iteration.
  """
  shape: jnp.ndarray
  expression: jnp.ndarray
  angles: jnp.ndarray
  translation: jnp.ndarray
  vertices: jnp.ndarray
  vertices_camera: jnp.ndarray
  landmarks: jnp.ndarray
  cost: jnp.ndarray


def _fit_landmarks_one(model, landmarks, config: LandmarkFitConfig, intr):
  valid = model_lib.landmark_mask(model) & jnp.all(jnp.isfinite(landmarks), -1)
  target = jnp.where(valid[:, None], landmarks, 0.0)
  # Only the landmark rows of the bases enter the objective.
  lm_idx = jnp.maximum(model.landmarks, 0)
  mean = jnp.take(model.mean, lm_idx, axis=0)
  sb = jnp.take(model.shape_basis, lm_idx, axis=1)
  eb = jnp.take(model.expression_basis, lm_idx, axis=1)
  ks, ke = model.num_shape, model.num_expression
  w = (jnp.asarray(losses_lib.landmark_weights(config.landmark_heavy))
       * valid.astype(jnp.float32) * (224.0 / intr.width) / config.landmark_sigma)
  angles0, trans0 = pose_lib.init_pose(mean, target, valid, intr)

  def unpack(theta):
    return (theta[:ks], theta[ks:ks + ke], theta[ks + ke:ks + ke + 3], theta[ks + ke + 3:])

  def residual(theta):
    s, e, a, t = unpack(theta)
    pts = (mean + jnp.einsum("k,kvc->vc", s, sb, precision="highest")
           + jnp.einsum("k,kvc->vc", e, eb, precision="highest"))
    proj = render_lib.project_vertices(camera_lib.to_camera(pts, a, t), intr)
    r = (w[:, None] * (proj - target)).reshape(-1)
    return jnp.concatenate([r, s, e / config.expression_sigma])

  def clamp(theta):
    if not config.expression_nonnegative:
      return theta
    return theta.at[ks:ks + ke].set(jnp.maximum(theta[ks:ks + ke], 0.0))

  cost = lambda theta: 0.5 * jnp.sum(jnp.square(residual(theta)))
  theta = jnp.concatenate([jnp.zeros(ks + ke), angles0, trans0])
  cost0 = cost(theta)

  def step(carry, _):
    theta, mu = carry
    r = residual(theta)
    jac = jax.jacfwd(residual)(theta)
    jtj = jac.T @ jac
    diag = jnp.diag(jtj) + 1e-9
    delta = jnp.linalg.solve(jtj + mu * jnp.diag(diag), -(jac.T @ r))
    cand = clamp(theta + delta)
    c_old, c_new = 0.5 * jnp.sum(jnp.square(r)), cost(cand)
    better = c_new < c_old
    theta = jnp.where(better, cand, theta)
    mu = jnp.where(better, mu * 0.3, mu * 10.0)
    return (theta, mu), jnp.minimum(c_new, c_old)

  (theta, _), costs = jax.lax.scan(step, (theta, jnp.asarray(config.damping)), None,
                                   length=config.iterations)
  s, e, a, t = unpack(theta)
  verts = model_lib.vertices(model, s, e)
  cam = camera_lib.to_camera(verts, a, t)
  lms = render_lib.project_vertices(model_lib.landmark_positions(model, cam), intr)
  return LandmarkFitResult(shape=s, expression=e, angles=a, translation=t, vertices=verts,
                           vertices_camera=cam, landmarks=lms,
                           cost=jnp.concatenate([cost0[None], costs]))


@functools.partial(jax.jit, static_argnames=("config", "intrinsics"))
def _fit_landmarks_batch(model, landmarks, config, intrinsics):
  return jax.vmap(lambda lm: _fit_landmarks_one(model, lm, config, intrinsics))(landmarks)


def fit_landmarks(model: model_lib.MorphableModel, landmarks, *,
                  intrinsics: camera_lib.Intrinsics,
                  config: LandmarkFitConfig = LandmarkFitConfig()) -> LandmarkFitResult:
  """Fits shape, expression and pose to 2D landmarks only (no image term).

  Args:
    model: the morphable model (its iBUG-68 landmark table; undefined points are
      ignored).
    landmarks: [68, 2] or [B, 68, 2] pixels (centres at +0.5); NaN = ignore.
    intrinsics: the camera (the image size sets the landmark-noise scale).
    config: :class:`LandmarkFitConfig`.

  Returns:
    :class:`LandmarkFitResult`, without the batch axis for one face.

  Raises:
    ValueError: landmarks not [68, 2] / [B, 68, 2].
  """
  landmarks = jnp.asarray(landmarks, jnp.float32)
  single = landmarks.ndim == 2
  if single:
    landmarks = landmarks[None]
  if landmarks.ndim != 3 or landmarks.shape[1:] != (model_lib.NUM_LANDMARKS, 2):
    raise ValueError(f"fit_landmarks: landmarks must be [68, 2] or [B, 68, 2], got "
                     f"{tuple(landmarks.shape)}")
  result = _fit_landmarks_batch(model, landmarks, config, intrinsics)
  if single:
    result = jax.tree_util.tree_map(lambda a: a[0], result)
  return result
