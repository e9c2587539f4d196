"""The E-step of the fit and the closed-form light solve on its inliers.

The E-step renders the current faces (hard rasterization), takes each pixel's
residual with neighbour tolerance (:func:`focus_jax.losses.neighbour_min_distance`),
estimates the inlier posterior (:mod:`~focus_jax.fitting.inliers`) and samples it
at the visible vertices, giving per-vertex weights [B, V].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from focus_jax import losses as losses_lib
from focus_jax.fitting import config as config_lib
from focus_jax.fitting import inliers as inliers_lib
from focus_jax.fitting import light as light_lib
from focus_jax.fitting import problem as problem_lib
from focus_jax.fitting import sampling
from focus_jax.render import camera as camera_lib
from focus_jax.render import rasterize as raster_lib
from focus_jax.render import render as render_lib


def estep_one(verts_cam, colors, target, sigma_vertex, intr: camera_lib.Intrinsics,
              config: config_lib.EStep, triangles, sigma_scale, robust: bool,
              fixed_mask=None, prior_map=None):
  """Rasterizes one face and returns (render, face, posterior, vertex_weight).

  Args:
    verts_cam: [V, 3] camera-space vertices (mm); colors: [V, 3] shaded colours.
    target: [H, W, 3] image; sigma_vertex: [V] σ multipliers (misfit prior).
    config: the :class:`~focus_jax.fitting.config.EStep` group.
    triangles: [F, 3]; sigma_scale: σ multiplier of this round.
    robust: estimate the posterior (else every face pixel is an inlier).
    fixed_mask: [H, W] in [0, 1], or None: a given inlier segmentation that
      replaces the robust posterior (robust fits only).
    prior_map: [H, W] in (0, 1), or None: a per-pixel prior probability of
      "face" (e.g. the real-face segmenter's), whose log-odds times
      ``config.inlier_prior_weight`` join the robust posterior's prior.

  Returns:
    (render [H, W, 3], face [H, W] bool, posterior [H, W], vertex weight [V]:
    visible and, when robust, inlier).
  """
  frags = raster_lib.rasterize(verts_cam, triangles, intr, cull_backfaces=True)
  face = frags.mask
  render = raster_lib.interpolate(colors, verts_cam, triangles, frags, intr)
  if robust and fixed_mask is not None:
    post = fixed_mask * face
  elif robust:
    sigma_map = raster_lib.interpolate(sigma_vertex[:, None], verts_cam, triangles, frags,
                                       intr)[..., 0]
    sigma_map = jnp.where(face, jnp.maximum(sigma_map, 1e-3), 1.0)
    res = losses_lib.neighbour_min_distance(render, target, config.neighbour_window,
                                            border="edge", eps=0.0)
    prior_logit = None
    if prior_map is not None:
      p = jnp.clip(prior_map, 1e-4, 1.0 - 1e-4)
      prior_logit = config.inlier_prior_weight * (jnp.log(p) - jnp.log1p(-p))
    post = inliers_lib.inlier_posterior(res, face, sigma_map, config, sigma_scale, target,
                                        prior_logit)
  else:
    post = face.astype(jnp.float32)
  # Vertex visibility: in the image, in front of (or on) the visible surface.
  vimg = render_lib.project_vertices(verts_cam, intr)
  depth_at = sampling.nearest_pixel(frags.depth[..., None], vimg)[:, 0]
  face_at = sampling.nearest_pixel(face[..., None].astype(jnp.float32), vimg)[:, 0]
  inside = ((vimg[:, 0] >= 0) & (vimg[:, 0] < intr.width) & (vimg[:, 1] >= 0)
            & (vimg[:, 1] < intr.height))
  visible = inside & (face_at > 0) & (verts_cam[:, 2] <= depth_at + config.visibility_tolerance)
  inlier_at = sampling.bilinear_sample(post[..., None], vimg)[:, 0]
  weight = visible.astype(jnp.float32) * (inlier_at > 0.5 if robust else 1.0)
  return render, face, post, weight


def estep(pb: problem_lib.FitProblem, params: dict, sigma_scale, robust: bool,
          full: bool = False):
  """:func:`estep_one` for the batch, at the E-step resolution (``full``: the
  image's), with the given inlier masks and inlier priors when there are any.

  Returns:
    (render [B, H, W, 3], face [B, H, W], posterior [B, H, W], weight [B, V]).
  """
  intr = pb.intrinsics if full else pb.intr_low
  images = pb.images if full else pb.images_low
  masks = pb.masks if full else pb.masks_low
  priors = pb.priors if full else pb.priors_low

  def one(p, img, sv, fixed, prior):
    cam, _, _, colors = problem_lib.posed_face(pb.model, p)
    return estep_one(cam, colors, img, sv, intr, pb.config.estep, pb.model.triangles,
                     sigma_scale, robust, fixed, prior)
  return jax.vmap(one)(params, images, pb.sigma_vertex, masks, priors)


def prior_at_vertices(pb: problem_lib.FitProblem, params: dict):
  """The given per-pixel inlier prior sampled at every vertex's projection: [B, V]
  (bilinear, full resolution; 1 without a prior)."""
  if pb.priors is None:
    return jnp.ones((pb.images.shape[0], pb.model.num_vertices), jnp.float32)

  def one(p, prior):
    cam = problem_lib.posed_face(pb.model, p)[0]
    return sampling.bilinear_sample(prior[..., None],
                                    render_lib.project_vertices(cam, pb.intrinsics))[:, 0]
  return jax.vmap(one)(params, pb.priors)


def relight(pb: problem_lib.FitProblem, params: dict, weight, tint_ridge: float = 0.0):
  """Closed-form light of every face on the vertices of ``weight`` [B, V]
  (:func:`~focus_jax.fitting.light.solve_light`; robust fits: IRLS, warm-started
  from the current light when ``config.light.warm_start``).

  Returns:
    (light_sh [B, 9], light_tint [B, 3]).
  """
  config = pb.config

  def one(p, img, w):
    cam, normals, alb, _ = problem_lib.posed_face(pb.model, p)
    sampled = sampling.bilinear_sample(img, render_lib.project_vertices(cam, pb.intrinsics))
    init = (p["light_sh"], p["light_tint"]) if config.light.warm_start else None
    return light_lib.solve_light(alb, normals, sampled, w, config.light.ridge,
                                 config.estep.sigma * config.estep.outlier_sigmas,
                                 config.light.iterations if config.robust else 0, init=init,
                                 tint_ridge=tint_ridge)
  return jax.vmap(one)(params, pb.images, weight)
