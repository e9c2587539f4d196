"""The misfit prior: where the face model systematically cannot fit the skin.

Synthetic faces carry appearance detail the model's albedo space cannot express
(brows, lipstick, stubble, freckles; :mod:`focus_jax.data.synthetic`). Fitting
many of them *without occluders* and recording each vertex's colour residual
shows which regions are hard to fit though they are skin. The prior stores a
per-vertex σ multiplier (``sigma_scale`` [V] ≥ 1): the robust likelihood then
uses ``σ·scale`` there, so those regions are not labelled outliers.

* :func:`from_residuals` — the prior from accumulated residual statistics
  (:func:`focus_jax.fitting.build_prior` fits synthetic faces to get them).
* :func:`save` / :func:`load` — ``.npz``.
* applied by :func:`focus_jax.fitting.fit` (E-step σ map and M-step weights), and
  by :func:`sigma_map` / :func:`normalised_residual` for the UNet losses.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import jax.numpy as jnp
import numpy as np

from focus_jax.render import rasterize as raster_lib


@dataclasses.dataclass
class MisfitPrior:
  """Per-vertex misfit statistics of one morphable model.

  Attributes:
    sigma_scale: [V] float32 σ multiplier (≥ 1; 1 = the model fits as well as
      anywhere).
    rms: [V] float32 RMS RGB residual of the fits that built it (0 where unseen).
    count: [V] int32 how many fits saw the vertex (visible).
    model_name: name of the model it was built for.
  """
  sigma_scale: np.ndarray
  rms: np.ndarray
  count: np.ndarray
  model_name: str = ""


def from_residuals(sq_sum, count, max_scale: float = 3.0, min_count: int = 3,
                   model_name: str = "") -> MisfitPrior:
  """Prior from accumulated squared residual norms ``sq_sum`` [V] over ``count`` [V]
  visible fits: scale = RMS / median RMS, clipped to [1, max_scale]."""
  count = np.asarray(count)
  rms = np.sqrt(np.asarray(sq_sum, np.float64) / np.maximum(count, 1))
  seen = count >= min_count
  base = np.median(rms[seen]) if seen.any() else 1.0
  scale = np.where(seen, np.clip(rms / max(base, 1e-6), 1.0, max_scale), 1.0)
  return MisfitPrior(sigma_scale=scale.astype(np.float32), rms=rms.astype(np.float32),
                     count=count.astype(np.int32), model_name=model_name)


# The built-in face's misfit prior measured on real photos (experiments/build_real_prior.py;
# derived from the tune half of ../shared/data/real_faces): shipped with the package.
REAL_FACES_PRIOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "priors",
                                "builtin_real_faces.npz")


def packaged_for(model) -> "MisfitPrior | None":
  """The packaged real-face prior when ``model`` is the one it was built for
  (same name and vertex count), else None (also when the file is absent: the
  code runs without it)."""
  if not os.path.exists(REAL_FACES_PRIOR):
    return None
  prior = load(REAL_FACES_PRIOR)
  if prior.model_name != model.name or prior.sigma_scale.shape != (model.num_vertices,):
    return None
  return prior


def save(path: str | os.PathLike, prior: MisfitPrior) -> None:
  """Writes the prior as ``.npz``."""
  np.savez(path, sigma_scale=prior.sigma_scale, rms=prior.rms, count=prior.count,
           model_name=np.asarray(prior.model_name))


def load(path: str | os.PathLike, model=None) -> MisfitPrior:
  """Reads a prior written by :func:`save`; checks the vertex count against ``model``.

  Raises:
    FileNotFoundError / ValueError naming the file.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"misfit prior {path} not found; build one with "
                            "focus_jax.fitting.build_prior(model) and focus_jax.prior.save")
  try:
    with np.load(path) as z:
      prior = MisfitPrior(sigma_scale=z["sigma_scale"], rms=z["rms"], count=z["count"],
                          model_name=str(z["model_name"]))
  except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"misfit prior {path} is not a focus-jax prior file: {e}") from e
  scale = np.asarray(prior.sigma_scale)
  if scale.ndim != 1 or not np.issubdtype(scale.dtype, np.floating) or not (
      np.all(np.isfinite(scale)) and np.all(scale > 0)):
    raise ValueError(f"misfit prior {path}: sigma_scale must be a [V] array of finite, "
                     "positive floats")
  if model is not None and prior.sigma_scale.shape != (model.num_vertices,):
    raise ValueError(f"misfit prior {path} has {prior.sigma_scale.shape[0]} vertices but "
                     f"the model {model.name!r} has {model.num_vertices}")
  return prior


def sigma_map(prior: MisfitPrior, vertices_camera, triangles, fragments, intrinsics):
  """Per-pixel σ multiplier [(B,) H, W] (1 on background) from a rasterization."""
  scale = jnp.asarray(prior.sigma_scale)[:, None]
  if vertices_camera.ndim == 3:
    scale = jnp.broadcast_to(scale, vertices_camera.shape[:-1] + (1,))
  m = raster_lib.interpolate(scale, vertices_camera, triangles, fragments, intrinsics)[..., 0]
  return jnp.where(fragments.mask, jnp.maximum(m, 1.0), 1.0)


def normalised_residual(image, target, sigma_scale_map):
  """``(I − R) / scale`` [..., H, W, 3]: residuals in prior-adjusted units, for
  UNet losses (e.g. the neighbour term) that should tolerate hard-to-fit skin."""
  return (target - image) / sigma_scale_map[..., None]
