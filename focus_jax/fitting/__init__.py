"""Per-image occlusion-robust analysis-by-synthesis fitting, with no trained network.

``fit(model, image, landmarks)`` recovers 3DMM coefficients, pose and SH light of a
face image and an inlier mask (1 = visible face skin the model explains):

1. **Pose initialisation** in closed form (:mod:`~focus_jax.fitting.pose`): a
   weak-perspective (scaled orthographic) camera fitted to the 2D landmarks by
   least squares from the mean face's 3D landmarks, converted to the reference
   pose (Euler angles, translation; depth from the scale through the focal
   length). The light is then solved in closed form
   (:mod:`~focus_jax.fitting.light`: weighted linear least squares on the visible
   vertices, its tint pulled towards the model's skin colour:
   ``Light.initial_tint_ridge``).
2. **EM** for ``schedule.rounds`` rounds (:mod:`~focus_jax.fitting.em`):

   * **E-step** (image space, :mod:`~focus_jax.fitting.estep`): render the face
     (hard rasterization), take each pixel's residual with *neighbour tolerance*
     (the smallest ``‖R(p) − I(p+δ)‖`` over a small window of shifts δ), compare
     the Gaussian foreground likelihood (σ, adjusted per pixel by the *misfit
     prior*) against the outlier likelihood (uniform, times a per-image colour
     model of the current outliers by default), and enforce *spatial coherence*
     with a few mean-field iterations of a contrast-sensitive Potts-like
     smoothness term (:mod:`~focus_jax.fitting.inliers`). The result is the
     inlier mask; it is sampled at the projected vertices (times their
     visibility) to give per-vertex weights. The light is re-solved in closed
     form on those inliers.
   * **M-step** (vertex space, MoFA's "sample" mode, :mod:`~focus_jax.fitting.mstep`):
     ``schedule.steps`` Adam steps (optax, one learning rate per parameter group)
     on shape, expression, albedo, pose and light, comparing shaded vertex
     colours with the target sampled at the projected vertices — no
     rasterization in the inner loop — plus the weighted 68-landmark loss and
     coefficient regularisation.

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
vertex as an inlier. :class:`FitConfig` has four groups: ``schedule``, ``estep``,
``light``, ``optimiser`` (:mod:`~focus_jax.fitting.config`).

``fit_landmarks(model, landmarks, intrinsics=...)`` is the landmark-only fit
(:mod:`~focus_jax.fitting.landmarks`), and :func:`build_prior` builds the misfit
prior from fits of synthetic faces, :func:`build_prior_from_photos` from robust
fits of real unoccluded photos (:mod:`~focus_jax.fitting.misfit_prior`).

Units: images [B, H, W, 3] in [0, 1]; landmarks [B, 68, 2] pixels (x right, y
down, pixel centres at +0.5; NaN for points to ignore); vertices mm; angles rad.
"""

from focus_jax.fitting import config, em, estep, inliers, landmarks, light, mstep, pose
from focus_jax.fitting import problem, sampling
from focus_jax.fitting.config import EStep, FitConfig, Light, Optimiser, Schedule
from focus_jax.fitting.em import INIT_KEYS, LOSS_NAMES, FitResult, fit, prior_scale
from focus_jax.fitting.inliers import (colour_log_density, edge_weights, extend_inliers,
                                       inlier_posterior)
from focus_jax.fitting.landmarks import LandmarkFitConfig, LandmarkFitResult, fit_landmarks
from focus_jax.fitting.light import light_from_factors, solve_light
from focus_jax.fitting.misfit_prior import build_prior, build_prior_from_photos
from focus_jax.fitting.pose import angles_from_rotation, init_pose
from focus_jax.fitting.sampling import bilinear_sample, sample_vertices

__all__ = [
    "FitConfig", "Schedule", "EStep", "Light", "Optimiser", "FitResult", "fit",
    "LOSS_NAMES", "INIT_KEYS", "prior_scale",
    "LandmarkFitConfig", "LandmarkFitResult", "fit_landmarks", "build_prior", "build_prior_from_photos",
    "angles_from_rotation", "init_pose", "light_from_factors", "solve_light",
    "inlier_posterior", "colour_log_density", "edge_weights", "extend_inliers",
    "bilinear_sample", "sample_vertices",
]
