"""NoW-style 3D reconstruction error (host-side numpy/scipy).

The NoW benchmark (Sanyal et al. 2019) aligns the predicted mesh rigidly to the
ground-truth scan — first from corresponding landmarks, then refined by
minimising the scan-to-mesh distance (ICP-like) — and reports statistics of the
distance from every scan point to the predicted *surface* (point-to-triangle),
in mm. :func:`now_error` does the same for any scan (points [N, 3] in mm) and
predicted mesh.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import spatial


def similarity_transform(src, dst, scale: bool = True, weights=None):
  """Least-squares ``dst ≈ s·R·src + t`` (Umeyama); src, dst: [N, 3].

  Returns (s, R [3, 3], t [3]); ``scale=False`` fixes s = 1 (rigid).
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
  w = w / w.sum()
  mu_s, mu_d = w @ src, w @ dst
  a, b = src - mu_s, dst - mu_d
  cov = (b * w[:, None]).T @ a
  u, sv, vt = np.linalg.svd(cov)
  d = np.sign(np.linalg.det(u @ vt))
  fix = np.diag([1.0, 1.0, d])
  rot = u @ fix @ vt
  s = float(np.trace(np.diag(sv) @ fix) / (w @ np.sum(a * a, 1))) if scale else 1.0
  return s, rot, mu_d - s * rot @ mu_s


def apply_transform(points, transform):
  s, rot, t = transform
  return s * np.asarray(points, np.float64) @ rot.T + t


def closest_points_on_triangles(points, a, b, c):
  """Closest point on triangle (a, b, c) to each point (all [N, 3]); exact
  (Ericson, Real-Time Collision Detection §5.1.5), vectorised."""
  p = np.asarray(points, np.float64)
  ab, ac, ap = b - a, c - a, p - a
  d1, d2 = np.sum(ab * ap, 1), np.sum(ac * ap, 1)
  bp = p - b
  d3, d4 = np.sum(ab * bp, 1), np.sum(ac * bp, 1)
  cp = p - c
  d5, d6 = np.sum(ab * cp, 1), np.sum(ac * cp, 1)
  va = d3 * d6 - d5 * d4
  vb = d5 * d2 - d1 * d6
  vc = d1 * d4 - d3 * d2
  with np.errstate(divide="ignore", invalid="ignore"):
    denom = va + vb + vc
    v = np.where(denom != 0, vb / denom, 0.0)
    w = np.where(denom != 0, vc / denom, 0.0)
    out = a + ab * v[:, None] + ac * w[:, None]                      # face region
    # Edge regions (checked in reverse priority; vertex regions last win).
    t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    m = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
    out = np.where(m[:, None], b + (c - b) * t_bc[:, None], out)
    t_ac = d2 / (d2 - d6)
    m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    out = np.where(m[:, None], a + ac * t_ac[:, None], out)
    t_ab = d1 / (d1 - d3)
    m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    out = np.where(m[:, None], a + ab * t_ab[:, None], out)
  out = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, out)
  out = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, out)
  out = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, out)
  return out


def point_to_mesh(points, vertices, triangles, candidates: int = 16):
  """Distance from each point to a triangle mesh, and the closest surface points.

  Candidate triangles per point: the ``candidates`` nearest triangle centroids
  and every triangle around the nearest vertex (a cKDTree each); the exact
  point-to-triangle distance is taken over them.

  Args:
    points: [N, 3]; vertices: [V, 3]; triangles: [F, 3] int.

  Returns:
    (distances [N], closest points [N, 3]).
  """
  p = np.asarray(points, np.float64)
  v = np.asarray(vertices, np.float64)
  f = np.asarray(triangles, np.int64)
  tri = v[f]                                                       # [F, 3, 3]
  k = min(candidates, len(f))
  _, cand = spatial.cKDTree(tri.mean(1)).query(p, k=k)
  cand = cand.reshape(len(p), k)
  # Triangles around the nearest vertex (padded ring table).
  _, nv = spatial.cKDTree(v).query(p)
  order = np.argsort(f.ravel(), kind="stable")
  vert_of = f.ravel()[order]
  starts = np.searchsorted(vert_of, np.arange(len(v)))
  counts = np.bincount(vert_of, minlength=len(v))
  ring_width = max(int(counts.max()), 1)
  ring_idx = starts[nv][:, None] + np.arange(ring_width)[None]
  ring_ok = np.arange(ring_width)[None] < counts[nv][:, None]
  ring = np.where(ring_ok, order[np.minimum(ring_idx, len(order) - 1)] // 3, cand[:, :1])
  cand = np.concatenate([cand, ring], 1)
  n, m = cand.shape
  pts = np.repeat(p, m, axis=0)
  t = tri[cand.ravel()]
  q = closest_points_on_triangles(pts, t[:, 0], t[:, 1], t[:, 2])
  d = np.linalg.norm(pts - q, axis=1).reshape(n, m)
  best = np.argmin(d, 1)
  return d[np.arange(n), best], q.reshape(n, m, 3)[np.arange(n), best]


def now_error(pred_vertices, triangles, scan_points, pred_landmarks=None,
              scan_landmarks=None, scale: bool = True, icp_iterations: int = 5,
              landmark_alignment: bool = True) -> dict:
  """Scan-to-mesh error after rigid (similarity) alignment, NoW style.

  Args:
    pred_vertices: [V, 3] predicted mesh (mm); triangles: [F, 3].
    scan_points: [N, 3] ground-truth scan points (mm).
    pred_landmarks, scan_landmarks: [L, 3] corresponding landmarks for the initial
      alignment (L ≥ 3); None skips it (meshes already roughly aligned).
    scale: allow a global scale (NoW does); False = rigid.
    icp_iterations: refinements minimising the scan-to-surface distance.

  Returns:
    dict(median, mean, std in mm, distances [N], transform (s, R, t) that maps
    the prediction onto the scan).
  """
  pred = np.asarray(pred_vertices, np.float64)
  scan = np.asarray(scan_points, np.float64)
  transform = (1.0, np.eye(3), np.zeros(3))
  if landmark_alignment and pred_landmarks is not None and scan_landmarks is not None:
    ok = np.isfinite(pred_landmarks).all(1) & np.isfinite(scan_landmarks).all(1)
    transform = similarity_transform(np.asarray(pred_landmarks)[ok],
                                     np.asarray(scan_landmarks)[ok], scale)
  for _ in range(icp_iterations):
    moved = apply_transform(pred, transform)
    _, closest = point_to_mesh(scan, moved, triangles)
    # closest (on the moved mesh) -> scan: compose with the current transform.
    s, rot, t = transform
    back = ((closest - t) @ rot) / s                                # on the original mesh
    transform = similarity_transform(back, scan, scale)
  dist, _ = point_to_mesh(scan, apply_transform(pred, transform), triangles)
  return dict(median=float(np.median(dist)), mean=float(np.mean(dist)),
              std=float(np.std(dist)), distances=dist, transform=transform)
