"""Every loss term of FOCUS as a pure function of arrays.

Shapes: B = batch, H x W = image, V = vertices. Images are [B, H, W, 3] in [0, 1],
masks [B, H, W] in [0, 1] (1 = face / inlier), landmarks [B, 68, 2] in pixels.
Each function reduces to a scalar exactly as the FOCUS reference does (the
normalisation is part of the formula and is tested), and works under ``jit``,
``vmap`` and ``grad``.

Terms (see ../shared/DESIGN.md §1; ``F`` = rendered face mask, ``M`` = inlier mask,
``R`` = render, ``I`` = target, ``φ`` = identity-network features):

* :func:`robust_photometric` — Gaussian foreground (σ = 0.043) against a uniform
  outlier likelihood at 3σ; only pixels whose foreground log-likelihood wins count.
* :func:`l2_photometric` — ``Σ F‖I−R‖² / (2σ² Σ F)``: every face pixel counts, no
  outlier model (MoFA-style; not in the reference, a lower anchor for benchmarks).
* :func:`masked_reconstruction` — ``Σ‖M·F·(I−R)‖₂ / Σ M·F``.
* :func:`landmark_loss` — weighted mean squared landmark error (weight applied
  before squaring, as the reference), undefined landmarks masked out.
* :func:`perceptual_loss` — ``1 − cos(φ(R), φ(I))``.
* :func:`coefficient_regularization` — ``(Σs² + Σe² + Σa²) / B / 224``.
* UNet terms: :func:`area_loss`, :func:`binary_loss`, :func:`preserve_loss`,
  :func:`dist_loss`, :func:`neighbour_loss`.

All reference weights live in :data:`WEIGHTS` (one dict per training stage).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# Robust likelihood of the reference: foreground Gaussian std on [0, 1] RGB, and
# the uniform outlier likelihood equals the Gaussian's value at this many σ.
SIGMA = 0.043
OUTLIER_SIGMAS = 3.0
# The reference divides the coefficient sum of squares by the batch and by 224.
REG_DIVISOR = 224.0
NUM_LANDMARKS = 68

# Reference loss weights, per training stage (DESIGN.md §1). The public FOCUS code
# scales some terms differently inside its step functions (e.g. EM encoder:
# 4·rec + 0.5·perc + 0.0067·reg + 0.01·lm + 0.5·area; UNet preserve: 2.5); the
# values below are the paper/design weights, which ``train/`` uses.
WEIGHTS = dict(
    pretrain=dict(photometric=0.5, landmark=5e-4, perceptual=0.25, regularization=0.1),
    encoder=dict(reconstruction=0.5, perceptual=0.25, regularization=0.1, landmark=5e-4,
                 area=0.06),
    unet=dict(area=0.5, binary=10.0, preserve=0.25, dist=3.0, neighbour=15.0),
)


def landmark_weights(heavy: float = 20.0) -> np.ndarray:
  """[68] float32 landmark weights: ``heavy`` on 0-based points 28-30 (iBUG 29-31, the
  lower nose ridge down to the nose tip) and on the last 8 (iBUG 61-68, the inner mouth),
  1 elsewhere. The table is the FOCUS reference's (Occlusion-Robust-MoFA
  ``util/load_object.py`` at commit 33a5add: ``weight[28:31] = 20``,
  ``weight[-8:] = 20``)."""
  w = np.ones((NUM_LANDMARKS,), np.float32)
  w[28:31] = heavy
  w[60:68] = heavy
  return w


def _log_normaliser(sigma):
  # log of the 3-D isotropic Gaussian normaliser: -3/2 log(2π) - 3 log σ.
  return -1.5 * math.log(2.0 * math.pi) - 3.0 * jnp.log(sigma)


def gaussian_log_likelihood(residual_sq, sigma=SIGMA):
  """Per-pixel log N(r; 0, σ²·I₃) from the squared RGB residual norm [...]."""
  return -0.5 * residual_sq / jnp.square(sigma) + _log_normaliser(sigma)


def outlier_log_likelihood(sigma=SIGMA, outlier_sigmas: float = OUTLIER_SIGMAS):
  """Constant log-likelihood of the uniform outlier model: the Gaussian at ``k·σ``."""
  return gaussian_log_likelihood(jnp.square(outlier_sigmas * sigma), sigma)


def robust_inliers(image, target, face_mask, sigma=SIGMA,
                   outlier_sigmas: float = OUTLIER_SIGMAS):
  """Pixels whose Gaussian foreground log-likelihood beats the uniform outlier.

  Args:
    image, target: [..., H, W, 3] render and target.
    face_mask: [..., H, W] render coverage F.
    sigma: scalar or [..., H, W] (a misfit-prior-adjusted σ map).

  Returns:
    [..., H, W] float32 in {0, 1} (times ``face_mask``). Not differentiable.
  """
  sq = jnp.sum(jnp.square(target - image), axis=-1)
  fg = gaussian_log_likelihood(sq, sigma)
  # The outlier model keeps the *base* σ of the scalar case so a larger prior σ
  # widens the inlier band rather than moving both likelihoods together.
  base = sigma if jnp.ndim(sigma) == 0 else SIGMA
  win = (fg > outlier_log_likelihood(base, outlier_sigmas)).astype(jnp.float32)
  return jax.lax.stop_gradient(face_mask * win)


def robust_photometric(image, target, face_mask, sigma=SIGMA,
                       outlier_sigmas: float = OUTLIER_SIGMAS):
  """The reference's occlusion-robust photometric loss (negative log-likelihood).

  ``-mean_{b,h,w}( w · log N(I − R; 0, σ²) )`` with ``w = F · [log N > log U]``;
  the mean runs over *all* B·H·W pixels, as the reference.

  Args:
    image: [B, H, W, 3] render R. target: [B, H, W, 3] target I.
    face_mask: [B, H, W] render coverage F.

  Returns:
    (scalar loss, [B, H, W] inlier mask w).
  """
  w = robust_inliers(image, target, face_mask, sigma, outlier_sigmas)
  sq = jnp.sum(jnp.square(target - image), axis=-1)
  return -jnp.mean(w * gaussian_log_likelihood(sq, sigma)), w


def l2_photometric(image, target, face_mask, sigma=SIGMA):
  """Plain (MoFA-style) photometric loss: mean squared RGB error over the face pixels.

  ``Σ_{b,p} F·‖I − R‖² / (2σ² · max(Σ_{b,p} F, 1))``: the quadratic part of the
  Gaussian negative log-likelihood of :func:`robust_photometric` for *every* face
  pixel (no outlier model, no normalising constant), averaged over the face pixels.
  Dividing by 2σ² keeps the stage-1 weight ``w_photo`` on the robust loss's scale: per
  face pixel, the gradient is the robust loss's on an inlier divided by the face's share
  of the image. Not in the FOCUS reference (docs/FIDELITY.md): the anchor a robust
  loss must beat.

  Args:
    image: [B, H, W, 3] render R. target: [B, H, W, 3] target I.
    face_mask: [B, H, W] render coverage F. sigma: scalar σ (RGB units in [0, 1]).

  Returns:
    scalar loss (units of 2σ²).
  """
  sq = jnp.sum(jnp.square(target - image), axis=-1)
  return (jnp.sum(face_mask * sq) / (2.0 * jnp.square(sigma))
          / jnp.maximum(jnp.sum(face_mask), 1.0))


def _pixel_norm(x, eps: float = 1e-12):
  # Euclidean norm over channels with a finite gradient at 0.
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1) + eps) - math.sqrt(eps)


def masked_reconstruction(image, target, face_mask, inlier_mask):
  """``Σ_{b,p} ‖M·F·(I − R)‖₂ / max(Σ M·F, 1)`` (per-pixel L2 norm, not squared).

  image, target: [B, H, W, 3]; face_mask, inlier_mask: [B, H, W]. Scalar.
  """
  w = face_mask * inlier_mask
  return jnp.sum(_pixel_norm(w[..., None] * (target - image))) / jnp.maximum(jnp.sum(w), 1.0)


def landmark_loss(predicted, target, weights: Optional[jnp.ndarray] = None,
                  valid: Optional[jnp.ndarray] = None):
  """Weighted landmark loss ``mean((w · (l_gt − l))²)`` over valid coordinates.

  Args:
    predicted, target: [B, 68, 2] pixels.
    weights: [68] (default :func:`landmark_weights`); applied before squaring.
    valid: [68] or [B, 68] bool/float, landmarks that count (e.g. the model's
      :func:`~focus_jax.morphable.landmark_mask`); default all. The mean divides
      by the number of valid coordinates, so with all valid it is the reference's
      mean over B·68·2.

  Raises:
    ValueError: the landmark arrays are not [..., 68, 2].
  """
  for name, a in (("predicted", predicted), ("target", target)):
    if a.shape[-2:] != (NUM_LANDMARKS, 2):
      raise ValueError(f"landmark_loss: {name} landmarks must be [..., 68, 2], got "
                       f"{tuple(a.shape)}")
  w = jnp.asarray(landmark_weights() if weights is None else weights, jnp.float32)
  v = (jnp.ones((NUM_LANDMARKS,), jnp.float32) if valid is None
       else jnp.asarray(valid, jnp.float32))
  v = jnp.broadcast_to(v, predicted.shape[:-1])
  # where() keeps NaN targets of undefined landmarks out of the value and gradient.
  diff = jnp.where(v[..., None] > 0, target - predicted, 0.0)
  sq = jnp.square(w[:, None] * diff) * v[..., None]
  return jnp.sum(sq) / jnp.maximum(2.0 * jnp.sum(v), 1.0)


def cosine_distance(a, b, eps: float = 1e-6):
  """``mean(1 − cos(a, b))`` along the last axis, mean over all other axes.

  For embeddings [B, D] this is the perceptual loss; for shallow feature maps
  [B, h, w, C] (NHWC) the cosine is per position over channels, as the reference
  (``CosineSimilarity(dim=1)`` on NCHW).
  """
  dot = jnp.sum(a * b, axis=-1)
  na = jnp.sqrt(jnp.sum(a * a, axis=-1))
  nb = jnp.sqrt(jnp.sum(b * b, axis=-1))
  return jnp.mean(1.0 - dot / jnp.maximum(na * nb, eps))


def perceptual_loss(features_render, features_target):
  """Identity loss ``1 − cos(φ(R), φ(I))`` on [B, D] embeddings (see
  :func:`focus_jax.nets.identity.IdentityNet`)."""
  return cosine_distance(features_render, features_target)


def coefficient_regularization(shape, expression, albedo, divisor: float = REG_DIVISOR):
  """``(Σ shape² + Σ expression² + Σ albedo²) / B / 224`` on [B, K] coefficients."""
  batch = shape.shape[0] if shape.ndim > 1 else 1
  total = jnp.sum(jnp.square(shape)) + jnp.sum(jnp.square(albedo))
  if expression is not None:
    total = total + jnp.sum(jnp.square(expression))
  return total / batch / divisor


def area_loss(face_mask, inlier_mask):
  """``mean_b( Σ F·(1 − M) / max(Σ F, 1) )``: fraction of face labelled outlier."""
  axes = tuple(range(face_mask.ndim - 2, face_mask.ndim))
  out = jnp.sum(face_mask * (1.0 - inlier_mask), axis=axes)
  return jnp.mean(out / jnp.maximum(jnp.sum(face_mask, axis=axes), 1.0))


def binary_loss(face_mask, inlier_mask):
  """``0.5 − mean|M·F − 0.5|``: 0 for a binary mask, 0.5 for M·F = 0.5 everywhere."""
  return 0.5 - jnp.mean(jnp.abs(inlier_mask * face_mask - 0.5))


def preserve_loss(features_target, features_masked_target):
  """``1 − cos(φ(I), φ(I·M))`` on shallow features [B, h, w, C] (or embeddings)."""
  return cosine_distance(features_target, features_masked_target)


def dist_loss(features_masked_render, features_masked_target):
  """``1 − cos(φ(R·M), φ(I·M))`` on shallow features [B, h, w, C] (or embeddings)."""
  return cosine_distance(features_masked_render, features_masked_target)


def neighbour_min_distance(image, target, window: int = 5, *, border: str = "valid",
                           eps: float = 1e-12):
  """Per-pixel ``min_δ ‖R(p) − I(p + δ)‖₂`` over shifts δ in a window × window box.

  The one neighbour-tolerant residual of the project: the UNet's neighbour term
  (:func:`neighbour_loss`) and the fit's E-step
  (:mod:`focus_jax.fitting.estep`).

  Args:
    image: [..., H, W, 3] render R.
    target: [..., H, W, 3] target I.
    window: odd side of the shift box (1 = no shift).
    border: ``'valid'``: only pixels whose whole window lies inside the image, as
      the reference: [..., H − 2m, W − 2m] with m = window // 2. ``'edge'``:
      every pixel, the target edge-padded: [..., H, W].
    eps: the norm is ``sqrt(‖·‖² + eps) − sqrt(eps)`` (a finite gradient at 0;
      0 = the plain norm).

  Returns:
    [..., H', W'] distances (RGB units).

  Raises:
    ValueError: an even or non-positive window, or an unknown border.
  """
  if window < 1 or window % 2 == 0:
    raise ValueError(f"neighbour_min_distance: window must be odd and >= 1, got {window}")
  m = window // 2
  h, w = image.shape[-3], image.shape[-2]
  if border == "edge":
    pad = [(0, 0)] * (target.ndim - 3) + [(m, m), (m, m), (0, 0)]
    target = jnp.pad(target, pad, mode="edge")
    centre = image
  elif border == "valid":
    centre = image[..., m:h - m, m:w - m, :]
  else:
    raise ValueError(f"neighbour_min_distance: border must be 'valid' or 'edge', got "
                     f"{border!r}")
  hc, wc = centre.shape[-3], centre.shape[-2]
  best = None
  for dy in range(window):
    for dx in range(window):
      d = _pixel_norm(centre - target[..., dy:dy + hc, dx:dx + wc, :], eps)
      best = d if best is None else jnp.minimum(best, d)
  return best


def neighbour_loss(image, target, inlier_mask, window: int = 5, scale=None):
  """UNet neighbour term: ``mean_p min_δ ‖R·M(p) − I·M(p + δ)‖₂`` (interior pixels).

  image, target: [B, H, W, 3]; inlier_mask: [B, H, W] (the reference passes M·F).
  scale: optional [B, H, W] per-pixel divisor of the distance (≥ 1), e.g. the misfit
    prior's σ multiplier (:func:`focus_jax.prior.sigma_map`), so that systematically
    hard-to-fit skin costs less when it is kept as inlier.
  """
  m = inlier_mask[..., None]
  d = neighbour_min_distance(image * m, target * m, window)
  if scale is not None:
    k = window // 2
    h, w = scale.shape[-2], scale.shape[-1]
    d = d / scale[..., k:h - k, k:w - k]
  return jnp.mean(d)


def check_finite(losses: dict, where: str = "loss"):
  """Raises FloatingPointError naming the non-finite terms (host-side, concrete values)."""
  bad = [k for k, v in losses.items() if not np.all(np.isfinite(np.asarray(v)))]
  if bad:
    raise FloatingPointError(f"{where}: non-finite value in term(s) {', '.join(bad)}; "
                             "check the inputs (NaN landmarks, empty masks) and learning rates")
