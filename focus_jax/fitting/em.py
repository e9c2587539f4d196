"""The robust fit's orchestrator: closed-form start, EM rounds, final E-step.

:func:`fit` checks its inputs and calls one jitted function on the whole batch:

1. pose from the landmarks (:mod:`~focus_jax.fitting.pose`), then a first
   closed-form light on the visible vertices, its tint pulled towards skin
   (``Light.initial_tint_ridge``);
2. ``schedule.rounds`` EM rounds (``lax.scan``): E-step and light
   (:mod:`~focus_jax.fitting.estep`), then ``schedule.steps`` Adam steps
   (:mod:`~focus_jax.fitting.mstep`);
3. a full-resolution E-step for the returned render and inlier mask, extended
   by up to ``estep.contour_margin`` pixels beyond the rendered outline.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from focus_jax.fitting import config as config_lib
from focus_jax.fitting import estep as estep_lib
from focus_jax.fitting import inliers as inliers_lib
from focus_jax.fitting import light as light_lib
from focus_jax.fitting import mstep as mstep_lib
from focus_jax.fitting import problem as problem_lib
from focus_jax.fitting import sampling
from focus_jax.morphable import model as model_lib
from focus_jax.render import camera as camera_lib
from focus_jax.render import render as render_lib

LOSS_NAMES = ("total", "photometric", "landmark", "regularization")
INIT_KEYS = ("shape", "expression", "albedo", "angles", "translation")


@flax.struct.dataclass
class FitResult:
  """What :func:`fit` returns (leading B only for batched input).

  Attributes:
    shape, expression, albedo: [B, K*] coefficients.
    angles: [B, 3] rad; translation: [B, 3] mm; light: [B, 9, 3].
    vertices: [B, V, 3] fitted mesh, model space (mm).
    vertices_camera: [B, V, 3] camera space (mm).
    landmarks: [B, 68, 2] projected model landmarks (px).
    image: [B, H, W, 3] render (black background).
    mask: [B, H, W] render coverage (float 0/1).
    inlier: [B, H, W] estimated inlier mask (float 0/1), inside ``mask`` (up to
      ``config.estep.contour_margin`` pixels beyond its outline, see :func:`~focus_jax.fitting.inliers.extend_inliers`).
    inlier_probability: [B, H, W] the E-step posterior before thresholding.
    vertex_weight: [B, V] final per-vertex inlier weight (visible and inlier).
    loss_trace: [B, iterations, 4] per-iteration terms (:data:`LOSS_NAMES`).
  """
  shape: jnp.ndarray
  expression: jnp.ndarray
  albedo: jnp.ndarray
  angles: jnp.ndarray
  translation: jnp.ndarray
  light: jnp.ndarray
  vertices: jnp.ndarray
  vertices_camera: jnp.ndarray
  landmarks: jnp.ndarray
  image: jnp.ndarray
  mask: jnp.ndarray
  inlier: jnp.ndarray
  inlier_probability: jnp.ndarray
  vertex_weight: jnp.ndarray
  loss_trace: jnp.ndarray




def _set_light(params, light):
  return dict(params, light_sh=light[0], light_tint=light[1])


def _em_round(pb: problem_lib.FitProblem, opt, carry, r):
  """One EM round (a ``lax.scan`` body over round indices ``r``)."""
  config = pb.config
  p, s, weight = carry
  schedule = config.schedule.sigma_schedule or (1.0,)
  sigma_scale = jnp.asarray(schedule)[jnp.minimum(r, len(schedule) - 1)]
  # Inliers from the current estimate (or the given masks), then the light
  # re-solved on them.
  _, _, _, weight = estep_lib.estep(pb, p, sigma_scale, config.robust)
  p = _set_light(p, estep_lib.relight(pb, p, weight))
  # The albedo stays at the mean for the first rounds so that it cannot absorb
  # occluders before the E-step has had a chance to see them.
  albedo_on = (r >= config.schedule.albedo_start_round).astype(jnp.float32)
  (p, s), terms = mstep_lib.run(pb, opt, p, s, jnp.take(weight, pb.sub_idx, axis=1),
                                sigma_scale, albedo_on)
  return (p, s, weight), terms


def _final(pb: problem_lib.FitProblem, params: dict, trace) -> FitResult:
  """Full-resolution E-step and the :class:`FitResult` of ``params``."""
  config, model = pb.config, pb.model
  schedule = config.schedule.sigma_schedule or (1.0,)
  rounds = config.schedule.rounds
  final_scale = schedule[min(rounds, len(schedule)) - 1] if rounds else 1.0
  render, face, post, weight = estep_lib.estep(pb, params, final_scale, config.robust,
                                               full=True)
  verts = jax.vmap(lambda p: model_lib.vertices(model, p["shape"], p["expression"]))(params)
  cam = jax.vmap(lambda p: problem_lib.posed_face(model, p)[0])(params)
  lms = render_lib.project_vertices(model_lib.landmark_positions(model, cam), pb.intrinsics)
  inlier = (post > 0.5) & face
  margin = config.estep.contour_margin
  if config.robust and margin > 0 and pb.masks is None:
    extend = functools.partial(inliers_lib.extend_inliers, margin=margin,
                               outlier_sigmas=config.estep.outlier_sigmas)
    inlier = inlier | jax.vmap(extend, in_axes=(0, 0, 0, 0, None))(
        render, face, inlier, pb.images, config.estep.sigma * final_scale)
  return FitResult(shape=params["shape"], expression=params["expression"],
                   albedo=params["albedo"], angles=params["angles"],
                   translation=params["translation"],
                   light=light_lib.light_from_factors(params["light_sh"], params["light_tint"]),
                   vertices=verts, vertices_camera=cam, landmarks=lms, image=render,
                   mask=face.astype(jnp.float32), inlier=inlier.astype(jnp.float32),
                   inlier_probability=post, vertex_weight=weight, loss_trace=trace)


@functools.partial(jax.jit, static_argnames=("config", "intrinsics"))
def _fit_batch(model, images, landmarks, sigma_vertex, sub_idx, lm_sub,
               config: config_lib.FitConfig, intrinsics: camera_lib.Intrinsics, init: dict,
               masks, priors) -> FitResult:
  pb = problem_lib.prepare(model, images, landmarks, sigma_vertex, sub_idx, lm_sub, config,
                           intrinsics, masks, priors)
  params = problem_lib.initial_params(pb, init)
  opt = optax.scale_by_adam()
  opt_state = opt.init(params)
  # Visible vertices of the initial pose give the first closed-form light, so
  # that the first E-step compares shaded colours, not the default grey; its
  # tint is pulled towards skin so that a large occluder cannot become "the face".
  _, _, _, weight0 = estep_lib.estep(pb, params, 1.0, config.robust and masks is not None)
  if config.robust and priors is not None and masks is None:
    # A given inlier prior (e.g. the real-face segmenter) weights that first light too.
    weight0 = weight0 * estep_lib.prior_at_vertices(pb, params)
  params = _set_light(params, estep_lib.relight(pb, params, weight0,
                                                config.light.initial_tint_ridge))
  rounds, steps = config.schedule.rounds, config.schedule.steps
  (params, _, _), trace = jax.lax.scan(functools.partial(_em_round, pb, opt),
                                       (params, opt_state, weight0), jnp.arange(rounds))
  trace = jnp.swapaxes(trace.reshape(rounds * steps, images.shape[0], len(LOSS_NAMES)), 0, 1)
  return _final(pb, params, trace)


def _check_map(value, name: str, image, single: bool):
  """A per-pixel map argument as [B, H, W] float32 (or None)."""
  if value is None:
    return None
  maps = jnp.asarray(value, jnp.float32)
  maps = maps[None] if single and maps.ndim == 2 else maps
  if maps.shape != image.shape[:3]:
    raise ValueError(f"fit: {name} must be [H, W] (or [B, H, W]) like the image "
                     f"{tuple(image.shape)}, got {tuple(jnp.shape(value))}")
  return maps


def fit(model: model_lib.MorphableModel, image, landmarks, *,
        config: config_lib.FitConfig = config_lib.FitConfig(), prior=None,
        intrinsics: Optional[camera_lib.Intrinsics] = None, init: Optional[dict] = None,
        inlier_mask=None, inlier_prior=None) -> FitResult:
  """Fits the morphable model to one image or a batch (robust EM by default).

  Args:
    model: the morphable model.
    image: [H, W, 3] or [B, H, W, 3] float in [0, 1].
    landmarks: [68, 2] or [B, 68, 2] iBUG-68 landmarks in pixels (centres at +0.5);
      NaN marks points to ignore; points the model lacks are ignored anyway.
    config: :class:`~focus_jax.fitting.config.FitConfig`.
    prior: a :class:`focus_jax.prior.MisfitPrior` (or a [V] array of per-vertex σ
      multipliers), used when ``config.use_prior``.
    intrinsics: the camera; default :meth:`Intrinsics.reference` for the image size.
    init: optional starting point instead of the mean face at the closed-form
      landmark pose, e.g. a trained encoder's prediction: a dict with any of
      :data:`INIT_KEYS` ('shape' [Ks], 'expression' [Ke], 'albedo' [Ka] coefficients,
      'angles' [3] rad, 'translation' [3] mm; with a leading B for a batch); missing
      keys keep the default. The light is solved in closed form either way.
    inlier_mask: optional [H, W] (or [B, H, W]) segmentation in [0, 1] of the face
      pixels the model should explain, e.g. a FOCUS UNet's output: robust fits use it
      in every E-step instead of estimating the mask (the M-step's residual gate
      still applies), and the returned ``inlier`` is it inside the final render.
      Ignored by non-robust fits.
    inlier_prior: optional [H, W] (or [B, H, W]) per-pixel prior probability in
      (0, 1) that a pixel is visible face, e.g.
      :func:`focus_jax.nets.segmenter.face_probability` of the image: robust fits
      add its log-odds (times ``config.estep.inlier_prior_weight``) to every
      E-step's prior and weight the first closed-form light's vertices by it; the
      mask is still estimated. Ignored by non-robust fits and with ``inlier_mask``.

  Returns:
    :class:`FitResult`, without the batch axis for a single image.

  Raises:
    ValueError: wrong image, landmark, init or mask shapes, or a prior for another
      model.
  """
  image, landmarks, single = _check_images(image, landmarks)
  h, w = image.shape[1], image.shape[2]
  if intrinsics is None:
    intrinsics = camera_lib.Intrinsics.reference(w, h)
  elif (intrinsics.width, intrinsics.height) != (w, h):
    raise ValueError(f"fit: intrinsics are {intrinsics.width}x{intrinsics.height} but the "
                     f"image is {w}x{h}")
  sigma_vertex = prior_scale(model, prior if config.use_prior else None)
  sigma_vertex = jnp.broadcast_to(sigma_vertex, (image.shape[0], model.num_vertices))
  sub_idx, lm_sub = sampling.sample_vertices(model, config.optimiser.max_vertices)
  start = _check_init(model, init, image.shape[0], single)
  masks = _check_map(inlier_mask, "inlier_mask", image, single)
  priors = None if masks is not None else _check_map(inlier_prior, "inlier_prior", image,
                                                     single)
  result = _fit_batch(model, image, landmarks, sigma_vertex, jnp.asarray(sub_idx),
                      jnp.asarray(lm_sub), config, intrinsics, start, masks, priors)
  if single:
    result = jax.tree_util.tree_map(lambda a: a[0], result)
  return result


def _check_images(image, landmarks):
  """``fit``'s images and landmarks as float32 [B, H, W, 3], [B, 68, 2], and
  whether the input was a single image."""
  image = jnp.asarray(image, jnp.float32)
  landmarks = jnp.asarray(landmarks, jnp.float32)
  single = image.ndim == 3
  if image.ndim not in (3, 4) or image.shape[-1] != 3:
    raise ValueError(f"fit: image must be [H, W, 3] or [B, H, W, 3], got {tuple(image.shape)}")
  if single:
    image, landmarks = image[None], landmarks[None] if landmarks.ndim == 2 else landmarks
  if landmarks.shape != (image.shape[0], model_lib.NUM_LANDMARKS, 2):
    raise ValueError(f"fit: landmarks must be [68, 2] (or [B, 68, 2] for B images), got "
                     f"{tuple(landmarks.shape)} for images {tuple(image.shape)}")
  return image, landmarks, single


def _check_init(model, init: Optional[dict], batch: int, single: bool) -> dict:
  """``fit``'s ``init`` as float32 [B, n] arrays, checked against the model."""
  if not init:
    return {}
  sizes = dict(shape=model.num_shape, expression=model.num_expression,
               albedo=model.num_albedo, angles=3, translation=3)
  unknown = sorted(set(init) - set(sizes))
  if unknown:
    raise ValueError(f"fit: unknown init keys {unknown}; expected some of {list(INIT_KEYS)}")
  start = {}
  for key, value in init.items():
    value = jnp.asarray(value, jnp.float32)
    value = value[None] if single and value.ndim == 1 else value
    if value.shape != (batch, sizes[key]):
      raise ValueError(f"fit: init[{key!r}] must be [{sizes[key]}] (or [B, {sizes[key]}] "
                       f"for B images) for this model, got {tuple(jnp.shape(init[key]))}")
    start[key] = value
  return start


def prior_scale(model, prior) -> jnp.ndarray:
  """[V] per-vertex σ multiplier of ``prior`` (ones for None)."""
  if prior is None:
    return jnp.ones((model.num_vertices,), jnp.float32)
  scale = jnp.asarray(getattr(prior, "sigma_scale", prior), jnp.float32)
  if scale.shape != (model.num_vertices,):
    raise ValueError(f"fit: the misfit prior has {scale.shape[0] if scale.ndim else 0} vertices "
                     f"but the model {model.name!r} has {model.num_vertices}; build the prior "
                     "for this model (focus_jax.fitting.build_prior)")
  return scale
