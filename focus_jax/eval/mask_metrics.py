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
