"""Evaluation: inlier-mask metrics, the NoW-style 3D reconstruction error, reports.

* :mod:`~focus_jax.eval.mask_metrics` — accuracy / precision / recall / F1 / IoU;
* :mod:`~focus_jax.eval.mesh_metrics` — exact scan-to-mesh distances, NoW alignment,
  cumulative-error curves;
* :mod:`~focus_jax.eval.evaluate` — a dataset against prediction folders (``focus-jax eval``);
* :mod:`~focus_jax.eval.plots` — PNG line plots without matplotlib.
"""

from focus_jax.eval import mask_metrics, mesh_metrics

__all__ = ["mask_metrics", "mesh_metrics"]
