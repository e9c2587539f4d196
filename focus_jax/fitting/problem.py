"""The data of one batched fit and the model evaluation shared by its steps.

:class:`FitProblem` gathers what every step of the EM reads (images at full and
E-step resolution, cleaned landmarks, the misfit prior's σ multipliers, the
M-step's vertex subset); it lives inside the jitted fit only. :func:`posed_face`
is the fit's one model → posed, shaded mesh evaluation.

Shapes: B images [B, H, W, 3]; V vertices; Vs M-step vertices.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from focus_jax import losses as losses_lib
from focus_jax.fitting import config as config_lib
from focus_jax.fitting import light as light_lib
from focus_jax.fitting import pose as pose_lib
from focus_jax.fitting import sampling
from focus_jax.morphable import model as model_lib
from focus_jax.render import camera as camera_lib
from focus_jax.render import render as render_lib
from focus_jax.render import shading as shading_lib


class FitProblem(NamedTuple):
  """Inputs of one batched fit (traced arrays, static cameras and config).

  Attributes:
    model: the morphable model.
    config: the :class:`~focus_jax.fitting.config.FitConfig`.
    intrinsics, intr_low: cameras of the full and the E-step resolution.
    images, images_low: [B, H, W, 3] and [B, H/k, W/k, 3] targets.
    masks, masks_low: given inlier masks [B, H, W] (and downsampled) or None.
    priors, priors_low: given per-pixel inlier prior probabilities [B, H, W] (and
      downsampled) or None.
    landmarks: [B, 68, 2] px, 0 where invalid; lm_valid: [B, 68] bool.
    lm_weights: [68] landmark weights.
    sigma_vertex: [B, V] σ multipliers (misfit prior); sigma_sub: [B, Vs].
    sub: the model restricted to the M-step vertices (:func:`sampling.submodel`).
    sub_idx: [Vs] int32 indices of the M-step vertices.
  """
  model: model_lib.MorphableModel
  config: config_lib.FitConfig
  intrinsics: camera_lib.Intrinsics
  intr_low: camera_lib.Intrinsics
  images: jnp.ndarray
  images_low: jnp.ndarray
  masks: Optional[jnp.ndarray]
  masks_low: Optional[jnp.ndarray]
  priors: Optional[jnp.ndarray]
  priors_low: Optional[jnp.ndarray]
  landmarks: jnp.ndarray
  lm_valid: jnp.ndarray
  lm_weights: jnp.ndarray
  sigma_vertex: jnp.ndarray
  sigma_sub: jnp.ndarray
  sub: dict
  sub_idx: jnp.ndarray


def prepare(model, images, landmarks, sigma_vertex, sub_idx, lm_sub,
            config: config_lib.FitConfig, intrinsics: camera_lib.Intrinsics,
            masks, priors=None) -> FitProblem:
  """:class:`FitProblem` of a batch (traced; NaN landmarks and points the model
  lacks become invalid)."""
  lm_valid = model_lib.landmark_mask(model)[None] & jnp.all(jnp.isfinite(landmarks), -1)
  landmarks = jnp.where(lm_valid[..., None], landmarks, 0.0)
  lm_weights = jnp.asarray(losses_lib.landmark_weights(config.optimiser.landmark_heavy))
  k = max(1, config.schedule.estep_downsample)
  images_low = jax.vmap(lambda im: sampling.downsample(im, k))(images)
  if priors is not None:     # a NaN prior pixel says nothing (0.5), not "break the fit"
    priors = jnp.clip(jnp.nan_to_num(priors, nan=0.5), 0.0, 1.0)
  low = lambda maps: None if maps is None else jax.vmap(
      lambda m: sampling.downsample(m[..., None], k)[..., 0])(maps)
  return FitProblem(
      model=model, config=config, intrinsics=intrinsics,
      intr_low=sampling.scaled_intrinsics(intrinsics, k), images=images,
      images_low=images_low, masks=masks, masks_low=low(masks), priors=priors,
      priors_low=low(priors), landmarks=landmarks,
      lm_valid=lm_valid, lm_weights=lm_weights, sigma_vertex=sigma_vertex,
      sigma_sub=jnp.take(sigma_vertex, sub_idx, axis=1),
      sub=sampling.submodel(model, sub_idx, lm_sub), sub_idx=sub_idx)


def initial_params(pb: FitProblem, init: dict) -> dict:
  """Start of the fit: the mean face at the closed-form landmark pose, ambient
  white light, overridden by ``init`` ([B, n] arrays). Returns the parameter
  dict (shape, expression, albedo [B, K*]; angles, translation [B, 3];
  light_sh [B, 9]; light_tint [B, 3])."""
  model = pb.model
  batch = pb.images.shape[0]
  mean_lm = model_lib.landmark_positions(model, model.mean)
  angles, translation = jax.vmap(pose_lib.init_pose, in_axes=(None, 0, 0, None))(
      mean_lm, pb.landmarks, pb.lm_valid, pb.intrinsics)
  zeros = lambda n: jnp.zeros((batch, n), jnp.float32)
  params = dict(shape=zeros(model.num_shape), expression=zeros(model.num_expression),
                albedo=zeros(model.num_albedo), angles=angles, translation=translation,
                light_sh=shading_lib.default_light((batch,))[..., 0],
                light_tint=jnp.ones((batch, 3), jnp.float32))
  params.update(init)
  return params


def posed_face(model, params):
  """One face's posed, shaded mesh (no batch axis).

  Vertex normals from :func:`shading.vertex_normals` (its default backend),
  then :func:`focus_jax.render.render.pose_and_shade`.

  Returns:
    (camera-space vertices [V, 3] mm, camera-space normals [V, 3], albedo
    [V, 3], shaded colours [V, 3]).
  """
  verts = model_lib.vertices(model, params["shape"], params["expression"])
  alb = model_lib.albedo(model, params["albedo"])
  light = light_lib.light_from_factors(params["light_sh"], params["light_tint"])
  cam, normals, colors = render_lib.pose_and_shade(
      verts, shading_lib.vertex_normals(verts, model.triangles), alb, params["angles"],
      params["translation"], light)
  return cam, normals, alb, colors
