"""Pure step functions of the four FOCUS training stages (run under ``jax.pmap``).

Every step has the signature ``step(state, batch, model, identity) -> (state, metrics)``:

* ``state``: :class:`~focus_jax.train.state.TrainState` (this device's replica);
* ``batch``: dict of this device's share of the batch: ``image`` [b, S, S, 3] in
  [0, 1], ``landmarks`` [b, 68, 2] px, and for the UNet pre-training ``pseudo``
  [b, S, S] in {0, 1};
* ``model``: the MorphableModel pytree; ``identity``: an IdentityNet or None.

Gradients, losses and BatchNorm statistics are averaged over the pmap axis
:data:`AXIS` (which spans every device of every host under ``jax.distributed``),
so n devices with b examples each take the same step as one device with n·b, up to
float rounding (tests/test_step_devices.py) — except for the UNet's dropout, whose
key is folded with the device index: another device layout drops other units (same
distribution, other draws).
All loss terms are means over examples or pixels with equal shares per device,
except the masked reconstruction ``Σ‖M·F·(I−R)‖ / Σ M·F`` and the UNet's
cross-entropy over the face pixels, ratios of global sums: :func:`global_ratio`
computes them exactly (value and gradient).

A step whose loss or gradient is not finite changes nothing but the counters
(``num_skipped``, ``bad_streak``) and the step number.

Phases (static):
  'pretrain'    stage 1: encoder, robust photometric (or, ``photo_loss='l2'``, the plain
                face-pixel MSE) + landmarks + perceptual + reg;
  'unet'        stage 3: UNet, binary cross-entropy on pseudo masks (encoder frozen);
  'em_unet'     stage 4 UNet block: area + binary + preserve + dist + neighbour;
  'em_encoder'  stage 4 encoder block: masked reconstruction + perceptual + reg +
                landmarks + area (UNet frozen; with ``em_mask_gradient`` the gradient
                also flows through its mask M into the render, as the reference).

Switches between the reference's choices and focus-jax's (docs/FIDELITY.md):
``identity_inputs`` / ``identity_render_landmarks`` (what the identity net sees),
``unet_bce`` (stage-3 loss) and ``em_lr_schedule`` ('reference': the update is scaled by
the global step's rate, :mod:`focus_jax.train.schedules`).

Mixed precision: with ``compute_dtype='bfloat16'`` the networks run on bf16 copies of
their float32 parameters (gradients flow back to the float32 master copy); renders,
losses and optimiser states are float32.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import optax

from focus_jax import losses
from focus_jax.autoencoder.networks import encode, prior_sigma_map, render_faces, segment
from focus_jax.morphable import model as model_lib
from focus_jax.train import schedules
from focus_jax.train.config import TrainConfig
from focus_jax.train.state import RNG_IMPL, Networks, TrainState

AXIS = "batch"
PHASES = ("pretrain", "unet", "em_unet", "em_encoder")
# Loss terms each phase reports (plus 'loss', the weighted total).
TERMS = {
    "pretrain": ("photometric", "landmark", "perceptual", "regularization"),
    "unet": ("bce", "pseudo_fraction"),
    "em_unet": ("area", "binary", "preserve", "dist", "neighbour"),
    "em_encoder": ("reconstruction", "perceptual", "regularization", "landmark", "area"),
}
# Reference landmark units: the weights assume pixels of a 224-pixel crop.
REFERENCE_SIZE = 224.0


def trained_network(phase: str) -> str:
  return "encoder" if phase in ("pretrain", "em_encoder") else "unet"


def global_ratio(num, den, axis_name=AXIS, eps: float = 1.0):
  """A per-device surrogate whose pmean is ``Σ num / Σ den`` over the axis, with the
  exact gradient of that global ratio (numerator *and* denominator).

  ``num``, ``den``: this device's scalar sums. The surrogate's value is
  ``num / D̄``; its gradient ``∂num / D̄ − (N̄ / D̄²) ∂den``; averaged over the
  devices both give the ratio of the global sums (N̄, D̄: means over devices).
  """
  n_bar = jax.lax.pmean(num, axis_name)
  d_bar = jnp.maximum(jax.lax.pmean(den, axis_name), eps / jax.lax.psum(1, axis_name))
  sg = jax.lax.stop_gradient
  c = sg(n_bar / jnp.square(d_bar))
  return num / sg(d_bar) - c * den + sg(c * den)


def _landmark_term(model, predicted, target, size: int):
  scale = REFERENCE_SIZE / size
  return losses.landmark_loss(predicted * scale, target * scale,
                              valid=model_lib.landmark_mask(model))


def _encode_and_render(config, nets, params, state, model, images):
  """The encoder being trained (train mode) and its render: (out, RenderOutput, new stats)."""
  out, enc_stats = encode(config, nets, {"params": params,
                                         "batch_stats": state.encoder["batch_stats"]},
                          images, train=True)
  return out, render_faces(config, nets, model, out, images), enc_stats


def _identity_render(config, r):
  """(render image, its landmarks [b, 68, 2]) as the identity net sees them:
  identity_inputs 'reference' = the black-background render R·F (exact where F is
  binary; at antialiased silhouette pixels the composited render times F), else the
  render over the target; identity_render_landmarks 'predicted' = the render's own
  landmarks, else None (the target's)."""
  image = r.image * r.mask[..., None] if config.identity_inputs == "reference" else r.image
  lms = r.landmarks if config.identity_render_landmarks == "predicted" else None
  return image, lms


def _perceptual(config, identity, r, images, lms):
  """Perceptual identity term of the encoder losses; 0 without an identity network."""
  if identity is None:
    return jnp.zeros(())
  render, render_lms = _identity_render(config, r)
  render_lms = lms if render_lms is None else render_lms
  return losses.perceptual_loss(identity(render, render_lms).embedding,
                                identity(images, lms).embedding)


def pretrain_objective(config: TrainConfig, nets, model, out, images, landmarks,
                       identity=None, axis_name=AXIS):
  """The stage-1 objective of encoder outputs ``out`` on ``images``: (total, terms).

  ``w_photo``·photometric (robust, or ``photo_loss='l2'``: the face-pixel MSE) +
  ``w_landmark``·landmarks + ``w_reg``·coefficient regularisation +
  ``w_perceptual``·identity (0 without an identity net). The training step applies it
  to the encoder's outputs; ``benchmarks/objective_ceiling.py`` minimises it over
  free per-image outputs (``out = nets.encoder.postprocess(raw)``) to measure what
  the objective itself can recover.

  Args:
    out: :class:`~focus_jax.nets.encoder.EncoderOutput` of b faces.
    images: [b, S, S, 3] in [0, 1]; landmarks: [b, 68, 2] px of the S-pixel crop.
    axis_name: the pmap axis the L2 term's ratio of sums spans; None outside pmap.

  Returns:
    total: scalar; terms: dict photometric, landmark, regularization, perceptual.
  """
  r = render_faces(config, nets, model, out, images)
  if config.photo_loss == "l2":
    # A ratio of global sums (Σ F‖I−R‖² / Σ F), exact under pmap like the masked
    # reconstruction.
    den = jnp.sum(r.mask)
    num = losses.l2_photometric(r.image, images, r.mask) * jnp.maximum(den, 1.0)
    photo = (global_ratio(num, den, axis_name) if axis_name is not None
             else num / jnp.maximum(den, 1.0))
  else:
    photo, _ = losses.robust_photometric(r.image, images, r.mask)
  terms = dict(photometric=photo,
               landmark=_landmark_term(model, r.landmarks, landmarks, config.image_size),
               regularization=losses.coefficient_regularization(out.shape, out.expression,
                                                                out.albedo))
  total = (config.w_photo * photo + config.w_landmark * terms["landmark"]
           + config.w_reg * terms["regularization"])
  terms["perceptual"] = _perceptual(config, identity, r, images, landmarks)
  total = total + config.w_perceptual * terms["perceptual"]
  return total, terms


def _loss_pretrain(config, nets, params, state, batch, model, identity, rng):
  del rng
  images, lms = batch["image"], batch["landmarks"]
  out, enc_stats = encode(config, nets, {"params": params,
                                         "batch_stats": state.encoder["batch_stats"]},
                          images, train=True)
  total, terms = pretrain_objective(config, nets, model, out, images, lms, identity)
  return total, terms, dict(encoder=enc_stats)


def _frozen_render(config, nets, state, batch, model):
  images = batch["image"]
  out, _ = encode(config, nets, state.encoder, images, train=False)
  out = jax.lax.stop_gradient(out)
  return jax.lax.stop_gradient(render_faces(config, nets, model, out, images))


def _loss_unet(config, nets, params, state, batch, model, identity, rng):
  del identity
  images = batch["image"]
  r = _frozen_render(config, nets, state, batch, model)
  _, logits, stats = segment(config, nets, {"params": params,
                                            "batch_stats": state.unet["batch_stats"]},
                             r.image, images, train=True, rng=rng, face=r.mask)
  target = batch["pseudo"].astype(jnp.float32)
  # The pseudo masks label the face region only (F·[robust inlier]); outside F the
  # mask is multiplied by F in every use, so the cross-entropy counts face pixels
  # (a ratio of global sums, exact under pmap like the masked reconstruction).
  f = r.mask
  den = jnp.sum(f)
  if config.unet_bce == "reference":
    # S3: BCE-with-logits of the UNet's sigmoid output over every pixel (a double
    # sigmoid: its gradient vanishes as the mask saturates; equal shares per device).
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(jax.nn.sigmoid(logits), target))
  else:
    ce = optax.sigmoid_binary_cross_entropy(logits, target)
    bce = global_ratio(jnp.sum(f * ce), den)
  frac = global_ratio(jax.lax.stop_gradient(jnp.sum(f * target)), den)
  return bce, dict(bce=bce, pseudo_fraction=frac), dict(unet=stats)


def _loss_em_unet(config, nets, params, state, batch, model, identity, rng, prior=None):
  images, lms = batch["image"], batch["landmarks"]
  r = _frozen_render(config, nets, state, batch, model)
  m, _, stats = segment(config, nets, {"params": params,
                                       "batch_stats": state.unet["batch_stats"]},
                        r.image, images, train=True, rng=rng, face=r.mask)
  f = r.mask
  scale = None if prior is None else prior_sigma_map(prior, nets, model, r.vertices_camera)
  terms = dict(area=losses.area_loss(f, m), binary=losses.binary_loss(f, m),
               neighbour=losses.neighbour_loss(r.image, images, m * f, scale=scale))
  total = (config.w_area * terms["area"] + config.w_binary * terms["binary"]
           + config.w_neighbour * terms["neighbour"])
  if identity is not None:
    # 'reference': the masks are M·F and the render is black outside the face (S4).
    mm = (m * f if config.identity_inputs == "reference" else m)[..., None]
    render, render_lms = _identity_render(config, r)
    f_target = identity(images, lms).shallow
    f_masked_target = identity(images * mm, lms).shallow
    f_masked_render = identity(render * mm, lms if render_lms is None else render_lms).shallow
    terms["preserve"] = losses.preserve_loss(f_target, f_masked_target)
    terms["dist"] = losses.dist_loss(f_masked_render, f_masked_target)
    total = total + config.w_preserve * terms["preserve"] + config.w_dist * terms["dist"]
  else:
    terms["preserve"] = terms["dist"] = jnp.zeros(())
  return total, terms, dict(unet=stats)


def _loss_em_encoder(config, nets, params, state, batch, model, identity, rng):
  del rng
  images, lms = batch["image"], batch["landmarks"]
  out, r, enc_stats = _encode_and_render(config, nets, params, state, model, images)
  # em_mask_gradient (the reference): the encoder's gradient also flows through the
  # frozen UNet's mask M(R, I) into the render; the UNet's own parameters are not
  # differentiated here (they are not this step's params).
  sg = (lambda x: x) if config.em_mask_gradient else jax.lax.stop_gradient
  m, _, _ = segment(config, nets, state.unet, sg(r.image), images, train=False,
                    face=sg(r.mask))
  m = sg(m)
  w = r.mask * m
  den = jnp.sum(w)
  num = losses.masked_reconstruction(r.image, images, r.mask, m) * jnp.maximum(den, 1.0)
  terms = dict(reconstruction=global_ratio(num, den),
               regularization=losses.coefficient_regularization(out.shape, out.expression,
                                                                out.albedo),
               landmark=_landmark_term(model, r.landmarks, lms, config.image_size),
               area=losses.area_loss(r.mask, m))
  total = (config.w_rec * terms["reconstruction"] + config.w_reg * terms["regularization"]
           + config.w_landmark * terms["landmark"] + config.w_enc_area * terms["area"])
  terms["perceptual"] = _perceptual(config, identity, r, images, lms)
  total = total + config.w_perceptual * terms["perceptual"]
  return total, terms, dict(encoder=enc_stats)


_LOSSES: Dict[str, Callable] = dict(pretrain=_loss_pretrain, unet=_loss_unet,
                                    em_unet=_loss_em_unet, em_encoder=_loss_em_encoder)


def _all_finite(tree):
  leaves = jax.tree_util.tree_leaves(tree)
  return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(x)) for x in leaves],
                          jnp.bool_(True))


def make_step(config: TrainConfig, nets: Networks, phase: str, axis_name: str = AXIS,
              prior=None):
  """The (unmapped) step function of ``phase``; wrap it with ``jax.pmap(...,
  axis_name=axis_name)`` (see :func:`focus_jax.train.parallel.pmap_step`).

  ``prior``: optional :class:`focus_jax.prior.MisfitPrior` of the model, used by the
  EM UNet losses (:func:`focus_jax.autoencoder.networks.prior_sigma_map`); ignored by
  the other phases."""
  if phase not in PHASES:
    raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")
  loss_impl = _LOSSES[phase]
  if phase == "em_unet" and prior is not None:
    loss_impl = functools.partial(loss_impl, prior=prior)
  which = trained_network(phase)
  tx = nets.encoder_tx if which == "encoder" else nets.unet_tx
  rate = schedules.step_rate(config, which)

  def step(state: TrainState, batch, model, identity):
    key = jax.random.wrap_key_data(state.rng, impl=RNG_IMPL)
    key = jax.random.fold_in(jax.random.fold_in(key, state.step),
                             jax.lax.axis_index(axis_name))
    variables = state.encoder if which == "encoder" else state.unet
    opt_state = state.encoder_opt if which == "encoder" else state.unet_opt

    def loss_fn(params):
      total, terms, stats = loss_impl(config, nets, params, state, batch, model, identity, key)
      if config.fault_step >= 0:   # test hook: a fault from this step on
        total = total + jnp.where(state.step >= config.fault_step, jnp.nan, 0.0)
      return total, (terms, stats)

    (total, (terms, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"])
    grads = jax.lax.pmean(grads, axis_name)
    total = jax.lax.pmean(total, axis_name)
    terms = jax.lax.pmean(terms, axis_name)
    new_stats = stats[which]
    ok = jnp.isfinite(total) & _all_finite(grads) & _all_finite(new_stats)
    updates, new_opt = tx.update(grads, opt_state, variables["params"])
    if rate is not None:   # em_lr_schedule 'reference': the rate of the global step
      lr = rate(state.step)
      updates = jax.tree_util.tree_map(lambda u: u * lr, updates)
    new_params = optax.apply_updates(variables["params"], updates)
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_vars = {"params": keep(new_params, variables["params"]),
                "batch_stats": keep(new_stats, variables["batch_stats"])}
    new_opt = keep(new_opt, opt_state)
    changes = {which: new_vars, f"{which}_opt": new_opt}
    bad = jnp.logical_not(ok).astype(jnp.int32)
    state = state.replace(step=state.step + 1, num_skipped=state.num_skipped + bad,
                          bad_streak=jnp.where(ok, 0, state.bad_streak + 1), **changes)
    metrics = dict(terms, loss=total, finite=ok.astype(jnp.float32),
                   grad_norm=optax.tree.norm(grads))
    return state, metrics

  return step
