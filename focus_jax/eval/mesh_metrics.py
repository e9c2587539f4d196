"""NoW-style 3D reconstruction error (host-side numpy/scipy).

The NoW benchmark (Sanyal et al. 2019) aligns the predicted mesh to the
ground-truth scan — first a similarity transform from corresponding landmarks
(seven in NoW), then a refinement that minimises the scan-to-mesh distance
(ICP-like) — and reports statistics of the distance from every scan point to the
predicted *surface* (point-to-triangle), in mm. :func:`now_error` does the same
for any scan (points [N, 3] in mm) and predicted mesh; :func:`cumulative_error`
gives the cumulative-error curve of the distances.

Scan-to-mesh distances are exact (:class:`MeshDistance`): an upper bound from a
few candidate triangles, then every triangle whose bounding ball could hold a
closer point (cKDTree ball queries on the triangle centroids) is measured.
"""

from __future__ import annotations

from typing import Optional, Sequence

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
  """``s·R·p + t`` for points [N, 3] and transform (s, R, t)."""
  s, rot, t = transform
  return s * np.asarray(points, np.float64) @ rot.T + t


def aligned_median_error(pred_vertices, true_vertices) -> float:
  """Median vertex distance (mm) between two meshes of one topology, [V, 3] each, after
  the similarity transform that best maps the prediction onto the truth (the 3D error
  of the training benchmarks: pose and scale do not count)."""
  t = similarity_transform(pred_vertices, true_vertices)
  return float(np.median(np.linalg.norm(apply_transform(pred_vertices, t)
                                        - np.asarray(true_vertices, np.float64), axis=-1)))


def invert_transform(points, transform):
  """The inverse of :func:`apply_transform`: ``Rᵀ(p − t) / s``."""
  s, rot, t = transform
  return ((np.asarray(points, np.float64) - t) @ rot) / s


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


def _flatten(lists):
  """Object array of index lists -> (owner [M], index [M])."""
  counts = np.fromiter((len(x) for x in lists), np.int64, len(lists))
  owner = np.repeat(np.arange(len(lists)), counts)
  flat = np.fromiter((i for x in lists for i in x), np.int64, int(counts.sum()))
  return owner, flat


class MeshDistance:
  """Exact point-to-surface distances to one triangle mesh (built once, queried often).

  Every triangle lies inside the ball around its centroid whose radius is the
  largest centroid-to-vertex distance. If some triangle is within ``u`` of a point
  (``u``: the distance to any triangle, an upper bound), the closest triangle's
  centroid lies within ``u + radius``: a ball query over the centroids finds every
  triangle that can be closest, and the exact point-to-triangle distance picks the
  minimum. Triangles are grouped by radius (factors of 2) so that a few large
  triangles do not widen the search around every point.

  Args:
    vertices: [V, 3]; triangles: [F, 3] int (F ≥ 1).
    candidates: nearest centroids measured first to get the upper bound.
    ball_k: centroids fetched per point and radius class in one vectorised query;
      points with more inside the bound fall back to a ball query (any value is
      exact, this only trades speed).
  """

  def __init__(self, vertices, triangles, candidates: int = 8, ball_k: int = 32):
    self.vertices = np.asarray(vertices, np.float64)
    self.triangles = np.asarray(triangles, np.int64).reshape(-1, 3)
    if len(self.triangles) == 0:
      raise ValueError("MeshDistance: the mesh has no triangles")
    self._corners = self.vertices[self.triangles]                        # [F, 3, 3]
    centroids = self._corners.mean(1)
    radius = np.linalg.norm(self._corners - centroids[:, None], axis=-1).max(1)
    self._tree = spatial.cKDTree(centroids)
    self._k = min(int(candidates), len(self.triangles))
    self._ball_k = max(int(ball_k), 1)
    # Radius classes [2^j, 2^(j+1)); degenerate (radius 0) triangles join the smallest.
    level = np.floor(np.log2(np.maximum(radius, radius.max() * 1e-12 + 1e-300)))
    self._groups = []
    for j in np.unique(level):
      ids = np.nonzero(level == j)[0]
      self._groups.append((ids, spatial.cKDTree(centroids[ids]), float(radius[ids].max())))
    self._scale = float(np.abs(self._corners).max()) + 1.0

  def _measure(self, points, owner, tri_ids):
    t = self._corners[tri_ids]
    q = closest_points_on_triangles(points[owner], t[:, 0], t[:, 1], t[:, 2])
    return np.linalg.norm(points[owner] - q, axis=1), q

  def query(self, points, exact: bool = True, chunk: int = 4096):
    """Distances from points [N, 3] to the surface: (distances [N], closest points
    [N, 3], triangle index [N]).

    ``exact=False`` measures only the ``candidates`` triangles with the nearest
    centroids: distances are upper bounds (usually exact on dense meshes), several
    times faster — what the ICP iterations of :func:`now_error` use.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    dist = np.empty(len(p))
    closest = np.empty((len(p), 3))
    tri = np.empty(len(p), np.int64)
    for start in range(0, len(p), chunk):
      sl = slice(start, start + chunk)
      dist[sl], closest[sl], tri[sl] = self._query_chunk(p[sl], exact)
    return dist, closest, tri

  def _query_chunk(self, p, exact):
    n = len(p)
    _, cand = self._tree.query(p, k=self._k)
    cand = cand.reshape(n, self._k)
    owner = np.repeat(np.arange(n), self._k)
    d, q = self._measure(p, owner, cand.ravel())
    d = d.reshape(n, self._k)
    j = np.argmin(d, 1)
    best_d = d[np.arange(n), j]
    best_q = q.reshape(n, self._k, 3)[np.arange(n), j]
    best_t = cand[np.arange(n), j]
    if not exact:
      return best_d, best_q, best_t
    # Slack for rounding: a triangle exactly at the bound must not be missed.
    slack = 1e-9 * (self._scale + best_d)
    for ids, tree, radius in self._groups:
      bound = best_d + radius + slack
      # The k nearest centroids within the bound (fixed width, vectorised); points
      # with k of them may have more: those get an unbounded ball query.
      k = min(self._ball_k, len(ids))
      dc, near = tree.query(p, k=k)
      dc, near = dc.reshape(n, k), near.reshape(n, k)
      found = dc <= bound[:, None]
      owner, local = np.nonzero(found)[0], near[found]
      full = np.nonzero(found[:, -1])[0]
      if len(full) and k < len(ids):
        more_owner, more_local = _flatten(tree.query_ball_point(p[full], bound[full],
                                                                return_sorted=False))
        owner = np.concatenate([owner[~np.isin(owner, full)], full[more_owner]])
        local = np.concatenate([local[~np.isin(np.nonzero(found)[0], full)], more_local])
      if len(owner) == 0:
        continue
      d, q = self._measure(p, owner, ids[local])
      order = np.lexsort((d, owner))               # per point, the nearest first
      first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
      pts = owner[first]
      better = d[first] < best_d[pts]
      pts, first = pts[better], first[better]
      best_d[pts], best_q[pts], best_t[pts] = d[first], q[first], ids[local[first]]
    return best_d, best_q, best_t


def point_to_mesh(points, vertices, triangles):
  """Exact distance from each point to a triangle mesh, and the closest surface points.

  Args:
    points: [N, 3]; vertices: [V, 3]; triangles: [F, 3] int.

  Returns:
    (distances [N], closest points [N, 3]), in the units of the input.
  """
  dist, closest, _ = MeshDistance(vertices, triangles).query(points)
  return dist, closest


def now_error(pred_vertices, triangles, scan_points, pred_landmarks=None,
              scan_landmarks=None, scale: bool = True, icp_iterations: int = 10,
              landmark_alignment: bool = True, tolerance: float = 1e-6) -> dict:
  """Scan-to-mesh error after similarity alignment, NoW style.

  1. Similarity (or rigid) transform of the prediction from its landmarks to the
     scan's (NoW: seven points; any L ≥ 3 non-collinear points work; rows with a
     NaN are dropped).
  2. ICP refinement: the closest surface point of every scan point, then the
     similarity transform that maps those surface points onto the scan points;
     until the mean distance improves by less than ``tolerance`` (relative), it
     would grow, or ``icp_iterations`` are done. The iterations use the fast
     candidate-triangle distances (:meth:`MeshDistance.query` with
     ``exact=False``); each step never increases their mean square.
  3. Exact point-to-triangle distances from every scan point to the aligned mesh.

  Args:
    pred_vertices: [V, 3] predicted mesh (mm); triangles: [F, 3].
    scan_points: [N, 3] ground-truth scan points (mm).
    pred_landmarks, scan_landmarks: [L, 3] corresponding landmarks for the initial
      alignment; None skips it (meshes already roughly aligned).
    scale: allow a global scale (NoW does); False = rigid.
    icp_iterations: at most this many refinements (0 = landmarks only).
    landmark_alignment: False ignores the landmarks.
    tolerance: relative improvement of the mean distance below which ICP stops.

  Returns:
    dict: median, mean, std (mm); distances [N] (mm); closest [N, 3] (closest
    points on the aligned mesh); transform (s, R, t) mapping the prediction onto
    the scan; aligned_vertices [V, 3]; icp_iterations (refinements run);
    landmark_distance (mean landmark distance after the initial alignment, mm;
    NaN without landmarks).
  """
  pred = np.asarray(pred_vertices, np.float64)
  scan = np.asarray(scan_points, np.float64).reshape(-1, 3)
  if len(scan) == 0:
    raise ValueError("now_error: the scan has no points")
  transform = (1.0, np.eye(3), np.zeros(3))
  landmark_distance = float("nan")
  if landmark_alignment and pred_landmarks is not None and scan_landmarks is not None:
    pl = np.asarray(pred_landmarks, np.float64)
    sl = np.asarray(scan_landmarks, np.float64)
    if pl.shape != sl.shape or pl.ndim != 2 or pl.shape[1] != 3:
      raise ValueError(f"now_error: landmarks must be two [L, 3] arrays of equal shape, got "
                       f"{pl.shape} and {sl.shape}")
    ok = np.isfinite(pl).all(1) & np.isfinite(sl).all(1)
    if ok.sum() < 3:
      raise ValueError(f"now_error: need at least 3 finite landmark pairs, got {ok.sum()}")
    transform = similarity_transform(pl[ok], sl[ok], scale)
    landmark_distance = float(np.linalg.norm(apply_transform(pl[ok], transform) - sl[ok],
                                             axis=1).mean())
  index = MeshDistance(pred, triangles)

  def measure(tf, exact=False):
    # Distances to the moved mesh = s × distances of the moved-back points.
    d, closest, _ = index.query(invert_transform(scan, tf), exact=exact)
    return tf[0] * d, closest

  # ICP on candidate-triangle distances (upper bounds, fast), the result exact.
  dist, closest = measure(transform)
  iterations = 0
  for _ in range(icp_iterations):
    candidate = similarity_transform(closest, scan, scale)
    new_dist, new_closest = measure(candidate)
    iterations += 1
    if np.mean(new_dist ** 2) > np.mean(dist ** 2):
      break                         # rounding-level increase: keep the better transform
    improvement = np.mean(dist) - np.mean(new_dist)
    transform, dist, closest = candidate, new_dist, new_closest
    if improvement <= tolerance * max(np.mean(dist), 1e-12):
      break
  dist, closest = measure(transform, exact=True)
  return dict(median=float(np.median(dist)), mean=float(np.mean(dist)),
              std=float(np.std(dist)), distances=dist,
              closest=apply_transform(closest, transform), transform=transform,
              aligned_vertices=apply_transform(pred, transform), icp_iterations=iterations,
              landmark_distance=landmark_distance)


def cumulative_error(distances, thresholds: Optional[Sequence[float]] = None,
                     max_error: Optional[float] = None, num: int = 101):
  """The cumulative-error curve: fraction of distances ≤ each threshold.

  Args:
    distances: [N] (mm), pooled over scans.
    thresholds: where to evaluate; default ``num`` points from 0 to ``max_error``.
    max_error: default end of the thresholds: the 99th percentile of the distances
      rounded up to a "nice" number (1, 2, 2.5, 5 × 10^k), at least 1e-3.

  Returns:
    (thresholds [T], fractions [T] in [0, 1]).
  """
  d = np.sort(np.asarray(distances, np.float64).ravel())
  if thresholds is None:
    if max_error is None:
      max_error = nice_ceil(np.percentile(d, 99) if len(d) else 1.0)
    thresholds = np.linspace(0.0, max_error, num)
  thresholds = np.asarray(thresholds, np.float64)
  if len(d) == 0:
    return thresholds, np.zeros_like(thresholds)
  return thresholds, np.searchsorted(d, thresholds, side="right") / len(d)


def nice_ceil(x: float) -> float:
  """The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ x (at least 1e-3)."""
  x = max(float(x), 1e-3)
  k = np.floor(np.log10(x))
  for m in (1.0, 2.0, 2.5, 5.0, 10.0):
    if m * 10 ** k >= x * (1 - 1e-12):
      return float(m * 10 ** k)
  return float(10 ** (k + 1))


def summary(distances) -> dict:
  """median, mean, std (and count) of pooled distances (mm)."""
  d = np.asarray(distances, np.float64).ravel()
  if len(d) == 0:
    return dict(median=float("nan"), mean=float("nan"), std=float("nan"), count=0)
  return dict(median=float(np.median(d)), mean=float(np.mean(d)), std=float(np.std(d)),
              count=int(len(d)))
