"""Screen-space geometry shared by the pure-JAX rasterizers (visibility.py,
interpolation.py, antialiasing.py, soft.py).

Geometry enters in **camera space** ([V, 3] mm, x right, y down, z = depth, see
:mod:`focus_jax.render.camera`) together with the :class:`Intrinsics`, so that
triangles that cross or lie behind the camera plane are clipped exactly instead
of being projected to garbage. Pixel (row i, col j) covers [j, j+1) x [i, i+1);
it is sampled at its centre (j + 0.5, i + 0.5).

Edge functions are homogeneous (Olano & Greer 1997): for the viewing ray
``d = ((x - cx)/f, (y - cy)/f, 1)`` of a pixel and a triangle with camera-space
vertices P0, P1, P2, ``e_i = det[P_{i+1}, P_{i+2}, d]``. The ray meets the
triangle's plane at barycentrics ``b = e / sum(e)`` (already perspective-correct)
and depth ``z = sum(b_i z_i)``; the pixel is covered iff all ``e_i`` have the same
sign and ``z >= near``. The sign of ``sum(e)`` gives the facing: negative means
front-facing (counter-clockwise in model space seen from the front, which is
clockwise on the y-down image). ``e_i`` is evaluated as the 2-D cross product of
``P_j.xy - P_j.z * d.xy`` (an exact rewrite), which stays accurate in float32
for small, distant triangles.

A batch is one flat problem (B * F triangles into B * H * W pixels, vertex rows
``b * V + v``), and per-triangle and per-pixel math is written on separate [N]
components (x, y, z of each vertex) with scalar gathers; the reasons (XLA:CPU,
where this code is the fallback) are in :mod:`focus_jax.render.cpu_kernels`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from focus_jax.render.camera import Intrinsics

# Bounding boxes are widened by this much (px) so that float rounding in the
# projection never drops a pixel centre that the exact edge test would accept.
_BBOX_SLACK = 1e-3


def pixel_rays(intrinsics: Intrinsics):
  """Viewing-ray x and y slopes of all pixel centres: two [H, W] arrays."""
  cols = (jnp.arange(intrinsics.width, dtype=jnp.float32) + 0.5 - intrinsics.cx) / intrinsics.focal
  rows = (jnp.arange(intrinsics.height, dtype=jnp.float32) + 0.5 - intrinsics.cy) / intrinsics.focal
  dx = jnp.broadcast_to(cols[None, :], (intrinsics.height, intrinsics.width))
  dy = jnp.broadcast_to(rows[:, None], (intrinsics.height, intrinsics.width))
  return dx, dy


def edges_soa(x, y, z, dx, dy):
  """Homogeneous edge functions ``e_i = det[P_{i+1}, P_{i+2}, d]`` on separate
  components.

  Args:
    x, y, z: 3-tuples of [...] vertex coordinates; dx, dy: [...] ray slopes.

  Returns:
    3-tuple of [...] edge functions.
  """
  ax = [x[k] - z[k] * dx for k in range(3)]
  ay = [y[k] - z[k] * dy for k in range(3)]
  cross = lambda i, j: ax[i] * ay[j] - ay[i] * ax[j]
  return cross(1, 2), cross(2, 0), cross(0, 1)


def gather(table, index):
  """table.reshape(-1)[index] for in-bounds flat indices."""
  return table.reshape(-1).at[index].get(mode="promise_in_bounds")


def columns(x):
  """The last axis of ``x`` [..., K] as K flat [N] arrays."""
  return tuple(x[..., k].reshape(-1) for k in range(x.shape[-1]))


def screen_bounds(p, intrinsics: Intrinsics, near, pad=0.0):
  """Pixel-centre ranges covered by each triangle's near-clipped bounding box.

  Args:
    p: [F, 3, 3] camera-space triangles.
    near: near-plane depth in mm; the part of a triangle in front of it counts.
    pad: extra margin in pixels around the box (soft rasterization).

  Returns:
    (col0, row0, ncols, nrows): [F] int32 each; ``ncols * nrows`` is 0 for a
    triangle that is entirely behind the near plane or outside the image.
  """
  # Written on [F] components throughout (see edges_soa).
  f = intrinsics.focal
  z = [p[:, k, 2] for k in range(3)]
  in_front = [zk >= near for zk in z]
  out = []
  for axis, (c, size) in enumerate(((intrinsics.cx, intrinsics.width),
                                    (intrinsics.cy, intrinsics.height))):
    u = [p[:, k, axis] for k in range(3)]
    lo = hi = None
    for k in range(3):
      n = (k + 1) % 3
      proj = f * u[k] / jnp.where(in_front[k], z[k], 1.0) + c
      # Where the edge k -> k+1 crosses the near plane.
      crosses = in_front[k] != in_front[n]
      t = (near - z[k]) / jnp.where(crosses, z[n] - z[k], 1.0)
      cut = f * (u[k] + t * (u[n] - u[k])) / near + c
      for point, ok in ((proj, in_front[k]), (cut, crosses)):
        ok = ok & jnp.isfinite(point)
        lo_k = jnp.where(ok, point, jnp.inf)
        hi_k = jnp.where(ok, point, -jnp.inf)
        lo = lo_k if lo is None else jnp.minimum(lo, lo_k)
        hi = hi_k if hi is None else jnp.maximum(hi, hi_k)
    lo = lo - pad - _BBOX_SLACK
    hi = hi + pad + _BBOX_SLACK
    # Pixel centres k + 0.5 inside [lo, hi]; clip before the int cast (inf, huge).
    first = jnp.ceil(jnp.clip(lo - 0.5, -1.0, float(size))).astype(jnp.int32)
    last = jnp.floor(jnp.clip(hi - 0.5, -1.0, float(size))).astype(jnp.int32)
    first = jnp.maximum(first, 0)
    last = jnp.minimum(last, size - 1)
    out.append((first, jnp.maximum(last - first + 1, 0)))
  (col0, ncols), (row0, nrows) = out
  return col0, row0, ncols, nrows


def expand(counts, starts, chunk_start, chunk_size: int):
  """Maps fragment slots ``chunk_start + [0, chunk_size)`` to triangles.

  Args:
    counts: [F] int32 fragments per triangle; starts: [F] exclusive cumsum.

  Returns:
    (triangle [S] int32, local index within the triangle [S] int32, valid [S]).
  """
  num = counts.shape[0]
  ids = jnp.arange(num, dtype=jnp.int32)
  rel = starts - chunk_start
  here = (counts > 0) & (rel >= 0) & (rel < chunk_size)
  # The triangle owning the first slot may have started in an earlier chunk.
  first = jnp.sum(starts + counts <= chunk_start, dtype=jnp.int32)
  mark = jnp.zeros((chunk_size,), jnp.int32).at[0].set(jnp.minimum(first, num - 1))
  mark = mark.at[jnp.where(here, rel, chunk_size)].max(ids, mode="drop")
  tri = jax.lax.cummax(mark)
  slot = chunk_start + jnp.arange(chunk_size, dtype=jnp.int32)
  local = slot - jnp.take(starts, tri)
  total = starts[-1] + counts[-1]
  return tri, local, slot < total


def vertex_coordinates(points, triangle_id, triangles):
  """Camera-space coordinates of the visible triangles' vertices, per pixel.

  Args:
    points: [B, V, 3]; triangle_id: [B, H, W] (-1 = background).

  Returns:
    (x, y, z): 3-tuples (vertex) of [B, H, W] arrays, and a 3-tuple of the
    [B * H * W] int32 row indices of the vertices into flattened [B * V] tables.
  """
  batch, num_vertices = points.shape[:2]
  shape = triangle_id.shape
  vid = jnp.take(triangles, jnp.maximum(triangle_id, 0).reshape(-1), axis=0, mode="clip")
  vid = vid + jnp.repeat(jnp.arange(batch, dtype=jnp.int32) * num_vertices,
                         vid.shape[0] // batch)[:, None]
  vid = columns(vid)
  # One scalar gather per coordinate and vertex with flat indices (rather than
  # a [.., 3, 3] block).
  tables = columns(points)
  coords = tuple(tuple(gather(tables[c], vid[k]).reshape(shape) for k in range(3))
                 for c in range(3))
  return coords, vid
