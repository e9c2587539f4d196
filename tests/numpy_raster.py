"""An independent NumPy z-buffer rasterizer for checking masks of small images.

Deliberately unlike :mod:`focus_jax.render.rasterize` (homogeneous edge functions on
camera-space vertices, fragment expansion, float32): the vertices are projected to
pixels first, every pixel centre in a triangle's bounding box gets screen-space
barycentrics from 2-D signed areas (float64), depth is interpolated
perspective-correctly as 1/z, and the nearest covering triangle wins. It also
reports, per pixel, how close its centre lies to an edge of a triangle that could
cover it, so that callers can allow a disagreement only where the two
rasterizers' rounding can decide it.
"""

import numpy as np


def project(points, intrinsics):
  """[V, 3] camera-space mm -> [V, 2] pixels (x right, y down, centres at +0.5)."""
  points = np.asarray(points, np.float64)
  return (intrinsics.focal * points[:, :2] / points[:, 2:3]
          + np.array([intrinsics.cx, intrinsics.cy]))


def _cross(ax, ay, bx, by):
  return ax * by - ay * bx


def _segment_distance(px, py, ax, ay, bx, by):
  """Distance of points (px, py) to segments a-b (broadcast)."""
  dx, dy = bx - ax, by - ay
  length2 = dx * dx + dy * dy
  with np.errstate(invalid="ignore", divide="ignore"):
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0.0, 1.0)
  t = np.where(length2 > 0, t, 0.0)
  return np.hypot(px - ax - t * dx, py - ay - t * dy)


def rasterize(points, triangles, intrinsics, cull_backfaces=True, near=1.0, margin=1e-3):
  """Brute-force visibility of one image.

  Args:
    points: [V, 3] camera-space vertices (mm), all in front of the near plane (this
      rasterizer does not clip; it raises otherwise).
    triangles: [F, 3] vertex indices, front = counter-clockwise seen from the front,
      which is a negative signed area in y-down pixel coordinates.
    intrinsics: focal, cx, cy, width, height (pixels).
    cull_backfaces: drop triangles seen from the back.
    near: near-plane depth (mm).
    margin: bounding boxes are widened by this many pixels, so that the edge
      distance is also reported for pixel centres just outside a triangle.

  Returns:
    (triangle_id [H, W] int, -1 for background; depth [H, W] mm, 0 for background;
    edge_distance [H, W]: the smallest distance (px) from the pixel centre to an edge
    of a drawn triangle whose widened box contains it, inf where there is none).
  """
  points = np.asarray(points, np.float64)
  triangles = np.asarray(triangles)
  if not np.all(points[:, 2] >= near):
    raise ValueError("numpy_raster.rasterize: vertices behind the near plane (no clipping)")
  height, width = intrinsics.height, intrinsics.width
  xy = project(points, intrinsics)
  p = xy[triangles]                                            # [F, 3, 2]
  z = points[triangles, 2]                                     # [F, 3]
  area = _cross(p[:, 1, 0] - p[:, 0, 0], p[:, 1, 1] - p[:, 0, 1],
                p[:, 2, 0] - p[:, 0, 0], p[:, 2, 1] - p[:, 0, 1])
  drawn = area != 0
  if cull_backfaces:
    drawn &= area < 0
  # Pixel (row i, col j) has its centre at (j + 0.5, i + 0.5).
  col0 = np.clip(np.ceil(p[..., 0].min(1) - margin - 0.5), 0, width).astype(int)
  col1 = np.clip(np.floor(p[..., 0].max(1) + margin - 0.5), -1, width - 1).astype(int)
  row0 = np.clip(np.ceil(p[..., 1].min(1) - margin - 0.5), 0, height).astype(int)
  row1 = np.clip(np.floor(p[..., 1].max(1) + margin - 0.5), -1, height - 1).astype(int)
  ncols = np.where(drawn, np.maximum(col1 - col0 + 1, 0), 0)
  nrows = np.where(drawn, np.maximum(row1 - row0 + 1, 0), 0)
  counts = ncols * nrows
  tri = np.repeat(np.arange(len(triangles)), counts)           # one row per (triangle, pixel)
  local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  col = col0[tri] + local % ncols[tri]
  row = row0[tri] + local // ncols[tri]
  px, py = col + 0.5, row + 0.5
  v = p[tri]                                                   # [N, 3, 2]
  # Barycentric i: signed area of (pixel, v[i+1], v[i+2]) over the triangle's.
  bary = np.stack([_cross(v[:, (i + 1) % 3, 0] - px, v[:, (i + 1) % 3, 1] - py,
                          v[:, (i + 2) % 3, 0] - px, v[:, (i + 2) % 3, 1] - py)
                   for i in range(3)], -1) / area[tri, None]
  inside = np.all(bary >= 0, axis=-1)
  depth = 1.0 / np.sum(bary / z[tri], axis=-1)                 # perspective-correct
  inside &= depth >= near
  edge = np.min(np.stack([_segment_distance(px, py, v[:, i, 0], v[:, i, 1],
                                            v[:, (i + 1) % 3, 0], v[:, (i + 1) % 3, 1])
                          for i in range(3)], -1), axis=-1)
  pixel = row * width + col
  edge_distance = np.full(height * width, np.inf)
  np.minimum.at(edge_distance, pixel, edge)
  # Z-buffer: per pixel the nearest covering triangle (smallest id on ties).
  hit = np.nonzero(inside)[0]
  order = np.lexsort((tri[hit], depth[hit], pixel[hit]))
  hit = hit[order]
  first = np.ones(len(hit), bool)
  first[1:] = pixel[hit][1:] != pixel[hit][:-1]
  hit = hit[first]
  triangle_id = np.full(height * width, -1)
  out_depth = np.zeros(height * width)
  triangle_id[pixel[hit]] = tri[hit]
  out_depth[pixel[hit]] = depth[hit]
  shape = (height, width)
  return triangle_id.reshape(shape), out_depth.reshape(shape), edge_distance.reshape(shape)
