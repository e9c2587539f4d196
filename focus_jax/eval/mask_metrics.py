"""Inlier / occluder mask metrics (host-side numpy).

Masks are [H, W] (or [B, H, W]) booleans; 1 = inlier (visible face skin). All
metrics are computed inside a ``region`` (default: the whole image; the papers
use the ground-truth face region), as in FOCUS's CelebA-HQ / AR evaluation.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def _counts(pred, truth, region):
  pred = np.asarray(pred, bool)
  truth = np.asarray(truth, bool)
  if pred.shape != truth.shape:
    raise ValueError(f"mask shapes differ: predicted {pred.shape} vs truth {truth.shape}")
  region = np.ones_like(pred) if region is None else np.asarray(region, bool)
  tp = np.sum(pred & truth & region)
  fp = np.sum(pred & ~truth & region)
  fn = np.sum(~pred & truth & region)
  tn = np.sum(~pred & ~truth & region)
  return tp, fp, fn, tn


def _ratio(a, b, empty: float):
  return float(a) / float(b) if b > 0 else empty


def mask_scores(pred_inlier, true_inlier, region: Optional[np.ndarray] = None) -> dict:
  """Accuracy, precision, recall, F1 of the inlier class, and occluder IoU.

  Args:
    pred_inlier, true_inlier: [..., H, W] bool (1 = inlier).
    region: [..., H, W] bool where to evaluate (e.g. ground-truth face mask).

  Returns:
    dict(accuracy, precision, recall, f1, occluder_iou, occluder_precision,
    occluder_recall). Empty denominators give 1 (nothing to find, nothing found
    wrongly) so that unoccluded faces score IoU 1 when no outlier is predicted.
  """
  tp, fp, fn, tn = _counts(pred_inlier, true_inlier, region)
  precision = _ratio(tp, tp + fp, 1.0)
  recall = _ratio(tp, tp + fn, 1.0)
  f1 = _ratio(2 * precision * recall, precision + recall, 0.0)
  # Occluder = outlier class: its true positives are the inlier class's tn.
  occ_iou = _ratio(tn, tn + fp + fn, 1.0)
  return dict(accuracy=_ratio(tp + tn, tp + fp + fn + tn, 1.0), precision=precision,
              recall=recall, f1=f1, occluder_iou=occ_iou,
              occluder_precision=_ratio(tn, tn + fn, 1.0),
              occluder_recall=_ratio(tn, tn + fp, 1.0))


def false_outlier_rate(pred_inlier, true_inlier, where) -> float:
  """Fraction of true inlier pixels inside ``where`` predicted as outliers."""
  pred = np.asarray(pred_inlier, bool)
  truth = np.asarray(true_inlier, bool) & np.asarray(where, bool)
  return _ratio(np.sum(truth & ~pred), np.sum(truth), 0.0)
