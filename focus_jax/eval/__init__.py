"""Evaluation: inlier-mask metrics and the NoW-style 3D reconstruction error."""

from focus_jax.eval import mask_metrics, mesh_metrics

__all__ = ["mask_metrics", "mesh_metrics"]
