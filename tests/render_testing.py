"""Test helpers for the renderer: small meshes and a brute-force NumPy rasterizer."""

import numpy as np

from focus_jax.render.camera import Intrinsics


def icosphere(subdivisions: int = 1):
  """Unit icosphere: ([V, 3] float64, [F, 3] int32), outward normals CCW."""
  t = (1.0 + 5 ** 0.5) / 2.0
  verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
           (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
  faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9),
           (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2),
           (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10),
           (8, 6, 7), (9, 8, 1)]
  verts = [np.array(v, float) / np.linalg.norm(v) for v in verts]
  for _ in range(subdivisions):
    cache, new_faces = {}, []
    def mid(a, b):
      key = (min(a, b), max(a, b))
      if key not in cache:
        m = verts[a] + verts[b]
        verts.append(m / np.linalg.norm(m))
        cache[key] = len(verts) - 1
      return cache[key]
    for a, b, c in faces:
      ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
      new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
    faces = new_faces
  return np.array(verts), np.array(faces, np.int32)


def grid(n: int, size: float = 2.0):
  """A flat n x n-quad grid in the xy-plane centred at 0, CCW seen from +z."""
  xs = np.linspace(-size / 2, size / 2, n + 1)
  xx, yy = np.meshgrid(xs, xs)
  verts = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], -1)
  idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
  a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
  faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3),
                          np.stack([a, c, d], -1).reshape(-1, 3)])
  return verts, faces.astype(np.int32)


def rotation(rx, ry, rz):
  cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
  mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return mx @ my @ mz


def to_camera_space(verts, scale, rot, depth):
  """Model (y up, z towards viewer) -> camera (y down, z forward) at ``depth``."""
  v = verts @ rot.T * scale
  return np.stack([v[:, 0], -v[:, 1], depth - v[:, 2]], -1)


def pixel_rays(intr: Intrinsics):
  cols = (np.arange(intr.width) + 0.5 - intr.cx) / intr.focal
  rows = (np.arange(intr.height) + 0.5 - intr.cy) / intr.focal
  return np.meshgrid(cols, rows)


def reference_rasterize(points, triangles, intr: Intrinsics, cull_backfaces=False, near=1.0):
  """Brute force in float64: every pixel against every triangle.

  Returns (triangle_id [H, W] with -1 background, depth [H, W], bary [H, W, 3]).
  """
  points = np.asarray(points, np.float64)
  dx, dy = pixel_rays(intr)
  dx, dy = dx.reshape(-1, 1, 1), dy.reshape(-1, 1, 1)
  p = points[np.asarray(triangles)][None]                     # [1, F, 3, 3]
  # Direct 3x3 determinants det[P_{i+1}, P_{i+2}, d] (an independent formula).
  d = np.stack(np.broadcast_arrays(dx[..., 0], dy[..., 0], np.ones_like(dx[..., 0])), -1)
  d = np.broadcast_to(d[:, :, None, :], (d.shape[0], p.shape[1], 1, 3))
  e = np.stack([np.linalg.det(np.concatenate(
      [np.broadcast_to(p[:, :, [(i + 1) % 3, (i + 2) % 3], :], d.shape[:2] + (2, 3)), d], 2))
      for i in range(3)], -1)                                 # [N, F, 3]
  total = e.sum(-1)
  with np.errstate(all="ignore"):
    bary = e / total[..., None]
    depth = (bary * p[..., 2]).sum(-1)
  cov = ((e >= 0).all(-1) | (e <= 0).all(-1)) & (total != 0) & (depth >= near)
  cov &= np.isfinite(depth)
  if cull_backfaces:
    cov &= total < 0
  zz = np.where(cov, depth, np.inf)
  tid = np.argmin(zz, axis=1)                                 # first (smallest id) on ties
  hit = np.isfinite(zz.min(axis=1))
  n = np.arange(tid.size)
  out_b = np.where(hit[:, None], bary[n, tid], 0.0)
  shape = (intr.height, intr.width)
  return (np.where(hit, tid, -1).reshape(shape), np.where(hit, zz[n, tid], 0.0).reshape(shape),
          out_b.reshape(shape + (3,)))
