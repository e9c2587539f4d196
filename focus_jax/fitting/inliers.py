"""The E-step's image-space algorithms, one image at a time: the inlier posterior
(robust likelihood, per-image colour model of the outliers, mean-field spatial
coherence with contrast-sensitive coupling) and the contour extension.

Shapes: [H, W] maps, [H, W, 3] images in [0, 1]; σ in [0, 1] RGB units.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from focus_jax import losses as losses_lib
from focus_jax.fitting import config as config_lib


def _box3(x):
  """3x3 box mean of [H, W] with zero padding."""
  p = jnp.pad(x, 1)
  h, w = x.shape
  return sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


_OFFSETS8 = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _shift(x, dy: int, dx: int):
  """``out[y, x] = x[y + dy, x + dx]`` with zero padding ([H, W, ...])."""
  h, w = x.shape[0], x.shape[1]
  pad = ((1, 1), (1, 1)) + ((0, 0),) * (x.ndim - 2)
  return jnp.pad(x, pad)[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def edge_weights(target, edge_sigma: float):
  """Contrast-sensitive coupling of each pixel to its 8 neighbours.

  ``exp(−‖I(p) − I(q)‖² / (2·s²))`` (GrabCut-style): neighbours across a colour
  edge (an occluder's outline, usually) are coupled weakly, neighbours of one
  colour strongly. [H, W, 3] -> [8, H, W] (order of ``_OFFSETS8``; 0 where the
  neighbour is outside the image).
  """
  out = []
  for dy, dx in _OFFSETS8:
    d2 = jnp.sum(jnp.square(_shift(target, dy, dx) - target), -1)
    valid = _shift(jnp.ones(target.shape[:2]), dy, dx)
    out.append(valid * jnp.exp(-0.5 * d2 / edge_sigma ** 2))
  return jnp.stack(out)


def colour_log_density(colours, weight, bins: int, prior_mass: float):
  """Log density (relative to the uniform density on the RGB cube) of a smoothed,
  weighted colour histogram, evaluated at every pixel.

  The histogram has ``bins``³ cells, one pass of a [1, 2, 1] blur per axis, and a
  uniform pseudo-count of ``prior_mass`` pixels, so that a class with little
  weight stays close to uniform (log density 0) instead of over-fitting a few
  pixels.

  Args:
    colours: [H, W, 3] in [0, 1].
    weight: [H, W] ≥ 0 class membership of every pixel (e.g. 1 − q).
    bins: cells per channel.
    prior_mass: pseudo-count (pixels) spread uniformly over the cube.

  Returns:
    [H, W] log p(colour | class) − log p_uniform (nats).
  """
  idx3 = jnp.clip(jnp.floor(colours * bins).astype(jnp.int32), 0, bins - 1)
  flat = (idx3[..., 0] * bins + idx3[..., 1]) * bins + idx3[..., 2]
  hist = jnp.zeros(bins ** 3, jnp.float32).at[flat.reshape(-1)].add(weight.reshape(-1))
  hist = hist.reshape(bins, bins, bins)
  for axis in range(3):
    p = jnp.pad(hist, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
    sl = lambda k: tuple(slice(k, k + bins) if a == axis else slice(None) for a in range(3))
    hist = 0.25 * p[sl(0)] + 0.5 * p[sl(1)] + 0.25 * p[sl(2)]
  total = jnp.sum(weight)
  density = (hist + prior_mass / bins ** 3) / (total + prior_mass) * bins ** 3
  return jnp.log(jnp.take(density.reshape(-1), flat))


def _mean_field(unary, facef, config: config_lib.EStep, edges):
  """Mean-field inference of a Potts-like pairwise term ([H, W] log-odds ->
  posterior): neighbours that are (probably) inliers raise the log-odds,
  outliers lower it; background neighbours are neutral. ``edges`` [8, H, W]
  (or None: uniform coupling) weights the 8 neighbours."""
  q = jax.nn.sigmoid(unary)
  for _ in range(config.smoothing_iterations):
    s = (2.0 * q - 1.0) * facef
    if edges is None:
      agree = _box3(s)
    else:
      agree = (s + sum(edges[k] * _shift(s, dy, dx)
                       for k, (dy, dx) in enumerate(_OFFSETS8))) / 9.0
    q = jax.nn.sigmoid(unary + config.smoothing_strength * agree)
  return q


def inlier_posterior(residual, face, sigma_map, config, sigma_scale=1.0, target=None,
                     prior_logit=None):
  """Robust-likelihood inlier probability with spatial coherence, one image.

  The pixel log-odds of "face" against "outlier" is the Gaussian foreground
  log-likelihood of the residual minus the outlier log-likelihood, plus the prior.
  With ``config.outlier_model == 'colour'`` (and ``target`` given), the outlier
  density is the uniform one times a colour density of the pixels currently
  labelled outlier (weighted by 1 − q, re-estimated ``colour_iterations`` times),
  optionally divided by the colour density of the inliers
  (``face_colour_weight``); see :class:`~focus_jax.fitting.config.EStep`.

  Args:
    residual: [H, W] RGB residual norm (after neighbour tolerance).
    face: [H, W] bool render coverage.
    sigma_map: [H, W] per-pixel σ multiplier (misfit prior; 1 = none).
    sigma_scale: scalar σ multiplier of this round (annealing).
    config: the :class:`~focus_jax.fitting.config.EStep` group (or a whole
      :class:`~focus_jax.fitting.config.FitConfig`).
    target: [H, W, 3] the image (colour model and edge-aware smoothing); None =
      uniform outlier density and uniform coupling.
    prior_logit: optional [H, W] per-pixel prior log-odds of "face" (e.g. a
      segmenter's, times ``config.inlier_prior_weight``), added to the constant prior.

  Returns:
    [H, W] posterior inlier probability (0 outside the face).

  Raises:
    ValueError: an unknown ``outlier_model``.
  """
  config = getattr(config, "estep", config)
  base = config.sigma * sigma_scale
  sig = base * sigma_map
  fg = losses_lib.gaussian_log_likelihood(jnp.square(residual), sig)
  bg = losses_lib.outlier_log_likelihood(base, config.outlier_sigmas)
  prior = math.log(config.prior_inlier / (1.0 - config.prior_inlier))
  if prior_logit is not None:
    prior = prior + prior_logit
  unary = jnp.clip(fg - bg + prior, -30.0, 30.0)
  facef = face.astype(jnp.float32)
  edges = None
  if target is not None and config.smoothing_edge_sigma > 0:
    edges = edge_weights(target, config.smoothing_edge_sigma)
  if config.outlier_model not in ("uniform", "colour"):
    raise ValueError(f"FitConfig.outlier_model must be 'uniform' or 'colour', got "
                     f"{config.outlier_model!r}")
  q = _mean_field(unary, facef, config, edges)
  if target is not None and config.outlier_model == "colour":
    mass = config.colour_prior_mass * jnp.sum(facef)
    for _ in range(config.colour_iterations):
      colour = -config.colour_weight * colour_log_density(
          target, (1.0 - q) * facef, config.colour_bins, mass)
      if config.face_colour_weight:
        colour = colour + config.face_colour_weight * colour_log_density(
            target, q * facef, config.colour_bins, mass)
      if config.colour_prior_power:
        colour = colour / sigma_map ** config.colour_prior_power
      q = _mean_field(jnp.clip(unary + colour, -30.0, 30.0), facef, config, edges)
  return q * facef


def extend_inliers(render, face, inlier, target, sigma, margin: int, outlier_sigmas: float):
  """Inlier pixels just outside the rendered silhouette ([H, W] bool).

  At the face contour the render can miss a pixel or two of skin (the fitted
  outline is off by about a pixel). Each pixel within ``margin`` pixels outside
  ``face`` takes the mean render colour of the nearest ring of inlier pixels
  (grown one 3x3 step at a time) and is an inlier where the image matches that
  colour within ``outlier_sigmas`` σ — the E-step's decision rule with a 0.5
  prior.

  Args:
    render: [H, W, 3]; face, inlier: [H, W] bool; target: [H, W, 3];
    sigma: scalar σ of the final E-step; margin: pixels (0 = none).

  Returns:
    [H, W] bool, outside ``face`` only.
  """
  if margin <= 0:
    return jnp.zeros(face.shape, bool)
  w = inlier.astype(jnp.float32)
  col = render * w[..., None]
  for _ in range(margin):
    wsum = _box3(w)
    csum = jnp.stack([_box3(col[..., c]) for c in range(3)], -1)
    grow = (w == 0) & (wsum > 0) & ~face
    col = jnp.where(grow[..., None], csum / jnp.maximum(wsum, 1e-6)[..., None], col)
    w = jnp.where(grow, 1.0, w)
  res2 = jnp.sum(jnp.square(col - target), -1)
  return (w > 0) & ~face & (res2 < jnp.square(outlier_sigmas * sigma))
