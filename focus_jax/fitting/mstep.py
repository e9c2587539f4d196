"""The M-step of the fit: Adam on shape, expression, albedo, pose and light.

MoFA's "sample" mode: shaded vertex colours are compared with the target
sampled at the projected vertices (no rasterization in the inner loop), on a
vertex subset (``Optimiser.max_vertices``), plus the weighted 68-landmark loss
and coefficient regularisation. Gradients are exact for the objective with the
E-step's inlier weights and model-space normals held fixed within a round.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from focus_jax import losses as losses_lib
from focus_jax.fitting import config as config_lib
from focus_jax.fitting import light as light_lib
from focus_jax.fitting import problem as problem_lib
from focus_jax.fitting import sampling
from focus_jax.morphable import model as model_lib
from focus_jax.render import camera as camera_lib
from focus_jax.render import render as render_lib
from focus_jax.render import shading as shading_lib


def learning_rates(config: config_lib.Optimiser) -> dict:
  """Adam learning rate per parameter group (keys of the fit's parameter dict)."""
  return dict(shape=config.lr_shape, expression=config.lr_expression,
              albedo=config.lr_albedo, angles=config.lr_angles,
              translation=config.lr_translation, light_sh=config.lr_light,
              light_tint=config.lr_light)


def loss_one(params, sub, normals_model, target, landmarks, lm_valid, weight, sigma_vertex,
             sigma_scale, lm_weights, intr: camera_lib.Intrinsics,
             config: config_lib.FitConfig):
  """M-step objective for one image on the vertex subset: (total, [4] terms).

  ``normals_model`` [Vs, 3] are the model-space normals of the last E-step: held
  fixed within a round (their change with shape is second order for the
  photometric term), rotated with the current pose. ``weight`` and
  ``sigma_vertex`` [Vs]; ``target`` [H, W, 3]; ``landmarks`` [68, 2] px.
  """
  hi = "highest"
  opt, estep = config.optimiser, config.estep
  verts = (sub["mean"] + jnp.einsum("k,kvc->vc", params["shape"], sub["shape_basis"],
                                    precision=hi)
           + jnp.einsum("k,kvc->vc", params["expression"], sub["expression_basis"],
                        precision=hi))
  alb = sub["albedo_mean"] + jnp.einsum("k,kvc->vc", params["albedo"], sub["albedo_basis"],
                                        precision=hi)
  cam, _, colors = render_lib.pose_and_shade(
      verts, normals_model, alb, params["angles"], params["translation"],
      light_lib.light_from_factors(params["light_sh"], params["light_tint"]))
  vimg = render_lib.project_vertices(cam, intr)
  sampled = sampling.bilinear_sample(target, vimg)
  sq = jnp.sum(jnp.square(colors - sampled), -1) / jnp.square(estep.sigma * sigma_vertex)
  if config.robust and opt.dynamic_gate:
    # The reference's robust loss: only vertices whose Gaussian likelihood beats
    # the uniform outlier at the current residual count (σ of this round).
    gate = sq < jnp.square(estep.outlier_sigmas * sigma_scale)
    weight = weight * jax.lax.stop_gradient(gate.astype(jnp.float32))
  photo = 0.5 * jnp.sum(weight * sq) / jnp.maximum(jnp.sum(weight), 1.0)
  lm = jnp.take(vimg, sub["landmarks"], axis=0)
  px = 224.0 / intr.width  # landmark errors measured on a 224-pixel image
  lm_term = losses_lib.landmark_loss(lm[None] * px, landmarks[None] * px, lm_weights,
                                     lm_valid[None])
  reg = 0.5 * (opt.shape_reg * jnp.sum(jnp.square(params["shape"]))
               + opt.expression_reg * jnp.sum(jnp.square(params["expression"]))
               + opt.albedo_reg * jnp.sum(jnp.square(params["albedo"])))
  total = opt.photometric_weight * photo + opt.landmark_weight * lm_term + reg
  return total, jnp.stack([total, photo, lm_term, reg])


def model_normals(pb: problem_lib.FitProblem, params: dict):
  """[B, Vs, 3] model-space vertex normals of the M-step vertices."""
  verts = jax.vmap(lambda q: model_lib.vertices(pb.model, q["shape"], q["expression"]))(params)
  return jnp.take(shading_lib.vertex_normals(verts, pb.model.triangles), pb.sub_idx, axis=1)


def run(pb: problem_lib.FitProblem, opt, params: dict, opt_state, weight, sigma_scale,
        albedo_on):
  """``config.schedule.steps`` Adam steps from ``params``.

  Args:
    pb: the problem; opt: the optax transformation (``scale_by_adam``) and
      ``opt_state`` its state.
    weight: [B, Vs] inlier weights of the M-step vertices.
    sigma_scale: σ multiplier of this round; albedo_on: 0/1 float, scales the
      albedo's learning rate.

  Returns:
    ((params, opt_state), per-step terms [steps, B, 4]).
  """
  lrs = learning_rates(pb.config.optimiser)
  loss_fn = jax.vmap(loss_one, in_axes=(0, None, 0, 0, 0, 0, 0, 0, None, None, None, None))

  def total_loss(p, weight, normals, sigma_scale):
    totals, terms = loss_fn(p, pb.sub, normals, pb.images, pb.landmarks, pb.lm_valid, weight,
                            pb.sigma_sub, sigma_scale, pb.lm_weights, pb.intrinsics, pb.config)
    return jnp.sum(totals), terms

  grad_fn = jax.value_and_grad(total_loss, has_aux=True)

  def step(carry, _):
    p, s, weight, normals, sigma_scale, albedo_on = carry
    (_, terms), g = grad_fn(p, weight, normals, sigma_scale)
    updates, s = opt.update(g, s, p)
    rate = dict(lrs, albedo=lrs["albedo"] * albedo_on)
    p = {key: p[key] - rate[key] * updates[key] for key in p}
    return (p, s, weight, normals, sigma_scale, albedo_on), terms

  carry = (params, opt_state, weight, model_normals(pb, params), sigma_scale, albedo_on)
  (params, opt_state, *_), terms = jax.lax.scan(step, carry, None,
                                                length=pb.config.schedule.steps)
  return (params, opt_state), terms
