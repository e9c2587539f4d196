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


def _brute_force(points, verts, tris):
  """Distance from every point to every triangle, minimum per point."""
  t = verts[tris]
  best = np.full(len(points), np.inf)
  for a, b, c in t:
    q = mesh_metrics.closest_points_on_triangles(
        points, *(np.broadcast_to(x, points.shape) for x in (a, b, c)))
    best = np.minimum(best, np.linalg.norm(points - q, axis=1))
  return best


def test_point_to_mesh_is_exact_against_brute_force():
  rng = np.random.default_rng(1)
  # A random grid surface plus a few huge and sliver triangles: mixed radii.
  verts, tris = _sphere(30.0, n=8)
  verts = verts + rng.normal(scale=2.0, size=verts.shape)
  extra = rng.normal(scale=60.0, size=(9, 3))
  verts = np.concatenate([verts, extra])
  v0 = len(verts) - 9
  tris = np.concatenate([tris, [[v0, v0 + 1, v0 + 2], [v0 + 3, v0 + 4, v0 + 5],
                                [v0 + 6, v0 + 7, 0]]])
  points = np.concatenate([rng.normal(scale=35.0, size=(300, 3)),      # near the surface
                           rng.normal(scale=150.0, size=(100, 3))])    # far away
  dist, closest = mesh_metrics.point_to_mesh(points, verts, tris)
  np.testing.assert_allclose(dist, _brute_force(points, verts, tris), rtol=0, atol=1e-9)
  np.testing.assert_allclose(np.linalg.norm(points - closest, axis=1), dist, atol=1e-9)
  # The fast candidate mode is an upper bound.
  approx, _, _ = mesh_metrics.MeshDistance(verts, tris, candidates=1).query(points, exact=False)
  assert (approx >= dist - 1e-9).all() and (approx > dist + 1e-6).any()


def _cube(side, subdivisions=4):
  """Closed cube surface centred at 0, each face a subdivided grid: (verts, tris)."""
  g = np.linspace(-side / 2, side / 2, subdivisions + 1)
  verts, tris = [], []
  for axis in range(3):
    for sign in (-1, 1):
      u, v = np.meshgrid(g, g, indexing="ij")
      p = np.zeros(u.shape + (3,))
      p[..., axis] = sign * side / 2
      p[..., (axis + 1) % 3], p[..., (axis + 2) % 3] = u, v
      base = sum(len(x) for x in verts)
      verts.append(p.reshape(-1, 3))
      n = subdivisions + 1
      for i in range(subdivisions):
        for j in range(subdivisions):
          a = base + i * n + j
          tris += [(a, a + n, a + n + 1), (a, a + n + 1, a + 1)]
  return np.concatenate(verts), np.asarray(tris)


def test_offset_cube_gives_the_exact_offset():
  verts, tris = _cube(40.0)
  d = 2.5
  # Scan points on the faces of the cube offset by d (away from edges, where the
  # nearest point is on the face): every distance is exactly d. A symmetric grid, so
  # that no rotation trades some points' error for others' (the aligned optimum is
  # the identity).
  u, v = [x.ravel() for x in np.meshgrid(np.linspace(-18, 18, 7), np.linspace(-18, 18, 7))]
  scan = []
  for axis in range(3):
    for sign in (-1, 1):
      p = np.zeros((len(u), 3))
      p[:, axis] = sign * (20.0 + d)
      p[:, (axis + 1) % 3], p[:, (axis + 2) % 3] = u, v
      scan.append(p)
  scan = np.concatenate(scan)
  corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
  out = mesh_metrics.now_error(verts, tris, scan, 20.0 * corners, (20.0 + d) * corners,
                               scale=False)
  np.testing.assert_allclose(out["distances"], d, atol=1e-9)
  assert out["median"] == pytest.approx(d) and out["std"] < 1e-9


def test_scaled_rotated_copy_is_zero_with_scale():
  verts, tri = _sphere(80.0)
  verts = verts * np.array([1.0, 1.2, 0.8])
  rot = Rotation.from_euler("xyz", [30, -50, 15], degrees=True).as_matrix()
  scan = 1.3 * verts @ rot.T + np.array([5.0, -3.0, 40.0])
  lm = np.arange(0, len(verts), 37)
  out = mesh_metrics.now_error(verts, tri, scan, verts[lm], scan[lm])
  assert out["mean"] < 1e-6 and out["transform"][0] == pytest.approx(1.3)
  np.testing.assert_allclose(out["aligned_vertices"], scan, atol=1e-6)
  # A bad landmark start (landmarks permuted) still ends close after ICP: it moves.
  off = mesh_metrics.now_error(verts, tri, scan, verts[lm], scan[np.roll(lm, 1)],
                               icp_iterations=0)
  assert off["mean"] > 1.0


def test_cumulative_error_curve():
  t, f = mesh_metrics.cumulative_error([0.0, 1.0, 2.0, 3.0], thresholds=[0.5, 1.0, 2.5, 3.0])
  np.testing.assert_allclose(f, [0.25, 0.5, 0.75, 1.0])
  t, f = mesh_metrics.cumulative_error(np.linspace(0, 1.7, 50))
  assert t[0] == 0 and t[-1] == 2.0 and f[-1] == 1.0 and np.all(np.diff(f) >= 0)
  assert mesh_metrics.nice_ceil(0.3) == 0.5 and mesh_metrics.nice_ceil(2.1) == 2.5


def test_curve_plot_draws_the_curves(tmp_path):
  from focus_jax.eval import plots
  path = tmp_path / "curve.png"
  img = plots.cumulative_error_plot(path, {"a": ([0, 1, 2], [0, 0.5, 1.0]),
                                           "b": ([0, 1, 2], [0, 1.0, 1.0])})
  assert path.exists() and img.shape == (440, 640, 3)
  for color in plots.COLORS[:2]:
    assert np.all(img == np.array(color, np.uint8), axis=-1).sum() > 100


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


def test_pooled_counts_and_confusion_picture():
  truth = np.array([[[1, 1, 0, 0]], [[1, 0, 0, 0]]], bool)
  pred = np.array([[[1, 0, 0, 1]], [[1, 1, 1, 0]]], bool)
  region = np.array([[[1, 1, 1, 1]], [[1, 1, 1, 0]]], bool)
  counts = mask_metrics.confusion_counts(pred, truth, region)
  assert counts == dict(tp=2, fp=3, fn=1, tn=1)
  pooled = mask_metrics.mask_scores(pred, truth, region)
  assert pooled["precision"] == pytest.approx(2 / 5) and pooled["recall"] == pytest.approx(2 / 3)
  assert pooled["occluder_iou"] == pytest.approx(1 / 5)
  assert pooled == mask_metrics.scores_from_counts(**counts)
  pic = mask_metrics.confusion_image(pred[0, 0][None], truth[0, 0][None])
  np.testing.assert_allclose(pic[0, 0], 1.0)                 # correct inlier: white
  np.testing.assert_allclose(pic[0, 1], (0.15, 0.35, 1.0))   # false outlier: blue
  np.testing.assert_allclose(pic[0, 2], 0.0)                 # correct outlier: black
  np.testing.assert_allclose(pic[0, 3], (0.9, 0.1, 0.1))     # false inlier: red


def test_aligned_median_error_ignores_pose_and_scale():
  """0 for a rotated, scaled, shifted copy; a known offset of half the vertices shows."""
  rng = np.random.default_rng(3)
  truth = rng.normal(size=(200, 3)) * 50
  angle = 0.4
  rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                  [0, 0, 1]])
  moved = 1.3 * truth @ rot.T + [5.0, -2.0, 40.0]
  assert mesh_metrics.aligned_median_error(moved, truth) < 1e-9
  bumped = truth.copy()
  bumped[:101, 2] += 2.0         # a bump a similarity cannot undo: median error > 0
  err = mesh_metrics.aligned_median_error(bumped, truth)
  assert 0.3 < err < 2.0, err
