"""Per-image occlusion-robust analysis-by-synthesis fitting, with no trained network.

``fit(model, image, landmarks)`` recovers 3DMM coefficients, pose and SH light of a
face image and an inlier mask (1 = visible face skin the model explains):

1. **Pose initialisation** in closed form: a weak-perspective (scaled
   orthographic) camera fitted to the 2D landmarks by least squares from the mean
   face's 3D landmarks, converted to the reference pose (Euler angles, translation;
   depth from the scale through the focal length). The light is then solved in
   closed form (weighted linear least squares on the visible vertices, its tint
   pulled towards the model's skin colour: ``FitConfig.initial_tint_ridge``).
2. **EM** for ``config.rounds`` rounds:

   * **E-step** (image space): render the face (hard rasterization), take each
     pixel's residual with *neighbour tolerance* (the smallest ``‖R(p) − I(p+δ)‖``
     over a small window of shifts δ), compare the Gaussian foreground likelihood
     (σ, adjusted per pixel by the *misfit prior*) against the outlier
     likelihood (uniform, times a per-image colour model of the current outliers
     by default), and enforce *spatial coherence* with a few mean-field iterations
     of a contrast-sensitive Potts-like smoothness term. The result is the inlier
     mask; it is sampled at the projected vertices (times their visibility) to
     give per-vertex weights.
     The light is re-solved in closed form on those inliers.
   * **M-step** (vertex space, MoFA's "sample" mode): ``config.steps`` Adam steps
     (optax, one learning rate per parameter group) on shape, expression, albedo,
     pose and light, comparing shaded vertex colours with the target sampled at
     the projected vertices — no rasterization in the inner loop — plus the
     weighted 68-landmark loss and coefficient regularisation.

3. A final full-resolution E-step gives the returned render and inlier mask (which
   may extend a pixel or two beyond the rendered outline where the image matches
   the adjacent skin).

A fit may start from given coefficients and pose (``init``, e.g. a trained
encoder's prediction) and take a given inlier segmentation (``inlier_mask``, e.g. a
FOCUS UNet's output) in place of its E-step estimate.

The whole fit is one jitted pure function (``lax.scan`` over rounds and steps);
images are natively batched (every image is fitted independently: the loss is a
sum over images and Adam is elementwise) and the single-image function is
vmappable. Non-robust fitting (``FitConfig(robust=False)``) keeps every visible
vertex as an inlier.

``fit_landmarks(model, landmarks, intrinsics=...)`` is the landmark-only fit (no
image): the MAP shape, expression and perspective pose under Gaussian landmark
noise, by Levenberg–Marquardt from the same closed-form pose (the peer of eos's
``fit_shape_and_pose``; ``benchmarks/eos_peer.py``).

Units: images [B, H, W, 3] in [0, 1]; landmarks [B, 68, 2] pixels (x right, y
down, pixel centres at +0.5; NaN for points to ignore); vertices mm; angles rad.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from focus_jax import losses as losses_lib
from focus_jax.morphable import model as model_lib
from focus_jax.render import camera as camera_lib
from focus_jax.render import rasterize as raster_lib
from focus_jax.render import shading as shading_lib

LOSS_NAMES = ("total", "photometric", "landmark", "regularization")


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Static fitting configuration (hashable: it is a jit static argument).

  Attributes:
    rounds: EM rounds; each is one E-step followed by ``steps`` M-step iterations,
      so the fit runs ``rounds * steps`` optimiser iterations.
    steps: M-step (Adam) iterations per round.
    robust: estimate the inlier mask (EM). False: every visible vertex is an inlier
      (the non-robust baseline); the returned inlier mask is then the face mask.
    use_prior: apply the misfit prior when one is passed to :func:`fit`.
    lr_*: Adam learning rates per parameter group (units: coefficient std, rad, mm,
      SH coefficient).
    photometric_weight: weight of the mean per-vertex Gaussian NLL
      ``‖c − I(u)‖² / (2σ_v²)`` over inlier vertices.
    landmark_weight: weight of :func:`~focus_jax.losses.landmark_loss` (pixels,
      rescaled to a 224-pixel image).
    landmark_heavy: the reference's weight on nose ridge and inner-mouth points.
    shape_reg, expression_reg, albedo_reg: weights of ``½ Σ c²`` per group.
    sigma: foreground σ on [0, 1] RGB (reference 0.043).
    outlier_sigmas: the uniform outlier likelihood equals the Gaussian at this many σ.
    sigma_schedule: σ multipliers of the E-steps, per round (the last value
      repeats): tolerant first, while the fit is still poor.
    prior_inlier: prior probability that a face pixel is an inlier.
    neighbour_window: side of the shift window of the neighbour tolerance (odd,
      1 = none; the reference's UNet loss uses 5).
    smoothing_iterations, smoothing_strength: mean-field iterations and the
      coupling (log-odds per agreeing 3x3 neighbour average) of spatial coherence.
    estep_downsample: intermediate E-steps run at 1/k resolution (the last one at
      full resolution).
    visibility_tolerance: a vertex is visible when it lies at most this far
      (mm) behind the rendered depth at its pixel.
    light_ridge: ridge (towards the ambient default) of the closed-form light.
    albedo_start_round: the albedo is optimised from this round on (before, it
      stays at the mean so that it cannot absorb occluders).
    light_iterations: IRLS iterations (Cauchy weights) of the robust closed-form
      light; non-robust fits use plain least squares.
    dynamic_gate: robust M-steps also drop vertices whose current residual
      exceeds the outlier threshold (the reference's robust loss).
    light_warm_start: robust light solves start their IRLS from the current
      light (the ambient default before the first round) instead of an
      unweighted least-squares solve (see :func:`solve_light`).
    max_vertices: the M-step compares colours at about this many vertices (every
      k-th vertex plus the landmark vertices); 0 = all.
    outlier_model: the E-step's outlier density. ``'colour'`` (default): the
      uniform density times a per-image colour density of the pixels currently
      labelled outlier (a smoothed RGB histogram weighted by 1 − q, re-estimated
      ``colour_iterations`` times in every E-step; Egger et al. 2018,
      "Occlusion-aware 3D morphable models", model the non-face class by image
      colour histograms). An occluder is usually one or a few colours: pixels of
      those colours then need a smaller residual to count as outliers (e.g. the
      part of a hand the albedo has half absorbed), skin of other colours a
      larger one. ``'uniform'``: the FOCUS reference's constant outlier
      likelihood. The default is ``'colour'`` because on the synthetic occlusion
      benchmark (benchmarks/results/fit.md) it raises the inlier-mask F1 and the
      occluder IoU well beyond the uniform density's, at about the same speed.
    colour_bins: histogram cells per RGB channel.
    colour_prior_mass: uniform pseudo-count of the histogram, as a fraction of the
      face pixels: with few outliers (an unoccluded face) the density stays near
      uniform instead of fitting a few hard-to-fit pixels.
    colour_iterations: histogram re-estimations per E-step.
    colour_weight: multiplier of the log colour density.
    face_colour_weight: weight of the inliers' own colour density in the log-odds
      (0 = off; measured worse: skin-toned occluders then look like face).
    colour_prior_power: the colour term is divided by the misfit prior's σ
      multiplier to this power, so that regions of unmodelled appearance (brows,
      lips), whose dark colours occluders often share, are not called outliers
      by colour alone (without it, false outliers on brows and lips tripled).
    smoothing_edge_sigma: contrast-sensitive spatial coherence: each neighbour's
      coupling is ``exp(−‖ΔI‖² / (2s²))`` of the image colour difference
      (:func:`edge_weights`); 0 = uniform 3x3 coupling.
    contour_margin: the returned inlier mask extends up to this many pixels
      outside the rendered silhouette where the image matches the adjacent render
      (:func:`extend_inliers`; the fitted outline is often a pixel off); 0 = only
      inside the render.
    initial_tint_ridge: guard against the *label swap*. The first closed-form
      light (before the first E-step: all visible vertices count, nothing is
      known about occluders yet) shrinks its RGB tint towards white, i.e. the
      face colour towards the model's mean skin colour, by
      ``t ← (t + λ) / (1 + λ)`` (:func:`solve_light`). Without it a large
      bright occluder (a white mask over the lower half of the face) drags that
      first light to a grey-white tint; the first E-step then takes the mask for
      the face and the skin for the outlier, and EM never leaves that state
      (inlier F1 ≈ 0.03 on 3 of the 100 benchmark faces). Later light solves
      are free, so a real colour cast is recovered from round 0's inliers (a
      tint ridge on every solve measured no better). 1 = halfway; 0 = off.
  """
  rounds: int = 5
  steps: int = 40
  robust: bool = True
  use_prior: bool = True
  lr_shape: float = 0.05
  lr_expression: float = 0.05
  lr_albedo: float = 0.05
  lr_angles: float = 0.004
  lr_translation: float = 1.0
  lr_light: float = 0.02
  photometric_weight: float = 1.0
  landmark_weight: float = 0.02
  landmark_heavy: float = 20.0
  shape_reg: float = 2e-3
  expression_reg: float = 2e-3
  albedo_reg: float = 2e-3
  sigma: float = losses_lib.SIGMA
  outlier_sigmas: float = losses_lib.OUTLIER_SIGMAS
  sigma_schedule: tuple = (2.0, 1.5, 1.0)
  prior_inlier: float = 0.5
  neighbour_window: int = 3
  smoothing_iterations: int = 4
  smoothing_strength: float = 4.0
  estep_downsample: int = 1
  visibility_tolerance: float = 4.0
  light_ridge: float = 1e-3
  max_vertices: int = 2000
  albedo_start_round: int = 1
  light_iterations: int = 6
  dynamic_gate: bool = True
  light_warm_start: bool = True
  outlier_model: str = "colour"
  colour_bins: int = 8
  colour_prior_mass: float = 0.05
  colour_iterations: int = 2
  colour_weight: float = 1.0
  face_colour_weight: float = 0.0
  colour_prior_power: float = 2.0
  smoothing_edge_sigma: float = 0.1
  contour_margin: int = 2
  initial_tint_ridge: float = 1.0

  @property
  def iterations(self) -> int:
    return self.rounds * self.steps

  def reference_e_step(self) -> "FitConfig":
    """This config with the FOCUS reference's E-step: uniform outlier density,
    uniform spatial coupling, inlier mask inside the render only."""
    return dataclasses.replace(self, outlier_model="uniform", smoothing_edge_sigma=0.0,
                               contour_margin=0)


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
      ``config.contour_margin`` pixels beyond its outline, see :func:`extend_inliers`).
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


# ----------------------------------------------------------------------------- geometry


def angles_from_rotation(rotation) -> jnp.ndarray:
  """Inverse of :func:`camera.euler_rotation`: [..., 3, 3] ``Rx(a)Ry(b)Rz(c)`` -> [..., 3]."""
  r = rotation
  b = jnp.arcsin(jnp.clip(r[..., 0, 2], -1.0, 1.0))
  a = jnp.arctan2(-r[..., 1, 2], r[..., 2, 2])
  c = jnp.arctan2(-r[..., 0, 1], r[..., 0, 0])
  return jnp.stack([a, b, c], axis=-1)


def init_pose(points3d, landmarks, valid, intrinsics: camera_lib.Intrinsics):
  """Closed-form pose from 2D landmarks (weak perspective), one face.

  Fits ``x ≈ s·P·Rc·X + o`` (P drops z) by linear least squares for the 2x4
  affine camera, projects its 2x3 part to the nearest scaled orthonormal rows
  (SVD), completes the rotation with their cross product and converts to the
  reference pose: ``Rc = F·R(angles)``, depth ``f / s``.

  Args:
    points3d: [68, 3] model-space landmark positions (mm).
    landmarks: [68, 2] image landmarks (px); invalid entries may be NaN.
    valid: [68] bool.
    intrinsics: the camera.

  Returns:
    (angles [3] rad, translation [3] mm).
  """
  w = valid.astype(jnp.float32)
  x = jnp.where(valid[:, None], landmarks, 0.0)
  design = jnp.concatenate([points3d, jnp.ones((points3d.shape[0], 1))], axis=1)   # [68, 4]
  dtw = design.T * w[None, :]
  affine = jnp.linalg.solve(dtw @ design + 1e-6 * jnp.eye(4), dtw @ x).T          # [2, 4]
  u, s, vt = jnp.linalg.svd(affine[:, :3], full_matrices=False)
  rows = u @ vt                                                                     # [2, 3]
  scale = jnp.mean(s)
  rc = jnp.concatenate([rows, jnp.cross(rows[0], rows[1])[None]], axis=0)
  rot = jnp.array([1.0, -1.0, -1.0])[:, None] * rc                                 # F·Rc
  # The scale is f / depth of the landmarks' centroid, not of the model origin.
  centroid = jnp.sum(points3d * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1.0)
  depth = intrinsics.focal / scale - rc[2] @ centroid
  tx = (affine[0, 3] - intrinsics.cx) / scale
  ty = (affine[1, 3] - intrinsics.cy) / scale
  return angles_from_rotation(rot), jnp.stack([tx, ty, depth - camera_lib.CAMERA_DISTANCE])


def bilinear_sample(image, points):
  """Samples [H, W, C] at [N, 2] pixel positions (centres at +0.5), edge-clamped."""
  h, w = image.shape[0], image.shape[1]
  x = jnp.clip(points[:, 0] - 0.5, 0.0, w - 1.0)
  y = jnp.clip(points[:, 1] - 0.5, 0.0, h - 1.0)
  x0 = jnp.clip(jnp.floor(x), 0, w - 2)
  y0 = jnp.clip(jnp.floor(y), 0, h - 2)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  flat = image.reshape(h * w, -1)
  g = lambda yy, xx: jnp.take(flat, yy * w + xx, axis=0)
  return ((1 - fy) * ((1 - fx) * g(y0, x0) + fx * g(y0, x0 + 1))
          + fy * ((1 - fx) * g(y0 + 1, x0) + fx * g(y0 + 1, x0 + 1)))


def _nearest_pixel(image, points):
  h, w = image.shape[0], image.shape[1]
  col = jnp.clip(jnp.floor(points[:, 0]).astype(jnp.int32), 0, w - 1)
  row = jnp.clip(jnp.floor(points[:, 1]).astype(jnp.int32), 0, h - 1)
  return image[row, col]


def _scaled_intrinsics(intr: camera_lib.Intrinsics, k: int) -> camera_lib.Intrinsics:
  if k == 1:
    return intr
  return camera_lib.Intrinsics(focal=intr.focal / k, cx=intr.cx / k, cy=intr.cy / k,
                               width=intr.width // k, height=intr.height // k)


def _downsample(image, k: int):
  if k == 1:
    return image
  h, w = image.shape[0] // k * k, image.shape[1] // k * k
  x = image[:h, :w].reshape(h // k, k, w // k, k, -1)
  return x.mean(axis=(1, 3))


# ----------------------------------------------------------------------------- E-step


def neighbour_residual(render, target, window: int):
  """Per-pixel ``min_δ ‖R(p) − I(p+δ)‖₂`` over a window × window box, same size
  as the input ([H, W, 3] -> [H, W]; the target is edge-padded)."""
  if window <= 1:
    return jnp.sqrt(jnp.sum(jnp.square(render - target), -1))
  m = window // 2
  h, w = render.shape[0], render.shape[1]
  padded = jnp.pad(target, ((m, m), (m, m), (0, 0)), mode="edge")
  best = None
  for dy in range(window):
    for dx in range(window):
      d = jnp.sum(jnp.square(render - padded[dy:dy + h, dx:dx + w]), -1)
      best = d if best is None else jnp.minimum(best, d)
  return jnp.sqrt(best)


def _box3(x):
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


def _mean_field(unary, facef, config: FitConfig, edges):
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


def inlier_posterior(residual, face, sigma_map, config: FitConfig, sigma_scale=1.0,
                     target=None):
  """Robust-likelihood inlier probability with spatial coherence, one image.

  The pixel log-odds of "face" against "outlier" is the Gaussian foreground
  log-likelihood of the residual minus the outlier log-likelihood, plus the prior.
  With ``config.outlier_model == 'colour'`` (and ``target`` given), the outlier
  density is the uniform one times a colour density of the pixels currently
  labelled outlier (weighted by 1 − q, re-estimated ``colour_iterations`` times),
  optionally divided by the colour density of the inliers
  (``face_colour_weight``); see :class:`FitConfig`.

  Args:
    residual: [H, W] RGB residual norm (after neighbour tolerance).
    face: [H, W] bool render coverage.
    sigma_map: [H, W] per-pixel σ multiplier (misfit prior; 1 = none).
    sigma_scale: scalar σ multiplier of this round (annealing).
    target: [H, W, 3] the image (colour model and edge-aware smoothing); None =
      uniform outlier density and uniform coupling.

  Returns:
    [H, W] posterior inlier probability (0 outside the face).
  """
  base = config.sigma * sigma_scale
  sig = base * sigma_map
  fg = losses_lib.gaussian_log_likelihood(jnp.square(residual), sig)
  bg = losses_lib.outlier_log_likelihood(base, config.outlier_sigmas)
  prior = math.log(config.prior_inlier / (1.0 - config.prior_inlier))
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


def _estep_one(verts_cam, colors, target, sigma_vertex, intr, config: FitConfig,
               triangles, sigma_scale, robust: bool, fixed_mask=None):
  """Rasterizes one face and returns (render, face, posterior, vertex_weight).

  ``fixed_mask`` ([H, W] in [0, 1], or None): a given inlier segmentation that
  replaces the robust posterior (robust fits only)."""
  frags = raster_lib.rasterize(verts_cam, triangles, intr, cull_backfaces=True)
  face = frags.mask
  render = raster_lib.interpolate(colors, verts_cam, triangles, frags, intr)
  if robust and fixed_mask is not None:
    post = fixed_mask * face
  elif robust:
    sigma_map = raster_lib.interpolate(sigma_vertex[:, None], verts_cam, triangles, frags,
                                       intr)[..., 0]
    sigma_map = jnp.where(face, jnp.maximum(sigma_map, 1e-3), 1.0)
    res = neighbour_residual(render, target, config.neighbour_window)
    post = inlier_posterior(res, face, sigma_map, config, sigma_scale, target)
  else:
    post = face.astype(jnp.float32)
  # Vertex visibility: in the image, in front of (or on) the visible surface.
  vimg = camera_lib.project(verts_cam, intr)
  depth_at = _nearest_pixel(frags.depth[..., None], vimg)[:, 0]
  face_at = _nearest_pixel(face[..., None].astype(jnp.float32), vimg)[:, 0]
  inside = ((vimg[:, 0] >= 0) & (vimg[:, 0] < intr.width) & (vimg[:, 1] >= 0)
            & (vimg[:, 1] < intr.height))
  visible = inside & (face_at > 0) & (verts_cam[:, 2] <= depth_at + config.visibility_tolerance)
  inlier_at = bilinear_sample(post[..., None], vimg)[:, 0]
  weight = visible.astype(jnp.float32) * (inlier_at > 0.5 if robust else 1.0)
  return render, face, post, weight


# ----------------------------------------------------------------------------- model terms


def _geometry(model, params):
  """Per-image model evaluation (no batch axis): returns (verts, cam, normals_cam, albedo)."""
  verts = model_lib.vertices(model, params["shape"], params["expression"])
  cam = camera_lib.to_camera(verts, params["angles"], params["translation"])
  normals = camera_lib.rotate_to_camera(
      shading_lib.vertex_normals(verts, model.triangles), params["angles"])
  alb = model_lib.albedo(model, params["albedo"])
  return verts, cam, normals, alb


def light_from_factors(sh, tint):
  """Rank-1 SH light ``sh ⊗ tint``: [..., 9], [..., 3] -> [..., 9, 3]."""
  return sh[..., :, None] * tint[..., None, :]


def solve_light(albedo, normals, target_colors, weight, ridge: float,
                robust_scale: float = 0.0, iterations: int = 0, init=None,
                tint_ridge: float = 0.0):
  """Weighted least-squares rank-1 SH light ``γ[k, c] = g[k]·t[c]``.

  One spatial SH distribution ``g`` [9] shared by the colour channels, times an
  RGB tint ``t`` [3] (normalised to mean 1) — a white-ish light of one colour.
  A full per-channel light can tint parts of the face (9 functions per channel),
  which lets it absorb coloured occluders; the rank-1 light cannot. Solved by
  alternating least squares (ridge towards the ambient default). With
  ``iterations > 0``, each round reweights with Cauchy weights
  ``1 / (1 + ‖r‖² / robust_scale²)`` of the RGB residuals (IRLS), so that an
  occluder does not bias it.

  albedo, normals, target_colors: [V, 3]; weight: [V].
  init: optional (g [9], t [3]) current light estimate. With ``iterations > 0``
    the first solve is then already weighted by its Cauchy weights (IRLS warm
    start), so that a large occluder cannot drag the unweighted first solve — and
    with it the whole IRLS — into the occluder's colour.
  tint_ridge: λ ≥ 0; every tint update is shrunk towards white,
    ``t ← (t + λ) / (1 + λ)`` (mean-1 tints), keeping the light's intensity
    (see ``FitConfig.initial_tint_ridge``). 0 = a free tint.
  Returns (g [9], t [3]); the light is :func:`light_from_factors` (g, t).
  """
  basis = shading_lib.sh_basis(normals)                          # [V, 9]
  g_default = shading_lib.default_light()[:, 0]

  def solve(w, tint):
    n = jnp.maximum(jnp.sum(w), 1.0)
    a = basis[:, None, :] * (albedo * tint)[:, :, None]          # [V, 3, 9]
    aw = a * w[:, None, None]
    lhs = jnp.einsum("vck,vcl->kl", aw, a) / n + ridge * jnp.eye(9)
    rhs = jnp.einsum("vck,vc->k", aw, target_colors) / n + ridge * g_default
    g = jnp.linalg.solve(lhs, rhs)
    shade = (basis @ g)[:, None] * albedo                        # [V, 3]
    tint = (jnp.sum(w[:, None] * shade * target_colors, 0)
            / jnp.maximum(jnp.sum(w[:, None] * shade * shade, 0), 1e-6))
    scale = jnp.mean(tint)
    # A black target or all-zero weights leave the tint at 0 (0/0 below): keep it white.
    known = jnp.abs(scale) > 1e-12
    scale = jnp.where(known, scale, 1.0)
    tint = jnp.where(known, tint / scale, 1.0)
    if tint_ridge:
      tint = (tint + tint_ridge) / (1.0 + tint_ridge)
    return g * scale, tint

  cauchy = lambda g, tint: weight / (1.0 + jnp.sum(jnp.square(
      shading_lib.shade(albedo, normals, light_from_factors(g, tint)) - target_colors), -1)
                                     / robust_scale ** 2)
  w0 = weight if init is None or iterations == 0 else cauchy(*init)
  t0 = jnp.ones(3) if init is None or iterations == 0 else init[1]
  g, tint = solve(w0, t0)
  g, tint = solve(w0, tint)
  for _ in range(iterations):
    r2 = jnp.sum(jnp.square(shading_lib.shade(albedo, normals, light_from_factors(g, tint))
                            - target_colors), -1)
    g, tint = solve(weight / (1.0 + r2 / robust_scale ** 2), tint)
  return g, tint


def sample_vertices(model, max_vertices: int) -> tuple:
  """Host-side vertex subset of the M-step: every k-th vertex plus the landmark
  vertices. Returns (indices [Vs] int32, landmark positions in the subset [68])."""
  num_v = model.num_vertices
  stride = max(1, -(-num_v // max_vertices)) if max_vertices else 1
  lm = np.asarray(model.landmarks)
  idx = np.union1d(np.arange(0, num_v, stride), lm[lm >= 0]).astype(np.int32)
  lm_sub = np.searchsorted(idx, np.maximum(lm, 0)).astype(np.int32)
  return idx, lm_sub


def _submodel(model, idx, lm_sub) -> dict:
  """The model's arrays restricted to the M-step vertices (traced, gathered once)."""
  take = lambda a: jnp.take(a, idx, axis=-2)
  return dict(mean=take(model.mean), shape_basis=take(model.shape_basis),
              expression_basis=take(model.expression_basis),
              albedo_mean=take(model.albedo_mean), albedo_basis=take(model.albedo_basis),
              landmarks=lm_sub)


def _loss_one(params, sub, normals_model, target, landmarks, lm_valid, weight, sigma_vertex,
              sigma_scale, lm_weights, intr, config: FitConfig):
  """M-step objective for one image on the vertex subset: (total, [4] terms).

  ``normals_model`` [Vs, 3] are the model-space normals of the last E-step: held
  fixed within a round (their change with shape is second order for the
  photometric term), rotated with the current pose.
  """
  hi = "highest"
  verts = (sub["mean"] + jnp.einsum("k,kvc->vc", params["shape"], sub["shape_basis"],
                                    precision=hi)
           + jnp.einsum("k,kvc->vc", params["expression"], sub["expression_basis"],
                        precision=hi))
  alb = sub["albedo_mean"] + jnp.einsum("k,kvc->vc", params["albedo"], sub["albedo_basis"],
                                        precision=hi)
  cam = camera_lib.to_camera(verts, params["angles"], params["translation"])
  normals = camera_lib.rotate_to_camera(normals_model, params["angles"])
  colors = shading_lib.shade(alb, normals,
                             light_from_factors(params["light_sh"], params["light_tint"]))
  vimg = camera_lib.project(cam, intr)
  sampled = bilinear_sample(target, vimg)
  sq = jnp.sum(jnp.square(colors - sampled), -1) / jnp.square(config.sigma * sigma_vertex)
  if config.robust and config.dynamic_gate:
    # The reference's robust loss: only vertices whose Gaussian likelihood beats
    # the uniform outlier at the current residual count (σ of this round).
    gate = sq < jnp.square(config.outlier_sigmas * sigma_scale)
    weight = weight * jax.lax.stop_gradient(gate.astype(jnp.float32))
  photo = 0.5 * jnp.sum(weight * sq) / jnp.maximum(jnp.sum(weight), 1.0)
  lm = jnp.take(vimg, sub["landmarks"], axis=0)
  px = 224.0 / intr.width  # landmark errors measured on a 224-pixel image
  lm_term = losses_lib.landmark_loss(lm[None] * px, landmarks[None] * px, lm_weights,
                                     lm_valid[None])
  reg = 0.5 * (config.shape_reg * jnp.sum(jnp.square(params["shape"]))
               + config.expression_reg * jnp.sum(jnp.square(params["expression"]))
               + config.albedo_reg * jnp.sum(jnp.square(params["albedo"])))
  total = config.photometric_weight * photo + config.landmark_weight * lm_term + reg
  return total, jnp.stack([total, photo, lm_term, reg])


# ----------------------------------------------------------------------------- the fit


def _learning_rates(config: FitConfig):
  return dict(shape=config.lr_shape, expression=config.lr_expression,
              albedo=config.lr_albedo, angles=config.lr_angles,
              translation=config.lr_translation, light_sh=config.lr_light,
              light_tint=config.lr_light)


@functools.partial(jax.jit, static_argnames=("config", "intrinsics"))
def _fit_batch(model, images, landmarks, sigma_vertex, sub_idx, lm_sub, config: FitConfig,
               intrinsics: camera_lib.Intrinsics, init: dict, masks) -> FitResult:
  batch = images.shape[0]
  tri = model.triangles
  num_v = model.num_vertices
  lm_valid = model_lib.landmark_mask(model)[None] & jnp.all(jnp.isfinite(landmarks), -1)
  landmarks = jnp.where(lm_valid[..., None], landmarks, 0.0)
  lm_weights = jnp.asarray(losses_lib.landmark_weights(config.landmark_heavy))
  robust = config.robust
  k = max(1, config.estep_downsample)
  intr_low = _scaled_intrinsics(intrinsics, k)
  images_low = jax.vmap(lambda im: _downsample(im, k))(images)
  masks_low = None if masks is None else jax.vmap(
      lambda m: _downsample(m[..., None], k)[..., 0])(masks)

  # Closed-form pose from the mean face's landmarks.
  mean_lm = model_lib.landmark_positions(model, model.mean)
  angles, translation = jax.vmap(init_pose, in_axes=(None, 0, 0, None))(
      mean_lm, landmarks, lm_valid, intrinsics)
  zeros = lambda n: jnp.zeros((batch, n), jnp.float32)
  params = dict(shape=zeros(model.num_shape), expression=zeros(model.num_expression),
                albedo=zeros(model.num_albedo), angles=angles, translation=translation,
                light_sh=shading_lib.default_light((batch,))[..., 0],
                light_tint=jnp.ones((batch, 3), jnp.float32))
  params.update(init)

  lrs = _learning_rates(config)
  opt = optax.scale_by_adam()
  opt_state = opt.init(params)

  def estep(params, intr, imgs, sigma_scale, robust_now, fixed=None):
    def one(p, img, sv, fixed_one):
      _, cam, normals, alb = _geometry(model, p)
      # Light first (closed form on the vertices visible last time would need
      # state; a light solve on the current inliers follows below).
      colors = shading_lib.shade(alb, normals, light_from_factors(p["light_sh"], p["light_tint"]))
      return _estep_one(cam, colors, img, sv, intr, config, tri, sigma_scale, robust_now,
                        fixed_one)
    return jax.vmap(one)(params, imgs, sigma_vertex, fixed)

  def relight(params, weight, tint_ridge=0.0):
    def one(p, img, w):
      _, cam, normals, alb = _geometry(model, p)
      sampled = bilinear_sample(img, camera_lib.project(cam, intrinsics))
      init = (p["light_sh"], p["light_tint"]) if config.light_warm_start else None
      return solve_light(alb, normals, sampled, w, config.light_ridge,
                         config.sigma * config.outlier_sigmas,
                         config.light_iterations if robust else 0, init=init,
                         tint_ridge=tint_ridge)
    return jax.vmap(one)(params, images, weight)

  sub = _submodel(model, sub_idx, lm_sub)
  set_light = lambda p, gt: dict(p, light_sh=gt[0], light_tint=gt[1])
  loss_fn = jax.vmap(_loss_one, in_axes=(0, None, 0, 0, 0, 0, 0, 0, None, None, None, None))
  sigma_sub = jnp.take(sigma_vertex, sub_idx, axis=1)

  def model_normals(p):
    verts = jax.vmap(lambda q: model_lib.vertices(model, q["shape"], q["expression"]))(p)
    return jnp.take(shading_lib.vertex_normals(verts, tri), sub_idx, axis=1)

  def total_loss(p, weight, normals, sigma_scale):
    totals, terms = loss_fn(p, sub, normals, images, landmarks, lm_valid, weight, sigma_sub,
                            sigma_scale, lm_weights, intrinsics, config)
    return jnp.sum(totals), terms

  grad_fn = jax.value_and_grad(total_loss, has_aux=True)

  def mstep(carry, _):
    p, s, weight, normals, sigma_scale, albedo_on = carry
    (_, terms), g = grad_fn(p, weight, normals, sigma_scale)
    updates, s = opt.update(g, s, p)
    rate = dict(lrs, albedo=lrs["albedo"] * albedo_on)
    p = {key: p[key] - rate[key] * updates[key] for key in p}
    return (p, s, weight, normals, sigma_scale, albedo_on), terms

  schedule = config.sigma_schedule or (1.0,)

  def round_body(carry, r):
    p, s, weight = carry
    sigma_scale = jnp.asarray(schedule)[jnp.minimum(r, len(schedule) - 1)]
    if robust:
      # Inliers from the current estimate (or the given masks), then the light
      # re-solved on them.
      _, _, _, weight = estep(p, intr_low, images_low, sigma_scale, True, masks_low)
    else:
      _, _, _, weight = estep(p, intr_low, images_low, sigma_scale, False)
    p = set_light(p, relight(p, weight))
    # The albedo stays at the mean for the first rounds so that it cannot absorb
    # occluders before the E-step has had a chance to see them.
    albedo_on = (r >= config.albedo_start_round).astype(jnp.float32)
    carry = (p, s, jnp.take(weight, sub_idx, axis=1), model_normals(p), sigma_scale, albedo_on)
    (p, s, *_), terms = jax.lax.scan(mstep, carry, None, length=config.steps)
    return (p, s, weight), terms

  # Visible vertices of the initial pose give the first closed-form light, so
  # that the first E-step compares shaded colours, not the default grey; its
  # tint is pulled towards skin so that a large occluder cannot become "the face".
  _, _, _, weight0 = estep(params, intr_low, images_low, 1.0, robust and masks is not None,
                           masks_low)
  params = set_light(params, relight(params, weight0, config.initial_tint_ridge))
  (params, _, _), trace = jax.lax.scan(round_body, (params, opt_state, weight0),
                                    jnp.arange(config.rounds))
  trace = jnp.swapaxes(trace.reshape(config.rounds * config.steps, batch, len(LOSS_NAMES)), 0, 1)

  final_scale = schedule[min(config.rounds, len(schedule)) - 1] if config.rounds else 1.0
  render, face, post, weight = estep(params, intrinsics, images, final_scale, robust, masks)
  verts = jax.vmap(lambda p: model_lib.vertices(model, p["shape"], p["expression"]))(params)
  cam = camera_lib.to_camera(verts, params["angles"], params["translation"])
  lms = camera_lib.project(model_lib.landmark_positions(model, cam), intrinsics)
  facef = face.astype(jnp.float32)
  inlier = (post > 0.5) & face
  if robust and config.contour_margin > 0 and masks is None:
    extend = functools.partial(extend_inliers, margin=config.contour_margin,
                               outlier_sigmas=config.outlier_sigmas)
    inlier = inlier | jax.vmap(extend, in_axes=(0, 0, 0, 0, None))(
        render, face, inlier, images, config.sigma * final_scale)
  inlier = inlier.astype(jnp.float32)
  return FitResult(shape=params["shape"], expression=params["expression"],
                   albedo=params["albedo"], angles=params["angles"],
                   translation=params["translation"],
                   light=light_from_factors(params["light_sh"], params["light_tint"]),
                   vertices=verts, vertices_camera=cam, landmarks=lms, image=render,
                   mask=facef, inlier=inlier, inlier_probability=post,
                   vertex_weight=weight, loss_trace=trace)


INIT_KEYS = ("shape", "expression", "albedo", "angles", "translation")


def fit(model: model_lib.MorphableModel, image, landmarks, *,
        config: FitConfig = FitConfig(), prior=None,
        intrinsics: Optional[camera_lib.Intrinsics] = None, init: Optional[dict] = None,
        inlier_mask=None) -> FitResult:
  """Fits the morphable model to one image or a batch (robust EM by default).

  Args:
    model: the morphable model.
    image: [H, W, 3] or [B, H, W, 3] float in [0, 1].
    landmarks: [68, 2] or [B, 68, 2] iBUG-68 landmarks in pixels (centres at +0.5);
      NaN marks points to ignore; points the model lacks are ignored anyway.
    config: :class:`FitConfig`.
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

  Returns:
    :class:`FitResult`, without the batch axis for a single image.

  Raises:
    ValueError: wrong image, landmark, init or mask shapes, or a prior for another
      model.
  """
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
  h, w = image.shape[1], image.shape[2]
  if intrinsics is None:
    intrinsics = camera_lib.Intrinsics.reference(w, h)
  elif (intrinsics.width, intrinsics.height) != (w, h):
    raise ValueError(f"fit: intrinsics are {intrinsics.width}x{intrinsics.height} but the "
                     f"image is {w}x{h}")
  sigma_vertex = prior_scale(model, prior if config.use_prior else None)
  sigma_vertex = jnp.broadcast_to(sigma_vertex, (image.shape[0], model.num_vertices))
  sub_idx, lm_sub = sample_vertices(model, config.max_vertices)
  start = _check_init(model, init, image.shape[0], single)
  masks = None
  if inlier_mask is not None:
    masks = jnp.asarray(inlier_mask, jnp.float32)
    masks = masks[None] if single and masks.ndim == 2 else masks
    if masks.shape != image.shape[:3]:
      raise ValueError(f"fit: inlier_mask must be [H, W] (or [B, H, W]) like the image "
                       f"{tuple(image.shape)}, got {tuple(jnp.shape(inlier_mask))}")
  result = _fit_batch(model, image, landmarks, sigma_vertex, jnp.asarray(sub_idx),
                      jnp.asarray(lm_sub), config, intrinsics, start, masks)
  if single:
    result = jax.tree_util.tree_map(lambda a: a[0], result)
  return result


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
                     "for this model (focus_jax.prior.build)")
  return scale


# ----------------------------------------------------------------------------- landmarks only


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
  angles0, trans0 = init_pose(mean, target, valid, intr)

  def unpack(theta):
    return (theta[:ks], theta[ks:ks + ke], theta[ks + ke:ks + ke + 3], theta[ks + ke + 3:])

  def residual(theta):
    s, e, a, t = unpack(theta)
    pts = (mean + jnp.einsum("k,kvc->vc", s, sb, precision="highest")
           + jnp.einsum("k,kvc->vc", e, eb, precision="highest"))
    proj = camera_lib.project(camera_lib.to_camera(pts, a, t), intr)
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
  lms = camera_lib.project(model_lib.landmark_positions(model, cam), intr)
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
