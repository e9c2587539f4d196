"""Evaluation metrics: inlier masks, the NoW-style 3D reconstruction error, plots.

The ``focus-jax eval`` workflow over prediction folders is :mod:`focus_jax.app.evaluate`.

* :mod:`~focus_jax.eval.mask_metrics` — accuracy / precision / recall / F1 / IoU;
* :mod:`~focus_jax.eval.mesh_metrics` — exact scan-to-mesh distances, NoW alignment,
  cumulative-error curves;
* :mod:`~focus_jax.eval.plots` — PNG line plots without matplotlib.
"""

from focus_jax.eval import mask_metrics, mesh_metrics

__all__ = ["mask_metrics", "mesh_metrics"]
