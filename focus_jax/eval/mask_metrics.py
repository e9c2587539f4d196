"""Inlier / occluder mask metrics (host-side numpy).

Masks are [H, W] (or [B, H, W]) booleans; 1 = inlier (visible face skin). All
metrics are computed inside a ``region`` (default: the whole image; the papers
use the ground-truth face region), as in FOCUS's CelebA-HQ / AR evaluation.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def confusion_counts(pred_inlier, true_inlier, region: Optional[np.ndarray] = None) -> dict:
  """Pixel counts tp, fp, fn, tn of the inlier class inside ``region`` (ints).

  Args:
    pred_inlier, true_inlier: [..., H, W] bool (1 = inlier).
    region: [..., H, W] bool where to count; None = everywhere.
  """
  pred = np.asarray(pred_inlier, bool)
  truth = np.asarray(true_inlier, bool)
  if pred.shape != truth.shape:
    raise ValueError(f"mask shapes differ: predicted {pred.shape} vs truth {truth.shape}")
  region = np.ones_like(pred) if region is None else np.asarray(region, bool)
  return dict(tp=int(np.sum(pred & truth & region)), fp=int(np.sum(pred & ~truth & region)),
              fn=int(np.sum(~pred & truth & region)), tn=int(np.sum(~pred & ~truth & region)))


def _ratio(a, b, empty: float):
  return float(a) / float(b) if b > 0 else empty


def scores_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict:
  """The scores of :func:`mask_scores` from pixel counts (e.g. pooled over images)."""
  precision = _ratio(tp, tp + fp, 1.0)
  recall = _ratio(tp, tp + fn, 1.0)
  f1 = _ratio(2 * precision * recall, precision + recall, 0.0)
  # Occluder = outlier class: its true positives are the inlier class's tn.
  return dict(accuracy=_ratio(tp + tn, tp + fp + fn + tn, 1.0), precision=precision,
              recall=recall, f1=f1, occluder_iou=_ratio(tn, tn + fp + fn, 1.0),
              occluder_precision=_ratio(tn, tn + fn, 1.0),
              occluder_recall=_ratio(tn, tn + fp, 1.0))


def mask_scores(pred_inlier, true_inlier, region: Optional[np.ndarray] = None) -> dict:
  """Accuracy, precision, recall, F1 of the inlier class, and occluder IoU.

  FOCUS reports accuracy, precision, recall and F1 of the segmentation inside the
  face region (pass the ground-truth or rendered face mask as ``region``), with
  the visible face as the positive class; the occluder IoU is the intersection
  over union of the predicted and true outlier pixels in the same region.

  Args:
    pred_inlier, true_inlier: [..., H, W] bool (1 = inlier). A leading batch axis
      pools the pixels of all images.
    region: [..., H, W] bool where to evaluate (e.g. ground-truth face mask).

  Returns:
    dict(accuracy, precision, recall, f1, occluder_iou, occluder_precision,
    occluder_recall). Empty denominators give 1 (nothing to find, nothing found
    wrongly) so that unoccluded faces score IoU 1 when no outlier is predicted.
  """
  return scores_from_counts(**confusion_counts(pred_inlier, true_inlier, region))


def false_outlier_rate(pred_inlier, true_inlier, where) -> float:
  """Fraction of true inlier pixels inside ``where`` predicted as outliers."""
  pred = np.asarray(pred_inlier, bool)
  truth = np.asarray(true_inlier, bool) & np.asarray(where, bool)
  return _ratio(np.sum(truth & ~pred), np.sum(truth), 0.0)


def confusion_image(pred_inlier, true_inlier, region=None) -> np.ndarray:
  """[H, W, 3] float picture of the mask errors: white = correct inlier, black =
  correct outlier, red = occluder taken for face (false inlier), blue = face taken
  for occluder (false outlier); grey outside ``region``."""
  pred = np.asarray(pred_inlier, bool)
  truth = np.asarray(true_inlier, bool)
  out = np.zeros(pred.shape + (3,), np.float32)
  out[pred & truth] = 1.0
  out[pred & ~truth] = (0.9, 0.1, 0.1)
  out[~pred & truth] = (0.15, 0.35, 1.0)
  if region is not None:
    out[~np.asarray(region, bool)] = 0.5
  return out


def landmark_hull(landmarks, shape) -> np.ndarray:
  """[H, W] bool: pixels whose centre lies inside (or on) the convex hull of ``landmarks``.

  The region the semi-real benchmark (benchmarks/real.py) scores masks in: the hull of
  the 68 landmarks of the unoccluded photo (jaw line, brows), in photo pixels.

  Args:
    landmarks: [N, 2] pixels (x right, y down; pixel (row i, col j) has its centre at
      (j + 0.5, i + 0.5)); rows with NaN are ignored.
    shape: (H, W) of the image.

  Raises:
    ValueError: fewer than 3 finite points, or all of them on one line.
  """
  from scipy import spatial  # pylint: disable=import-outside-toplevel
  pts = np.asarray(landmarks, np.float64).reshape(-1, 2)
  pts = pts[np.isfinite(pts).all(1)]
  if len(pts) < 3:
    raise ValueError(f"landmark_hull: needs at least 3 finite landmarks, got {len(pts)}")
  try:
    hull = spatial.ConvexHull(pts)
  except spatial.QhullError as e:
    raise ValueError("landmark_hull: the landmarks span no area (all on one line)") from e
  h, w = int(shape[0]), int(shape[1])
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
  # Unit outward normals: each equation gives the signed distance (px) to one facet.
  eq = hull.equations
  dist = xs[..., None] * eq[:, 0] + ys[..., None] * eq[:, 1] + eq[:, 2]
  return np.all(dist <= 1e-6, axis=-1)


def hull_mask_scores(pred_inlier, occluder, landmarks) -> dict:
  """A predicted inlier mask against a known occluder, inside the landmark hull.

  Ground truth: inlier = hull pixel not under the occluder (binary occluder mask,
  e.g. alpha >= 0.5 of a pasted layer); only pixels of :func:`landmark_hull` count.

  Args:
    pred_inlier: [H, W] bool, True = face pixel the model explains (``NAME_mask.png``
      of ``focus-jax fit`` > 0).
    occluder: [H, W] bool, True = occluded (all False for an unoccluded photo).
    landmarks: [68, 2] landmarks of the *unoccluded* photo (pixels, centre +0.5).

  Returns:
    the keys of :func:`mask_scores` (inlier class positive; occluder IoU of the
    outlier class), plus ``all_inlier_f1`` (F1 of the trivial mask that calls every
    hull pixel inlier), ``outlier_share`` (hull pixels predicted outlier),
    ``false_outlier_share`` (truly visible hull pixels predicted outlier),
    ``occluded_share`` (hull pixels under the occluder) and ``hull_pixels``.
  """
  pred = np.asarray(pred_inlier, bool)
  occ = np.asarray(occluder, bool)
  if pred.shape != occ.shape or pred.ndim != 2:
    raise ValueError(f"hull_mask_scores: predicted mask {pred.shape} and occluder {occ.shape} "
                     "must be the same [H, W]")
  hull = landmark_hull(landmarks, pred.shape)
  out = mask_scores(pred, ~occ, hull)
  out["all_inlier_f1"] = mask_scores(np.ones_like(pred), ~occ, hull)["f1"]
  n = int(hull.sum())
  out["outlier_share"] = _ratio(np.sum(hull & ~pred), n, 0.0)
  out["false_outlier_share"] = false_outlier_rate(pred, ~occ, hull)
  out["occluded_share"] = _ratio(np.sum(hull & occ), n, 0.0)
  out["hull_pixels"] = n
  return out
