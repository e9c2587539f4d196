"""Mask and NoW-style mesh metrics on known answers."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from focus_jax.eval import mask_metrics, mesh_metrics


def _sphere(radius, n=20):
  u, v = np.meshgrid(np.linspace(0.15, np.pi - 0.15, n), np.linspace(0, 2 * np.pi, 2 * n,
                                                                   endpoint=False))
  pts = np.stack([np.sin(u) * np.cos(v), np.sin(u) * np.sin(v), np.cos(u)], -1).reshape(-1, 3)
  from scipy.spatial import ConvexHull
  return radius * pts, ConvexHull(pts).simplices


def test_point_to_triangle_regions():
  a, b, c = np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
  pts = np.array([[0.2, 0.2, 2.0], [-1, -1, 0], [2, 0, 1], [0.5, -1, 0], [1, 1, 0]])
  q = mesh_metrics.closest_points_on_triangles(pts, *(np.broadcast_to(x, pts.shape)
                                                      for x in (a, b, c)))
  np.testing.assert_allclose(q, [[0.2, 0.2, 0], [0, 0, 0], [1, 0, 0], [0.5, 0, 0],
                                 [0.5, 0.5, 0]], atol=1e-12)


def test_mesh_vs_rigidly_moved_copy_is_zero():
  verts, tri = _sphere(80.0)
  verts = verts * np.array([1.0, 1.2, 0.8])     # no symmetry to confuse ICP
  rot = Rotation.from_euler("xyz", [10, -20, 5], degrees=True).as_matrix()
  scan = verts @ rot.T + np.array([5.0, -3.0, 40.0])
  lm = np.arange(0, len(verts), 37)
  out = mesh_metrics.now_error(verts, tri, scan, verts[lm], scan[lm], scale=False)
  assert out["median"] < 1e-6 and out["mean"] < 1e-6


def test_offset_surface_gives_the_offset():
  inner, tri = _sphere(80.0, n=40)
  outer = inner * (83.0 / 80.0)                 # offset surface at 3 mm
  out = mesh_metrics.now_error(inner, tri, outer, inner[::50], outer[::50], scale=False)
  # Chord error of the polyhedral sphere makes it slightly larger than 3.
  assert out["median"] == pytest.approx(3.0, abs=0.15)
  assert out["std"] < 0.2


def test_similarity_recovers_scale():
  rng = np.random.default_rng(0)
  src = rng.normal(size=(20, 3))
  rot = Rotation.from_euler("z", 30, degrees=True).as_matrix()
  s, r, t = mesh_metrics.similarity_transform(src, 2.0 * src @ rot.T + 1.0)
  assert s == pytest.approx(2.0) and np.allclose(r, rot) and np.allclose(t, 1.0)


def test_mask_scores_known_values():
  truth = np.array([[1, 1, 1, 0]], bool)
  pred = np.array([[1, 1, 0, 0]], bool)
  m = mask_metrics.mask_scores(pred, truth)
  assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3)
  assert m["f1"] == pytest.approx(0.8)
  assert m["occluder_iou"] == pytest.approx(0.5)     # outliers: pred {2,3} vs truth {3}
  region = np.array([[1, 1, 0, 1]], bool)
  assert mask_metrics.mask_scores(pred, truth, region)["recall"] == 1.0
  # Trivial all-inlier mask: precision = visible fraction, IoU 0.
  trivial = mask_metrics.mask_scores(np.ones_like(truth), truth)
  assert trivial["precision"] == 0.75 and trivial["occluder_iou"] == 0.0
  assert mask_metrics.false_outlier_rate(pred, truth, np.ones_like(truth)) == pytest.approx(1 / 3)
