"""Builds the misfit prior (:class:`focus_jax.prior.MisfitPrior`) by fitting
synthetic faces.

Unoccluded synthetic faces carry appearance detail the model's albedo space
cannot express (brows, lipstick, stubble, freckles; :mod:`focus_jax.data.synthetic`).
Fitting many of them and recording each vertex's colour residual shows which
regions are hard to fit though they are skin; :func:`focus_jax.prior.from_residuals`
turns the statistics into per-vertex σ multipliers.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax import prior as prior_lib
from focus_jax.data import synthetic
from focus_jax.fitting import config as config_lib
from focus_jax.fitting import em
from focus_jax.fitting import sampling
from focus_jax.morphable import model as model_lib
from focus_jax.render import camera as camera_lib
from focus_jax.render import render as render_lib
from focus_jax.render import shading as shading_lib


def build_prior(model, num_faces: int = 64, size: int = 112, seed: int = 1000, config=None,
                batch: int = 8, max_scale: float = 3.0, smooth: int = 1) -> prior_lib.MisfitPrior:
  """Fits ``num_faces`` unoccluded synthetic faces with unmodelled detail and
  records per-vertex residuals (colour of the fitted vertex vs the image there).

  Args:
    model: the morphable model.
    num_faces, size, seed: the synthetic faces (occlusion off, details on; size px).
    config: :class:`~focus_jax.fitting.config.FitConfig` (default: non-robust, so
      that every visible vertex is recorded; there are no occluders to reject).
    batch: faces per fit call.
    max_scale: cap of the σ multiplier.
    smooth: mesh-neighbour averaging passes of the squared residuals.

  Returns:
    :class:`~focus_jax.prior.MisfitPrior` of ``model``.
  """
  gen = synthetic.SyntheticFaces(
      model, synthetic.SyntheticConfig(size=size, occlusion_probability=0.0), seed=seed)
  config = config or config_lib.FitConfig(robust=False)
  intr = camera_lib.Intrinsics.reference(size)
  sq_sum = np.zeros(model.num_vertices)
  count = np.zeros(model.num_vertices, np.int64)
  for start in range(0, num_faces, batch):
    samples = gen.generate(range(start, min(start + batch, num_faces)))
    images = np.stack([s.image for s in samples])
    result = jax.device_get(em.fit(model, images, np.stack([s.landmarks for s in samples]),
                                   config=config))
    for i in range(len(samples)):
      sq = _vertex_residual(model, result, i, images[i], intr)
      # Non-robust fit: the weight is the vertex visibility.
      visible = np.asarray(result.vertex_weight[i]) > 0
      sq_sum += np.where(visible, sq, 0.0)
      count += visible
  tri = np.asarray(model.triangles)
  for _ in range(smooth):
    sq_sum, count = _neighbour_mean(sq_sum, tri), _neighbour_mean(count.astype(float), tri)
  return prior_lib.from_residuals(sq_sum, np.round(count).astype(np.int64), max_scale,
                                  model_name=model.name)


def _vertex_residual(model, result: em.FitResult, i: int, image, intr) -> np.ndarray:
  """[V] squared RGB residual of face ``i`` of a (host) fit result: its shaded
  vertex colours against ``image`` [H, W, 3] at its projected vertices."""
  verts = jnp.asarray(result.vertices[i])
  _, _, colors = render_lib.pose_and_shade(
      verts, shading_lib.vertex_normals(verts, model.triangles),
      model_lib.albedo(model, jnp.asarray(result.albedo[i])), jnp.asarray(result.angles[i]),
      jnp.asarray(result.translation[i]), jnp.asarray(result.light[i]))
  vimg = render_lib.project_vertices(jnp.asarray(result.vertices_camera[i]), intr)
  sampled = sampling.bilinear_sample(jnp.asarray(image), vimg)
  return np.asarray(jnp.sum(jnp.square(colors - sampled), -1))


def _neighbour_mean(values, triangles):
  """[V] mean of each vertex's value and its mesh neighbours' (one per triangle
  edge, so shared edges count twice)."""
  total = values.astype(np.float64).copy()
  n = np.ones_like(total)
  for a, b in ((0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)):
    np.add.at(total, triangles[:, a], values[triangles[:, b]])
    np.add.at(n, triangles[:, a], 1.0)
  return total / n


def build_prior_from_photos(model, crops, landmarks, *, config=None, batch: int = 4,
                            max_scale: float = 3.0, min_count: int = 5,
                            smooth: int = 1) -> prior_lib.MisfitPrior:
  """Misfit prior measured on real unoccluded photos (aligned face crops).

  Every crop gets the robust fit (``config``, default :class:`FitConfig`), so that
  hair or glasses do not drag its light and albedo; each visible vertex's colour
  residual is recorded (visibility from the fitted pose, inlier or not). The
  per-vertex statistic is the *median* residual norm over the photos that see it
  (robust to the few photos where hair or a hand covers a region), smoothed over
  mesh neighbours, and the σ multiplier is ``clip(median / σ, 1, max_scale)``:
  regions whose typical real-skin residual exceeds the likelihood's σ (eyes, brows,
  lips, nostrils, for a model without open eyes or a real albedo) get a wider σ.
  Unlike :func:`build_prior` (normalised by the median vertex, for synthetic
  faces), the scale is absolute: real skin is fitted worse everywhere, not only in
  some regions.

  Args:
    model: the morphable model.
    crops: [N, S, S, 3] float in [0, 1] aligned crops (as ``focus-jax fit`` makes).
    landmarks: [N, 68, 2] crop pixels.
    config: the fit's :class:`~focus_jax.fitting.config.FitConfig`.
    batch: crops per fit call.
    max_scale: cap of the σ multiplier.
    min_count: vertices seen by fewer photos keep multiplier 1.
    smooth: mesh-neighbour averaging passes of the median.

  Returns:
    :class:`~focus_jax.prior.MisfitPrior` (``rms`` holds the median residual norm,
    ``count`` the photos that saw each vertex).
  """
  crops = np.asarray(crops, np.float32)
  landmarks = np.asarray(landmarks, np.float32)
  if crops.ndim != 4 or len(crops) == 0 or landmarks.shape != (len(crops), 68, 2):
    raise ValueError(f"build_prior_from_photos: crops [N, S, S, 3] and landmarks [N, 68, 2], "
                     f"got {crops.shape} and {landmarks.shape}")
  config = config or config_lib.FitConfig()
  visibility = config_lib.FitConfig(robust=False, rounds=0)
  intr = camera_lib.Intrinsics.reference(crops.shape[2], crops.shape[1])
  norms = []
  for start in range(0, len(crops), batch):
    images, lms = crops[start:start + batch], landmarks[start:start + batch]
    result = jax.device_get(em.fit(model, images, lms, config=config))
    init = {k: getattr(result, k) for k in em.INIT_KEYS}
    visible = np.asarray(em.fit(model, images, lms, config=visibility, init=init).vertex_weight)
    for i in range(len(images)):
      r = np.sqrt(_vertex_residual(model, result, i, images[i], intr))
      norms.append(np.where(visible[i] > 0, r, np.nan))
  norms = np.stack(norms)
  count = np.sum(np.isfinite(norms), 0)
  with warnings.catch_warnings():   # vertices no photo saw: an all-NaN column
    warnings.simplefilter("ignore", RuntimeWarning)
    median = np.nanmedian(np.where(count[None] >= min_count, norms, np.nan), 0)
  median = np.where(np.isfinite(median), median, np.nanmedian(median))
  tri = np.asarray(model.triangles)
  for _ in range(smooth):
    median = _neighbour_mean(median, tri)
  scale = np.where(count >= min_count, np.clip(median / config.estep.sigma, 1.0, max_scale), 1.0)
  return prior_lib.MisfitPrior(sigma_scale=scale.astype(np.float32),
                               rms=median.astype(np.float32), count=count.astype(np.int32),
                               model_name=model.name)
