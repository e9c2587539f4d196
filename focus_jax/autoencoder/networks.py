"""The FOCUS networks of a run: built from its config, and their forward pass.

:func:`make_modules` builds the encoder and the UNet that a
:class:`~focus_jax.train.config.TrainConfig` describes (with its morphable model and
camera); :func:`encode`, :func:`segment` and :func:`render_faces` are the forward
pieces the training steps and :func:`make_predict` share.

``nets`` arguments: a :class:`Modules` or anything with the same ``encoder``,
``unet`` and ``intrinsics`` fields (training's :class:`~focus_jax.train.state.Networks`).

Mixed precision: with ``compute_dtype='bfloat16'`` the networks run on bf16 copies of
their float32 parameters (gradients flow back to the float32 master copy); renders
and losses are float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from focus_jax import losses
from focus_jax import morphable
from focus_jax.errors import FocusError
from focus_jax.morphable import model as model_lib
from focus_jax.nets import encoder as encoder_lib
from focus_jax.nets import unet as unet_lib
from focus_jax.render import camera
from focus_jax.render import rasterize as raster_lib
from focus_jax.render import render as render_lib
from focus_jax.train.config import TrainConfig


class Modules(NamedTuple):
  """The static pieces of a run's networks: the two modules, the model, the camera."""
  encoder: encoder_lib.FaceEncoder
  unet: unet_lib.UNet
  model: Any
  intrinsics: camera.Intrinsics


def load_model(config: TrainConfig):
  """The morphable model of ``config``, truncated to the configured components.

  Raises:
    FocusError: ``require_reference_model`` (paper.flags) with the built-in model.
  """
  if config.require_reference_model and config.model == "builtin":
    raise FocusError(
        "--require_reference_model (set by paper.flags): the reference trains on BFM 2017; "
        "give --model=PATH/model2017-1_bfm_nomouth.h5, or add --norequire_reference_model "
        "to run the paper configuration on the built-in face model (not the reference's)")
  model = (morphable.builtin(resolution=config.model_resolution)
           if config.model == "builtin" else morphable.load(config.model,
                                                            **_model_options(config)))
  return morphable.truncate(model, config.num_shape, config.num_expression, config.num_albedo)


def _model_options(config: TrainConfig) -> dict:
  """Loader options of ``config.model``: the ``bfm_*`` fields, for BFM 2017 .h5 files."""
  if morphable.detect_format(config.model) != "bfm2017":
    return {}
  return dict(crop=config.bfm_crop, landmarks=config.bfm_landmarks,
              origin=config.bfm_origin or None)


def make_modules(config: TrainConfig, axis_name: str | None = "batch", model=None) -> Modules:
  """Encoder and UNet (BatchNorm synchronised over ``axis_name``), model, camera."""
  model = load_model(config) if model is None else model
  enc = encoder_lib.FaceEncoder(
      num_shape=model.num_shape, num_expression=model.num_expression,
      num_albedo=model.num_albedo, active_shape=None, active_expression=None,
      active_albedo=None, depth=config.encoder_depth, width=config.encoder_width,
      stage_sizes=config.encoder_stages, bn_axis_name=axis_name,
      depth_scale=config.depth_scale, translation_scale=config.translation_scale)
  net = unet_lib.UNet(base_width=config.unet_width, depth=config.unet_depth,
                      bn_axis_name=axis_name)
  return Modules(enc, net, model, camera.Intrinsics.reference(config.image_size))


def _cast(tree, dtype):
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _dtype(config: TrainConfig):
  return jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32


def encode(config: TrainConfig, nets, variables, images, train: bool):
  """Encoder forward: images [b, S, S, 3] -> (EncoderOutput float32, new batch_stats)."""
  dt = _dtype(config)
  v = {"params": _cast(variables["params"], dt), "batch_stats": variables["batch_stats"]}
  if train:
    out, upd = nets.encoder.apply(v, images.astype(dt), train=True, mutable=["batch_stats"])
    stats = _cast(upd["batch_stats"], jnp.float32)
  else:
    out, stats = nets.encoder.apply(v, images.astype(dt), train=False), None
  return _cast(out, jnp.float32), stats


def segment(config: TrainConfig, nets, variables, render_image, images, train: bool,
            rng=None, face=None):
  """UNet forward on render ⊕ target: -> (mask [b, S, S] in (0, 1), logits, new stats).

  ``face``: [b, S, S] render coverage F. Given, the render channels are ``R·F`` (black
  outside the face, as the reference's raster image) rather than the render composited
  over the target: composited, a background pixel (R = I exactly) looks like a perfect
  inlier to the UNet, so it cannot tell face from background by the residual.
  """
  dt = _dtype(config)
  v = {"params": _cast(variables["params"], dt), "batch_stats": variables["batch_stats"]}
  if face is not None:
    render_image = render_image * face[..., None]
  x = jnp.concatenate([render_image, images], axis=-1).astype(dt)
  if train:
    logits, upd = nets.unet.apply(v, x, train=True, return_logits=True,
                                  rngs={"dropout": rng}, mutable=["batch_stats"])
    stats = _cast(upd["batch_stats"], jnp.float32)
  else:
    logits, stats = nets.unet.apply(v, x, train=False, return_logits=True), None
  logits = logits[..., 0].astype(jnp.float32)
  return jax.nn.sigmoid(logits), logits, stats


def render_faces(config: TrainConfig, nets, model, out, images):
  """Renders encoder outputs over the targets: RenderOutput (image [b, S, S, 3],
  mask [b, S, S], landmarks [b, 68, 2] px)."""
  return render_lib.render(model, out.shape, out.expression, out.albedo, out.angles,
                           out.translation, out.light, nets.intrinsics,
                           mode=config.render_mode, background=images, buffers=False,
                           antialias=config.antialias)


def prior_sigma_map(prior, nets, model, vertices_camera):
  """[b, S, S] σ multiplier (≥ 1; 1 on background) of a misfit prior at a render's
  visible surface (a separate hard rasterization: no gradient flows through it)."""
  from focus_jax import prior as prior_lib  # pylint: disable=import-outside-toplevel
  frags = raster_lib.rasterize(vertices_camera, model.triangles, nets.intrinsics,
                               cull_backfaces=True)
  return jax.lax.stop_gradient(prior_lib.sigma_map(prior, vertices_camera, model.triangles,
                                                   frags, nets.intrinsics))


def make_predict(config: TrainConfig, nets, with_unet: bool = True, prior=None):
  """(encoder vars, unet vars, images [b, S, S, 3], model) -> dict of eval-mode outputs:
  render [b,S,S,3] (over the target), face [b,S,S], inlier (robust likelihood) [b,S,S],
  mask (UNet, or the robust inliers without it) [b,S,S], landmarks [b,68,2],
  vertices [b,V,3] (model space, mm), vertices_camera [b,V,3], shape/expression/albedo,
  angles [b,3] (rad) and translation [b,3] (mm) (the pose in ``nets.intrinsics``' camera).

  ``prior``: a :class:`focus_jax.prior.MisfitPrior` of the model: the robust
  inliers then use its per-pixel σ map (hard-to-fit skin is not an outlier)."""

  def predict(enc_vars, unet_vars, images, model):
    out, _ = encode(config, nets, enc_vars, images, train=False)
    r = render_faces(config, nets, model, out, images)
    sigma = losses.SIGMA
    if prior is not None:
      sigma = losses.SIGMA * prior_sigma_map(prior, nets, model, r.vertices_camera)
    inlier = losses.robust_inliers(r.image, images, r.mask, sigma)
    if with_unet:
      m, _, _ = segment(config, nets, unet_vars, r.image, images, train=False, face=r.mask)
    else:
      m = inlier
    verts = model_lib.vertices(model, out.shape, out.expression)
    return dict(render=r.image, face=r.mask, inlier=inlier, mask=m, landmarks=r.landmarks,
                vertices=verts, vertices_camera=r.vertices_camera, shape=out.shape,
                expression=out.expression, albedo=out.albedo, angles=out.angles,
                translation=out.translation)

  return predict
