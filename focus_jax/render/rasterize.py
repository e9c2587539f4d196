"""Differentiable rasterization of triangle meshes in JAX (with C++ kernels on CPU).

The design follows nvdiffrast's split of rendering into small primitives:

* :func:`rasterize` — *discrete visibility*: per pixel the front-most triangle id,
  its depth and perspective-correct barycentrics. No gradient flows through it.
* :func:`interpolate` — *differentiable* interpolation of per-vertex attributes.
  The barycentrics are recomputed from the vertex positions of the triangle that
  :func:`rasterize` chose, so gradients reach both attributes and positions.
* :func:`antialias` — analytic silhouette antialiasing (nvdiffrast-style): pixels
  next to a silhouette edge (found from the mesh topology: a boundary edge, or
  one between triangles facing opposite ways) are blended according to where
  the edge crosses the segment between pixel centres, which gives gradients
  w.r.t. silhouette vertices.
* :func:`soft_rasterize` — SoftRas-style probabilistic aggregation of all nearby
  triangles (blur ``sigma``, depth temperature ``gamma``): smooth everywhere.

On the CPU backend each of these runs as a C++ kernel by default
(:mod:`focus_jax.render.cpu_kernels`; ``native=`` chooses per call); the JAX code
below is what runs on GPU/TPU and what the kernels are tested against.

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

Visibility is computed by *fragment expansion*: each triangle gets as many
fragment slots as there are pixel centres in its (clipped, image-clamped)
bounding box; slots are processed in static-size chunks by a ``while_loop``
(almost always one iteration), each chunk doing a scatter-min depth test followed
by a scatter-min of the triangle id among the depth winners, so the depth test is
exact and ties resolve to the smallest triangle id. Work is proportional to the
total bounding-box area, not to triangles x pixels, and triangles of any size are
handled exactly.

All functions take one image's geometry ([V, 3]) or a batch ([B, V, 3]) and work
under ``jit``, ``vmap``, ``grad`` and ``pmap``. On the CPU backend, rasterize,
interpolate and antialias's pair search call the C++ kernels of
:mod:`focus_jax.render.cpu_kernels` (same results; ``native=False`` or
``FOCUS_JAX_NATIVE=0`` selects the JAX code below, which runs on GPU/TPU).

Performance notes (XLA:CPU, which runs gathers and scatters serially): a batch is
processed as one flat problem (B * F triangles into B * H * W pixels, vertex
rows ``b * V + v``) rather than with ``vmap``, whose batched gathers compile to
much slower code; per-triangle and per-pixel math is written on separate [N]
components (x, y, z of each vertex) instead of trailing axes of size 3, which
XLA:CPU does not vectorise; :func:`interpolate` has a hand-written backward pass
(one scalar scatter-add per vertex coordinate and attribute channel, its inputs
formed once); and :func:`antialias` differentiates only a compact list of the
pixel pairs near silhouette edges.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.render import cpu_kernels
from focus_jax.render.camera import Intrinsics

# Triangle ids are int32; a sentinel larger than any id marks "no triangle".
_NO_TRIANGLE = np.iinfo(np.int32).max
# Bounding boxes are widened by this much (px) so that float rounding in the
# projection never drops a pixel centre that the exact edge test would accept.
_BBOX_SLACK = 1e-3
# Width of the per-triangle record gathered by every fragment (see
# _triangle_setup).
_RECORD = 13


@flax.struct.dataclass
class Fragments:
  """Per-pixel visibility of one image (leading batch axes when batched).

  Attributes:
    triangle_id: [H, W] int32, front-most triangle, -1 where no triangle covers
      the pixel centre.
    barycentric: [H, W, 3] float32 perspective-correct barycentrics of the pixel
      centre in that triangle (0 for background), or None when not asked for
      (``rasterize(..., barycentrics=False)``). Not differentiable; use
      :func:`interpolate` for gradients.
    depth: [H, W] float32 camera-space depth (mm) of the visible surface, 0 for
      background.
    mask: [H, W] bool, ``triangle_id >= 0``.
    num_fragments: [] int32, candidate fragments examined (sum of the clipped
      bounding-box areas in pixels); a cost measure.
  """
  triangle_id: jnp.ndarray
  barycentric: jnp.ndarray
  depth: jnp.ndarray
  mask: jnp.ndarray
  num_fragments: jnp.ndarray


# ----------------------------------------------------------------------------
# helpers


def _pixel_rays(intrinsics: Intrinsics):
  """Viewing-ray x and y slopes of all pixel centres: two [H, W] arrays."""
  cols = (jnp.arange(intrinsics.width, dtype=jnp.float32) + 0.5 - intrinsics.cx) / intrinsics.focal
  rows = (jnp.arange(intrinsics.height, dtype=jnp.float32) + 0.5 - intrinsics.cy) / intrinsics.focal
  dx = jnp.broadcast_to(cols[None, :], (intrinsics.height, intrinsics.width))
  dy = jnp.broadcast_to(rows[:, None], (intrinsics.height, intrinsics.width))
  return dx, dy


def _edge_functions(p, dx, dy):
  """Homogeneous edge functions.

  Args:
    p: [..., 3, 3] camera-space triangle vertices (vertex, xyz).
    dx, dy: [...] viewing-ray slopes.

  Returns:
    [..., 3] ``e_i = det[P_{i+1}, P_{i+2}, d]``.
  """
  ax = p[..., 0] - p[..., 2] * dx[..., None]   # [..., 3]
  ay = p[..., 1] - p[..., 2] * dy[..., None]
  def cross(i, j):
    return ax[..., i] * ay[..., j] - ay[..., i] * ax[..., j]
  return jnp.stack([cross(1, 2), cross(2, 0), cross(0, 1)], axis=-1)


def _edges_soa(x, y, z, dx, dy):
  """:func:`_edge_functions` on separate components (XLA:CPU vectorises these
  elementwise chains far better than ones over a trailing axis of size 3).

  Args:
    x, y, z: 3-tuples of [...] vertex coordinates; dx, dy: [...] ray slopes.

  Returns:
    3-tuple of [...] edge functions.
  """
  ax = [x[k] - z[k] * dx for k in range(3)]
  ay = [y[k] - z[k] * dy for k in range(3)]
  cross = lambda i, j: ax[i] * ay[j] - ay[i] * ax[j]
  return cross(1, 2), cross(2, 0), cross(0, 1)


def _gather(table, index):
  """table.reshape(-1)[index] for in-bounds flat indices."""
  return table.reshape(-1).at[index].get(mode="promise_in_bounds")


def _columns(x):
  """The last axis of ``x`` [..., K] as K flat [N] arrays."""
  return tuple(x[..., k].reshape(-1) for k in range(x.shape[-1]))


def _coverage(e, z_vertices, near):
  """Coverage test and depth from edge functions.

  Args:
    e: [..., 3] edge functions; z_vertices: [..., 3] vertex depths; near: mm.

  Returns:
    (covered [...] bool, depth [...] mm, front [...] bool, total [...] sum(e)).
  """
  total = jnp.sum(e, axis=-1)
  same_sign = jnp.all(e >= 0, axis=-1) | jnp.all(e <= 0, axis=-1)
  safe_total = jnp.where(total == 0, 1.0, total)
  depth = jnp.sum(e * z_vertices, axis=-1) / safe_total
  covered = same_sign & (total != 0) & (depth >= near) & jnp.isfinite(depth)
  return covered, depth, total < 0, total


def _screen_bounds(p, intrinsics: Intrinsics, near, pad=0.0):
  """Pixel-centre ranges covered by each triangle's near-clipped bounding box.

  Args:
    p: [F, 3, 3] camera-space triangles.
    near: near-plane depth in mm; the part of a triangle in front of it counts.
    pad: extra margin in pixels around the box (soft rasterization).

  Returns:
    (col0, row0, ncols, nrows): [F] int32 each; ``ncols * nrows`` is 0 for a
    triangle that is entirely behind the near plane or outside the image.
  """
  # Written on [F] components throughout (see _edges_soa).
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


def _triangle_setup(p, intrinsics: Intrinsics, near, cull_backfaces: bool, pad=0.0):
  """Per-triangle screen-space setup shared by all rasterization paths.

  The edge functions are linear in pixel coordinates; they are stored relative
  to the first pixel centre of the triangle's bounding box (an origin near the
  triangle keeps float32 accurate): ``E_i(col, row) = e0_i + gx_i * (col - col0) +
  gy_i * (row - row0)``. ``sum_i E_i z_i`` is the constant ``det[P0, P1, P2]``, so
  the inverse depth ``1 / z = sum(E) / det`` is linear too.

  Args:
    p: [F, 3, 3] camera-space triangles (no gradient needed).
    pad: bounding-box margin in pixels.

  Returns:
    (record: _RECORD-tuple of [F] float32: e0 (3), gx (3), gy (3), 1/det, col0,
     row0, ncols; ncols [F] int32, nrows [F] int32 with ncols * nrows = 0 for
     skipped triangles).
  """
  col0, row0, ncols, nrows = _screen_bounds(p, intrinsics, near, pad)
  f = intrinsics.focal
  dx0 = (col0.astype(jnp.float32) + 0.5 - intrinsics.cx) / f
  dy0 = (row0.astype(jnp.float32) + 0.5 - intrinsics.cy) / f
  x, y, z = ([p[:, k, c] for k in range(3)] for c in range(3))
  e0 = _edges_soa(x, y, z, dx0, dy0)                               # 3 x [F]
  gx = [(z[(i + 2) % 3] * y[(i + 1) % 3] - z[(i + 1) % 3] * y[(i + 2) % 3]) / f
        for i in range(3)]                                         # d E_i / d col
  gy = [(z[(i + 1) % 3] * x[(i + 2) % 3] - z[(i + 2) % 3] * x[(i + 1) % 3]) / f
        for i in range(3)]                                         # d E_i / d row
  det = e0[0] * z[0] + e0[1] * z[1] + e0[2] * z[2]
  # Degenerate triangles (zero area, or whose plane passes through the camera
  # centre so that they are seen edge-on) cover no pixel centre.
  a = [x[1] - x[0], y[1] - y[0], z[1] - z[0]]
  b = [x[2] - x[0], y[2] - y[0], z[2] - z[0]]
  normal = [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
  sq = lambda v: v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
  nn = jnp.sqrt(sq(normal))
  edges = jnp.sqrt(sq(a) * sq(b))
  plane = x[0] * normal[0] + y[0] * normal[1] + z[0] * normal[2]
  ok = (nn > 1e-6 * edges) & (jnp.abs(plane) > 1e-6 * nn * jnp.sqrt(sq([x[0], y[0], z[0]])))
  for v in x + y + z:
    ok &= jnp.isfinite(v)
  ok &= det != 0
  if cull_backfaces:
    # Front-facing iff det < 0; near-clipped triangles are left to the
    # per-fragment test.
    ok &= (plane < 0) | (z[0] < near) | (z[1] < near) | (z[2] < near)
  ncols = jnp.where(ok, ncols, 0)
  nrows = jnp.where(ok, nrows, 0)
  inv_det = 1.0 / jnp.where(ok, det, 1.0)
  # A tuple of [F] arrays rather than one [F, 13] array: XLA would fuse the
  # whole setup into the stacking once per column.
  record = tuple(e0) + tuple(gx) + tuple(gy) + (
      inv_det, col0.astype(jnp.float32), row0.astype(jnp.float32),
      jnp.maximum(ncols, 1).astype(jnp.float32))
  return record, ncols, nrows


def _fragments(rec, dcol, drow, near, cull_backfaces: bool):
  """Coverage and inverse depth of fragments at offsets from the record origin.

  Args:
    rec: _RECORD-tuple of triangle record fields (broadcastable against the
      offsets), see :func:`_triangle_setup`.
    dcol, drow: [...] float32 pixel offsets from (col0, row0).

  Returns:
    (covered [...] bool, inverse depth [...] in 1/mm).
  """
  # Component by component: XLA:CPU vectorises elementwise chains over the
  # fragment axis, not over a trailing axis of size 3.
  e = [rec[i] + rec[3 + i] * dcol + rec[6 + i] * drow for i in range(3)]
  total = e[0] + e[1] + e[2]
  inv_z = total * rec[9]
  covered = (((e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0))
             | ((e[0] <= 0) & (e[1] <= 0) & (e[2] <= 0)))
  covered &= (inv_z > 0) & (inv_z <= 1.0 / near)
  if cull_backfaces:
    covered &= total < 0
  return covered, inv_z


def _zbuffer_merge(pix, inv_z, tri, zbuf, idbuf):
  """Exact depth test of a batch of fragments merged into the buffers.

  Args:
    pix: [N] int32 flat pixel index, ``num_pixels`` for fragments to drop.
    inv_z: [N] inverse depths; tri: [N] int32 triangle ids.
    zbuf: [P] running maximum inverse depth; idbuf: [P] int32 running ids.
  """
  num_pixels = zbuf.shape[0]
  zc = jnp.zeros((num_pixels,), jnp.float32).at[pix].max(inv_z, mode="drop")
  winner = inv_z == jnp.take(zc, jnp.minimum(pix, num_pixels - 1))
  idc = jnp.full((num_pixels,), _NO_TRIANGLE, jnp.int32).at[
      jnp.where(winner, pix, num_pixels)].min(tri, mode="drop")
  take = (zc > zbuf) | ((zc == zbuf) & (idc < idbuf))
  return jnp.where(take, zc, zbuf), jnp.where(take, idc, idbuf)


def _expand(counts, starts, chunk_start, chunk_size: int):
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


def default_chunk_size(intrinsics: Intrinsics) -> int:
  """Fragment slots per iteration of the large-triangle path (a static shape)."""
  return max(4096, intrinsics.width * intrinsics.height // 2)


# ----------------------------------------------------------------------------
# rasterize


@functools.partial(jax.jit, static_argnames=("intrinsics", "cull_backfaces", "near",
                                             "chunk_size", "footprint", "native",
                                             "barycentrics"))
def _rasterize_batch(points, triangles, intrinsics: Intrinsics, cull_backfaces: bool,
                     near: float, chunk_size: Optional[int], footprint: int,
                     native: bool, barycentrics: bool = True) -> Fragments:
  """Rasterizes a batch [B, V, 3] as one problem of B * F triangles drawn into
  B * H * W pixels (no vmap: XLA:CPU compiles batched gathers and scatters
  poorly). Global triangle ids ``b * F + f`` keep the smaller-id tie-break.
  ``native``: the C++ kernel of :mod:`cpu_kernels` instead (CPU only)."""
  # Visibility is computed in float32 whatever the input precision (as the kernel
  # does): the z-buffer scatters are float32, and float64 inverse depths never
  # equal their rounded maxima, which left float64 images empty.
  points = jax.lax.stop_gradient(points).astype(jnp.float32)
  if native:
    tid, bary, depth, num_fragments = cpu_kernels.rasterize(points, triangles, intrinsics,
                                                            near, cull_backfaces, barycentrics)
    return Fragments(triangle_id=tid, barycentric=bary, depth=depth, mask=tid >= 0,
                     num_fragments=num_fragments)
  batch, num_vertices = points.shape[:2]
  width, height = intrinsics.width, intrinsics.height
  num_pixels = batch * width * height
  chunk = batch * (chunk_size or default_chunk_size(intrinsics))
  num_faces = triangles.shape[0]
  image = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), num_faces)       # [B * F]
  all_triangles = (triangles[None] + (jnp.arange(batch, dtype=jnp.int32)
                                      * num_vertices)[:, None, None]).reshape(-1, 3)
  p = jnp.take(points.reshape(-1, 3), all_triangles, axis=0, mode="clip")   # [B * F, 3, 3]
  num_tri = p.shape[0]
  record, ncols, nrows = _triangle_setup(p, intrinsics, near, cull_backfaces)
  ids = jnp.arange(num_tri, dtype=jnp.int32)
  base = image * (width * height)
  col0 = record[10].astype(jnp.int32)
  row0 = record[11].astype(jnp.int32)
  counts = ncols * nrows

  # Small triangles: a fixed footprint x footprint block of pixels each.
  k = footprint
  small = (ncols <= k) & (nrows <= k)
  dc = jnp.tile(jnp.arange(k, dtype=jnp.int32), k)      # [k*k]
  dr = jnp.repeat(jnp.arange(k, dtype=jnp.int32), k)
  covered, inv_z = _fragments([r[:, None] for r in record], dc.astype(jnp.float32)[None, :],
                              dr.astype(jnp.float32)[None, :], near, cull_backfaces)
  covered &= small[:, None] & (dc[None, :] < ncols[:, None]) & (dr[None, :] < nrows[:, None])
  pix = jnp.where(covered, base[:, None] + (row0[:, None] + dr) * width + col0[:, None] + dc,
                  num_pixels)
  zbuf, idbuf = _zbuffer_merge(
      pix.reshape(-1), inv_z.reshape(-1), jnp.broadcast_to(ids[:, None], pix.shape).reshape(-1),
      jnp.zeros((num_pixels,), jnp.float32), jnp.full((num_pixels,), _NO_TRIANGLE, jnp.int32))

  # Larger triangles: one slot per bounding-box pixel, in chunks.
  big_counts = jnp.where(small, 0, counts)
  big_starts = jnp.cumsum(big_counts) - big_counts
  total = big_starts[-1] + big_counts[-1]

  def body(state):
    index, zbuf, idbuf = state
    tri, local, valid = _expand(big_counts, big_starts, index * chunk, chunk)
    rec = [_gather(r, tri) for r in record]           # _RECORD x [S]
    ncol = rec[12].astype(jnp.int32)
    drow = local // ncol
    dcol = local - drow * ncol
    covered, inv_z = _fragments(rec, dcol.astype(jnp.float32), drow.astype(jnp.float32),
                                near, cull_backfaces)
    covered &= valid
    col = rec[10].astype(jnp.int32) + dcol
    row = rec[11].astype(jnp.int32) + drow
    pix = jnp.where(covered, _gather(base, tri) + row * width + col, num_pixels)
    zbuf, idbuf = _zbuffer_merge(pix, inv_z, tri, zbuf, idbuf)
    return index + 1, zbuf, idbuf

  num_chunks = (total + chunk - 1) // chunk
  _, zbuf, idbuf = jax.lax.while_loop(lambda s: s[0] < num_chunks, body,
                                      (jnp.int32(0), zbuf, idbuf))

  shape = (batch, height, width)
  mask = idbuf != _NO_TRIANGLE
  image_of_pixel = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), height * width)
  tid = jnp.where(mask, idbuf - image_of_pixel * num_faces, -1).reshape(shape)
  mask = mask.reshape(shape)
  bary = (jnp.stack(_barycentrics_batch(points, tid, triangles, intrinsics)[0], -1)
          if barycentrics else None)
  depth = jnp.where(mask, 1.0 / jnp.where(mask, zbuf.reshape(shape), 1.0), 0.0)
  return Fragments(triangle_id=tid, barycentric=bary, depth=depth, mask=mask,
                   num_fragments=jnp.sum(counts.reshape(batch, num_faces), axis=1))


def rasterize(points, triangles, intrinsics: Intrinsics, *, cull_backfaces: bool = False,
              near: float = 1.0, chunk_size: Optional[int] = None,
              footprint: int = 2, native: Optional[bool] = None,
              barycentrics: bool = True) -> Fragments:
  """Hard rasterization: the front-most triangle at every pixel centre.

  Args:
    points: [V, 3] or [B, V, 3] camera-space vertex positions (mm).
    triangles: [F, 3] int32 vertex indices (shared across the batch).
    intrinsics: the camera (static), which also fixes the image size H x W.
    cull_backfaces: drop triangles seen from the back (clockwise in model
      space seen from the camera).
    near: near-plane depth (mm); surface closer than this is clipped away.
    chunk_size: fragment slots per iteration of the large-triangle loop
      (static), default H*W/2. Larger uses more memory; smaller means more
      iterations.
    footprint: triangles whose bounding box holds at most footprint x footprint
      pixel centres take the fixed-size fast path (static).
    native: use the C++ CPU kernel (:mod:`focus_jax.render.cpu_kernels`; same
      result) instead of the pure-JAX code. None (default): when JAX's default
      backend is the CPU, ``points`` are float32 and the kernel is available.
      ``chunk_size`` and ``footprint`` only tune the JAX code.
    barycentrics: also return the barycentrics; False leaves
      ``Fragments.barycentric`` None and spares their cost (e.g. when only
      :func:`interpolate`, which recomputes them, needs the fragments).

  Returns:
    :class:`Fragments` with [H, W] (or [B, H, W]) buffers. Exact depth test,
    ties resolved to the smaller triangle id. No gradients (use
    :func:`interpolate`).
  """
  native = cpu_kernels.resolve(native, points)
  kwargs = dict(intrinsics=intrinsics, cull_backfaces=cull_backfaces, near=near,
                chunk_size=chunk_size, footprint=footprint, native=native,
                barycentrics=barycentrics)
  if points.ndim == 2:
    return jax.tree_util.tree_map(lambda x: x[0],
                                  _rasterize_batch(points[None], triangles, **kwargs))
  return _rasterize_batch(points, triangles, **kwargs)


# ----------------------------------------------------------------------------
# interpolate


def _vertex_coordinates(points, triangle_id, triangles):
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
  vid = _columns(vid)
  # One scalar gather per coordinate and vertex with flat indices (rather than
  # a [.., 3, 3] block): XLA:CPU runs those fastest, and their transposes in
  # the backward pass are cheap scalar scatter-adds.
  tables = _columns(points)
  coords = tuple(tuple(_gather(tables[c], vid[k]).reshape(shape) for k in range(3))
                 for c in range(3))
  return coords, vid


def _barycentrics_batch(points, triangle_id, triangles, intrinsics: Intrinsics):
  """Perspective-correct barycentrics: 3-tuple of [B, H, W] (0 on background),
  and the vertex rows of :func:`_vertex_coordinates`."""
  coords, vid = _vertex_coordinates(points, triangle_id, triangles)
  dx, dy = _pixel_rays(intrinsics)
  e = _edges_soa(*coords, dx, dy)
  total = e[0] + e[1] + e[2]
  ok = (triangle_id >= 0) & (total != 0)
  safe = jnp.where(ok, total, 1.0)
  return tuple(jnp.where(ok, ek / safe, 0.0) for ek in e), vid


@functools.partial(jax.jit, static_argnames=("intrinsics",))
def _barycentrics_jit(points, triangle_id, triangles, intrinsics):
  return jnp.stack(_barycentrics_batch(points, triangle_id, triangles, intrinsics)[0], -1)


def barycentrics(points, triangles, fragments: Fragments, intrinsics: Intrinsics):
  """Differentiable perspective-correct barycentrics of every pixel centre.

  Args:
    points: [(B,) V, 3] camera-space vertices (mm); gradients flow to them.
    triangles: [F, 3] int32.
    fragments: the output of :func:`rasterize` for these points.

  Returns:
    [(B,) H, W, 3], zero on background pixels.
  """
  if points.ndim == 2:
    return _barycentrics_jit(points[None], fragments.triangle_id[None], triangles,
                             intrinsics=intrinsics)[0]
  return _barycentrics_jit(points, fragments.triangle_id, triangles, intrinsics=intrinsics)


def _interpolate_forward(attributes, points, triangle_id, triangles, intrinsics):
  """Interpolated channels and what the backward pass needs.

  Returns:
    (C-list of [B, H, W] channels, (vid, coords, bary, total, gathered attributes)).
  """
  shape = triangle_id.shape
  coords, vid = _vertex_coordinates(points, triangle_id, triangles)
  dx, dy = _pixel_rays(intrinsics)
  e = _edges_soa(*coords, dx, dy)
  total = e[0] + e[1] + e[2]
  ok = (triangle_id >= 0) & (total != 0)
  total = jnp.where(ok, total, jnp.inf)
  # A division (not a multiplication by 1 / total): XLA:CPU does not duplicate
  # divisions into their consumers, so the barycentrics are computed once
  # instead of inside every channel's fusion.
  bary = tuple(ek / total for ek in e)
  # Channel by channel on [B, H, W] arrays: XLA:CPU handles these much better
  # than [..., C] blocks with a small minor dimension.
  values = [tuple(_gather(table, vid[k]).reshape(shape) for k in range(3))
            for table in _columns(attributes)]
  channels = [bary[0] * v[0] + bary[1] * v[1] + bary[2] * v[2] for v in values]
  return channels, (vid, coords, bary, total, values)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _interpolate_core(attributes, points, triangle_id, triangles, intrinsics, native):
  if native:
    return cpu_kernels.interpolate(attributes, points, triangle_id, triangles, intrinsics)
  channels, _ = _interpolate_forward(attributes, points, triangle_id, triangles, intrinsics)
  return jnp.stack(channels, -1)


def _interpolate_fwd(attributes, points, triangle_id, triangles, intrinsics, native):
  if native:
    out = cpu_kernels.interpolate(attributes, points, triangle_id, triangles, intrinsics)
    return out, (attributes, points, triangle_id, triangles)
  channels, res = _interpolate_forward(attributes, points, triangle_id, triangles, intrinsics)
  # The inputs themselves (alive anyway) carry the shapes and dtypes.
  return jnp.stack(channels, -1), (res, attributes, points)


def _interpolate_bwd(intrinsics, native, saved, g):
  """Hand-written transpose: the per-pixel gradients of the 9 vertex coordinates
  and 3 C attribute values are formed elementwise and materialised, then each
  goes through one scalar scatter-add. (Left to autodiff, XLA:CPU fuses the
  whole edge-function chain into a dozen serial scatter loops, ~10x slower.)
  The C++ kernel does the same per pixel, in one pass."""
  if native:
    attributes, points, triangle_id, triangles = saved
    d_attributes, d_points = cpu_kernels.interpolate_grad(attributes, points, triangle_id,
                                                          triangles, intrinsics, g)
    return (d_attributes.astype(attributes.dtype), d_points.astype(points.dtype), None, None)
  (vid, coords, bary, total, values), attr_spec, point_spec = saved
  num_rows = attr_spec.shape[0] * attr_spec.shape[1]
  dx, dy = _pixel_rays(intrinsics)
  gc = [g[..., c] for c in range(g.shape[-1])]
  d_bary = [sum(gc[c] * values[c][k] for c in range(len(gc))) for k in range(3)]
  mean = d_bary[0] * bary[0] + d_bary[1] * bary[1] + d_bary[2] * bary[2]
  # Divisions again keep XLA from recomputing this in all 9 scatter inputs.
  de = [(d_bary[k] - mean) / total for k in range(3)]
  x, y, z = coords
  ax = [x[k] - z[k] * dx for k in range(3)]
  ay = [y[k] - z[k] * dy for k in range(3)]
  # e_i = ax_{i+1} ay_{i+2} - ay_{i+1} ax_{i+2}
  dax = [de[2] * ay[1] - de[1] * ay[2], de[0] * ay[2] - de[2] * ay[0],
         de[1] * ay[0] - de[0] * ay[1]]
  day = [de[1] * ax[2] - de[2] * ax[1], de[2] * ax[0] - de[0] * ax[2],
         de[0] * ax[1] - de[1] * ax[0]]
  dz = [-(dax[k] * dx + day[k] * dy) for k in range(3)]
  d_attr = [[bary[k] * gc[c] for k in range(3)] for c in range(len(gc))]

  def scatter(parts, dtype):
    out = jnp.zeros((num_rows,), dtype)
    for k in range(3):
      out = out.at[vid[k]].add(parts[k].reshape(-1), mode="promise_in_bounds")
    return out

  d_points = jnp.stack([scatter(d, point_spec.dtype) for d in (dax, day, dz)], -1)
  d_attributes = jnp.stack([scatter(d, attr_spec.dtype) for d in d_attr], -1)
  return (d_attributes.reshape(attr_spec.shape), d_points.reshape(point_spec.shape), None, None)


_interpolate_core.defvjp(_interpolate_fwd, _interpolate_bwd)


@functools.partial(jax.jit, static_argnames=("intrinsics", "native"))
def _interpolate_batch(attributes, points, triangle_id, triangles, intrinsics, native):
  return _interpolate_core(attributes, points, triangle_id, triangles, intrinsics, native)


def interpolate(attributes, points, triangles, fragments: Fragments,
                intrinsics: Intrinsics, *, native: Optional[bool] = None):
  """Interpolates per-vertex attributes at every pixel (differentiable).

  Barycentrics are recomputed from ``points`` for the triangle chosen by
  :func:`rasterize`, so gradients flow to the attributes *and* to the vertex
  positions (not across visibility changes: see :func:`antialias`).

  Args:
    attributes: [(B,) V, C] per-vertex values (colour, normals, uv, ...).
    points: [(B,) V, 3] camera-space vertex positions (mm).
    triangles: [F, 3] int32.
    fragments: from :func:`rasterize`.
    intrinsics: the camera.
    native: the C++ CPU kernels (forward and backward) instead of the JAX code;
      None: as in :func:`rasterize`.

  Returns:
    [(B,) H, W, C] interpolated attributes, 0 on background pixels.
  """
  native = cpu_kernels.resolve(native, attributes, points)
  if attributes.ndim == 2 and points.ndim == 3:
    attributes = jnp.broadcast_to(attributes, (points.shape[0],) + attributes.shape)
  if attributes.ndim == 2:
    return _interpolate_batch(attributes[None], points[None], fragments.triangle_id[None],
                              triangles, intrinsics=intrinsics, native=native)[0]
  return _interpolate_batch(attributes, points, fragments.triangle_id, triangles,
                            intrinsics=intrinsics, native=native)


# ----------------------------------------------------------------------------
# antialias


def _pair_edges(pv, a_front, dxa, dya, step, axis):
  """Silhouette-edge crossing of the segment between two adjacent pixel centres.

  Args:
    pv: 3-tuple (x, y, z) of 3-tuples of [...] camera-space vertex coordinates
      of the front (occluding) triangle.
    a_front: [...] bool, the first pixel of the pair (left / top) is in front.
    dxa, dya: [...] viewing-ray slopes of the first pixel's centre.
    step: ray-slope increment of one pixel (1 / focal).
    axis: 1 for horizontal pairs, 0 for vertical ones (static), or a [...]
      bool array, True where the pair is vertical.

  Returns:
    (t [...]: fraction of the segment, from the inner pixel centre, at which it
     leaves the front triangle (inf if it does not); edge [...] int32 that edge
     (0, 1, 2 = opposite vertex 0, 1, 2); ok [...] bool: the edge is crossed and
     is the one this axis handles).
  """
  sign_step = jnp.where(a_front, 1.0, -1.0)
  mixed = not isinstance(axis, int)
  if mixed:
    # Mixed list: ``axis`` is a [...] bool array, True for vertical pairs; the
    # offsets below are exactly those of the two static cases.
    hx = jnp.where(axis, 0.0, step)
    hy = jnp.where(axis, step, 0.0)
    dx_in = dxa + jnp.where(a_front, 0.0, hx)
    dy_in = dya + jnp.where(a_front, 0.0, hy)
    e_out = _edges_soa(*pv, dx_in + sign_step * hx, dy_in + sign_step * hy)
    e_perp = _edges_soa(*pv, dx_in + hy, dy_in + hx)
  elif axis == 1:
    dx_in = dxa + jnp.where(a_front, 0.0, step)
    dy_in = dya
    e_out = _edges_soa(*pv, dx_in + sign_step * step, dy_in)
    e_perp = _edges_soa(*pv, dx_in, dy_in + step)
  elif axis == 0:
    dx_in = dxa
    dy_in = dya + jnp.where(a_front, 0.0, step)
    e_out = _edges_soa(*pv, dx_in, dy_in + sign_step * step)
    e_perp = _edges_soa(*pv, dx_in + step, dy_in)
  e_in = _edges_soa(*pv, dx_in, dy_in)
  orient = jax.lax.stop_gradient(jnp.where(e_in[0] + e_in[1] + e_in[2] < 0, -1.0, 1.0))
  ei = [e * orient for e in e_in]
  eo = [e * orient for e in e_out]
  ep = [e * orient for e in e_perp]
  t_all = []
  for k in range(3):
    exits = (eo[k] < 0) & (ei[k] >= 0)
    t_all.append(jnp.where(exits, ei[k] / jnp.where(exits, ei[k] - eo[k], 1.0), jnp.inf))
  # First minimum wins, as argmin.
  first01 = t_all[1] < t_all[0]
  t01 = jnp.where(first01, t_all[1], t_all[0])
  second = t_all[2] < t01
  t = jnp.where(second, t_all[2], t01)
  edge = jnp.where(second, 2, jnp.where(first01, 1, 0))
  pick = lambda v: jnp.where(second, v[2], jnp.where(first01, v[1], v[0]))
  along = jnp.abs(pick(eo) - pick(ei))
  across = jnp.abs(pick(ep) - pick(ei))
  if mixed:
    ok = jnp.where(axis, along > across, along >= across)
  elif axis == 1:
    ok = along >= across
  else:
    ok = along > across
  return t, edge, ok & jnp.isfinite(t)



def _edge_neighbours_numpy(triangles: np.ndarray) -> np.ndarray:
  """[F, 3] int32: the triangle across edge k of each triangle, or -1.

  Edge k joins vertices k + 1 and k + 2 (it is opposite vertex k). Edges with
  one triangle (the mesh boundary), with more than two, or with repeated
  vertices get -1, so they always count as silhouettes (as in nvdiffrast).
  """
  tri = np.asarray(triangles, np.int64).reshape(-1, 3)
  num = tri.shape[0]
  if num == 0:
    return np.zeros((0, 3), np.int32)
  a = tri[:, [1, 2, 0]].reshape(-1)
  b = tri[:, [2, 0, 1]].reshape(-1)
  lo, hi = np.minimum(a, b), np.maximum(a, b)
  key = lo * (int(max(tri.max(), 0)) + 1) + hi
  order = np.argsort(key, kind="stable")
  ks = key[order]
  same = ks[1:] == ks[:-1]                                   # [3F - 1]
  before = np.concatenate([[False], same[:-1]])
  after = np.concatenate([same[1:], [False]])
  pair = same & ~before & ~after & (lo[order[:-1]] != hi[order[:-1]])
  i = np.nonzero(pair)[0]
  out = np.full(3 * num, -1, np.int64)
  out[order[i]] = order[i + 1] // 3
  out[order[i + 1]] = order[i] // 3
  return out.reshape(num, 3).astype(np.int32)


# Edge-steps the antialiasing walk may take beyond the front triangle to reach
# a silhouette edge between two pixel centres (0 = nvdiffrast's rule).
_WALK_STEPS = 2

# Host-side cache of edge neighbours: the mesh topology is fixed while the
# geometry changes, so it is computed once per distinct triangle array.
_NEIGHBOUR_CACHE = {}


def _cached_neighbours(triangles) -> np.ndarray:
  tri = np.ascontiguousarray(np.asarray(triangles, np.int32))
  key = (tri.shape, zlib.crc32(tri.data))
  hit = _NEIGHBOUR_CACHE.get(key)
  if hit is None or not np.array_equal(hit[0], tri):
    if len(_NEIGHBOUR_CACHE) > 16:
      _NEIGHBOUR_CACHE.clear()
    hit = (tri.copy(), _edge_neighbours_numpy(tri))
    _NEIGHBOUR_CACHE[key] = hit
  return hit[1]


def edge_neighbours(triangles):
  """The triangle across each edge: [F, 3] int32 -> [F, 3] int32 (-1: none).

  Edge k of a triangle joins its vertices k + 1 and k + 2. Computed with NumPy
  when ``triangles`` is concrete (constant-folded into a jitted caller), else
  by a host callback with a cache (so a traced mesh costs a copy and a checksum
  per call, not a sort).
  """
  if not isinstance(triangles, jax.core.Tracer):
    return jnp.asarray(_cached_neighbours(triangles))
  return jax.pure_callback(_cached_neighbours,
                           jax.ShapeDtypeStruct(triangles.shape, jnp.int32), triangles,
                           vmap_method="sequential")


def _silhouette_bits(points, triangles, neighbours):
  """Which edges of each triangle are silhouette edges in each image.

  An edge is a silhouette when it has no neighbouring triangle or when the
  neighbour faces the other way (nvdiffrast's topological test; facing is the
  sign of ``det[P0, P1, P2]`` in camera space, exact under perspective).

  Args:
    points: [B, V, 3] camera-space vertices (no gradient needed).
    triangles, neighbours: [F, 3] int32.

  Returns:
    [B * F] int32, bit k set when edge k of triangle ``f`` (row ``b * F + f``) is
    a silhouette edge of image b.
  """
  # Vertex-major rows of B x 3 values: row gathers are fast on XLA:CPU.
  x = jnp.transpose(points, (1, 0, 2))                               # [V, B, 3]
  p = [jnp.take(x, triangles[:, k], axis=0, mode="clip") for k in range(3)]
  cross = jnp.cross(p[1], p[2])
  det = jnp.sum(p[0] * cross, axis=-1)                               # [F, B]
  facing = jnp.sign(det).astype(jnp.int8)
  bits = jnp.zeros(det.shape, jnp.int32)
  for k in range(3):
    nb = neighbours[:, k]
    wing = jnp.take(facing, jnp.maximum(nb, 0), axis=0, mode="clip")  # [F, B]
    sil = (nb[:, None] < 0) | (wing != facing)
    bits = bits | (sil.astype(jnp.int32) << k)
  return jnp.transpose(bits).reshape(-1)


def _near_silhouette(tri_bits, neighbours):
  """[B * F] int32, nonzero for triangles within ``_WALK_STEPS`` edge-steps of
  a silhouette edge (the ones :func:`_antialias_pairs` can reach one from)."""
  num_faces = neighbours.shape[0]
  near = tri_bits.reshape(-1, num_faces)                             # [B, F]
  for _ in range(_WALK_STEPS):
    ring = near
    for k in range(3):
      nb = neighbours[:, k]
      ring = ring | jnp.where(nb >= 0, jnp.take(near, jnp.maximum(nb, 0), axis=1), 0)
    near = ring
  return near.reshape(-1)


def _pixel_bits(triangle_id, tri_bits):
  """[B * H * W] per-triangle bits of the triangle seen at each pixel (0 on
  background)."""
  batch, num_pixels = triangle_id.shape[0], triangle_id[0].size
  num_faces = tri_bits.shape[0] // batch
  tid = triangle_id.reshape(-1)
  row = jnp.maximum(tid, 0) + jnp.repeat(jnp.arange(batch, dtype=jnp.int32) * num_faces,
                                         num_pixels)
  return jnp.where(tid >= 0, _gather(tri_bits, row), 0)


def _candidate_pairs(triangle_id, depth, pixel_bits):
  """[P] bool over all pairs (horizontal [B, H, W - 1], then vertical
  [B, H - 1, W], flattened): the two pixels show different triangles and the
  front one is near a silhouette edge (``pixel_bits`` nonzero, see
  :func:`_near_silhouette`). :func:`_antialias_pairs` checks that a silhouette
  edge is crossed between them."""
  bits = pixel_bits.reshape(triangle_id.shape)
  out = []
  for axis in (2, 1):
    n = triangle_id.shape[axis]
    sl = lambda x, lo, hi: jax.lax.slice_in_dim(x, lo, hi, axis=axis)
    ta, tb = sl(triangle_id, 0, n - 1), sl(triangle_id, 1, n)
    za, zb = sl(depth, 0, n - 1), sl(depth, 1, n)
    a_front = (ta >= 0) & ((tb < 0) | (za <= zb))
    front_bits = jnp.where(a_front, sl(bits, 0, n - 1), sl(bits, 1, n))
    out.append(((ta != tb) & (front_bits != 0)).reshape(-1))
  return jnp.concatenate(out)


def _blend(image, pix_a, pix_b, a_front, t):
  """Blends pixel pairs across their silhouette edge.

  Args:
    image: [B, H, W, C], or a tuple of such arrays (any C each; blended alike).
    pix_a, pix_b: [K] flat pixel indices of each pair;
    a_front: [K] bool, pixel a shows the front (occluding) surface;
    t: [K] where the edge crosses the segment, as a fraction from the inner
      (front) pixel centre; 0.5 = no blending.

  Returns:
    [B, H, W, C] (a tuple for a tuple): the front colour grows onto the outer
    pixel (t > 0.5) or the back colour onto the inner one (t < 0.5), in
    proportion to |t - 0.5|.
  """
  if isinstance(image, tuple):
    return tuple(_blend(layer, pix_a, pix_b, a_front, t) for layer in image)
  flat = image.reshape(-1, image.shape[-1])
  get = lambda x, k: x.at[k].get(mode="promise_in_bounds")
  ca, cb = get(flat, pix_a), get(flat, pix_b)
  c_in = jnp.where(a_front[:, None], ca, cb)
  c_out = jnp.where(a_front[:, None], cb, ca)
  grow = jnp.maximum(t - 0.5, 0.0)[:, None] * (c_in - c_out)    # onto the outer pixel
  shrink = jnp.maximum(0.5 - t, 0.0)[:, None] * (c_out - c_in)  # onto the inner pixel
  delta_a = jnp.where(a_front[:, None], shrink, grow)
  delta_b = jnp.where(a_front[:, None], grow, shrink)
  out = flat.at[jnp.concatenate([pix_a, pix_b])].add(
      jnp.concatenate([delta_a, delta_b]), mode="promise_in_bounds")
  return out.reshape(image.shape)


def _antialias_pairs(image, points, triangle_id, depth, triangles, neighbours, tri_bits,
                     pair_index, intrinsics: Intrinsics):
  """Blending of a compact list of candidate pairs (differentiable).

  Args:
    image: [B, H, W, C]; points: [B, V, 3]; triangle_id, depth: [B, H, W].
    triangles, neighbours: [F, 3] int32; tri_bits: [B * F] int32 from
      :func:`_silhouette_bits`.
    pair_index: [K] int32 indices into the horizontal pairs [B, H, W - 1]
      followed by the vertical pairs [B, H - 1, W], flattened; entries >= the
      number of pairs are padding.

  Returns:
    [B, H, W, C] the image plus the blending deltas.
  """
  batch, height, width, _ = image.shape
  num_vertices = points.shape[1]
  num_faces = triangles.shape[0]
  num_h = batch * height * (width - 1)
  num_pairs = num_h + batch * (height - 1) * width
  used = pair_index < num_pairs
  index = jnp.where(used, pair_index, 0)
  vertical = index >= num_h
  # (b, i, j) of the first pixel and the flat index of both pixels.
  loc = jnp.where(vertical, index - num_h, index)
  pair_w = jnp.where(vertical, width, width - 1)
  pair_hw = jnp.where(vertical, (height - 1) * width, height * (width - 1))
  b = loc // pair_hw
  rest = loc - b * pair_hw
  i = rest // pair_w
  j = rest - i * pair_w
  pix_a = (b * height + i) * width + j
  pix_b = pix_a + jnp.where(vertical, width, 1)
  tid = triangle_id.reshape(-1)
  dep = depth.reshape(-1)
  get = lambda x, i: x.at[i].get(mode="promise_in_bounds")
  ta, tb = get(tid, pix_a), get(tid, pix_b)
  za, zb = get(dep, pix_a), get(dep, pix_b)
  a_front = (ta >= 0) & ((tb < 0) | (za <= zb))
  f = intrinsics.focal
  dxa = (j.astype(jnp.float32) + 0.5 - intrinsics.cx) / f
  dya = (i.astype(jnp.float32) + 0.5 - intrinsics.cy) / f
  tables = [points[..., c].reshape(-1) for c in range(3)]
  flat_nb = neighbours.reshape(-1)

  def crossing(tri):
    """Where the segment leaves triangle ``tri`` [K], and through which edge."""
    vid = get(triangles, tri) + (b * num_vertices)[:, None]   # [K, 3]
    # Scalar gathers per coordinate: their transposes are cheap scatters,
    # unlike slices of a gathered [K, 3, 3] block.
    pv = tuple(tuple(get(tables[c], vid[:, k]) for k in range(3)) for c in range(3))
    t, edge, ok = _pair_edges(pv, a_front, dxa, dya, 1.0 / f, vertical)
    bits = get(tri_bits, b * num_faces + tri)
    silhouette = ((bits >> edge) & 1) == 1
    # ``ok`` adds the axis rule, which only the silhouette edge must pass.
    return t, edge, jnp.isfinite(t), ok & silhouette

  # The front triangle's edge crossed first on the way to the other pixel
  # (nvdiffrast's rule); if that edge is interior, the walk continues through
  # the neighbouring triangle(s), which sub-pixel triangles at a silhouette
  # need (they cover no pixel centre of the pair).
  tri = jnp.maximum(jnp.where(a_front, ta, tb), 0)
  t, edge, alive, hit = crossing(tri)
  alive &= used & (ta != tb)
  done = alive & hit
  t_hit = t
  for _ in range(_WALK_STEPS):
    nxt = get(flat_nb, tri * 3 + edge)
    alive = jax.lax.stop_gradient(alive & ~done & (nxt >= 0))
    tri = jnp.where(alive, nxt, tri)
    t_next, edge, exits, hit = crossing(tri)
    alive &= exits & (t_next >= t)
    hit &= alive
    t_hit = jnp.where(hit, t_next, t_hit)
    done |= hit
    t = t_next
  done = jax.lax.stop_gradient(done)
  t = jnp.where(done, t_hit, 0.5)
  return _blend(image, pix_a, pix_b, a_front, t)


def _max_pairs(batch, height, width):
  """Static size of the compact pair list. Candidates are the pixel pairs
  around triangles near a silhouette edge: a few times the silhouette length
  (with two walk steps about H W / 70 per image for a frontal 27k-triangle face
  at 224 px, H W / 120 at 108k); beyond the budget the full-size fallback
  runs."""
  return batch * max(1024, height * width // 16)


def _on_pair_list(valid, fn):
  """Calls ``fn(index)`` with the [K] indices of the True entries of ``valid``,
  K static: the compact size when they fit, else all entries (lax.cond)."""
  num_pairs = valid.shape[0]
  count = jnp.sum(valid.astype(jnp.int32))

  def branch(size):
    return lambda: fn(jnp.nonzero(valid, size=size, fill_value=num_pairs)[0].astype(jnp.int32))

  return branch, count, num_pairs


def _antialias_setup(points, triangle_id, depth, triangles, neighbours):
  """(per-triangle silhouette bits [B * F], candidate pairs [P] bool)."""
  tri_bits = _silhouette_bits(jax.lax.stop_gradient(points), triangles, neighbours)
  near = _pixel_bits(triangle_id, _near_silhouette(tri_bits, neighbours))
  return tri_bits, _candidate_pairs(triangle_id, depth, near)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _antialias_core(image, points, triangle_id, depth, triangles, neighbours, intrinsics):
  return _antialias_fwd(image, points, triangle_id, depth, triangles, neighbours,
                        intrinsics)[0]


def _antialias_fwd(image, points, triangle_id, depth, triangles, neighbours, intrinsics):
  batch, height, width, _ = image.shape
  bits, valid = _antialias_setup(points, triangle_id, depth, triangles, neighbours)
  run = lambda idx: _antialias_pairs(image, points, triangle_id, depth, triangles, neighbours,
                                     bits, idx, intrinsics)
  branch, count, num_pairs = _on_pair_list(valid, run)
  small = min(num_pairs, _max_pairs(batch, height, width))
  out = jax.lax.cond(count <= small, branch(small), branch(num_pairs))
  return out, (image, points, triangle_id, depth, triangles, neighbours, bits, valid)


def _antialias_bwd(intrinsics, res, g):
  # The blending is recomputed on the pair list inside each branch, so neither
  # branch keeps residuals of the full-size fallback.
  image, points, triangle_id, depth, triangles, neighbours, bits, valid = res
  batch, height, width, _ = image.shape

  def grads(idx):
    _, vjp = jax.vjp(lambda im, p: _antialias_pairs(im, p, triangle_id, depth, triangles,
                                                    neighbours, bits, idx, intrinsics),
                     image, points)
    return vjp(g)

  branch, count, num_pairs = _on_pair_list(valid, grads)
  small = min(num_pairs, _max_pairs(batch, height, width))
  d_image, d_points = jax.lax.cond(count <= small, branch(small), branch(num_pairs))
  return d_image, d_points, None, None, None, None


_antialias_core.defvjp(_antialias_fwd, _antialias_bwd)


def _blend_pairs(image, points, triangles, pairs, intrinsics: Intrinsics):
  """Blends the pixel pairs found by ``cpu_kernels.silhouette_pairs``
  (differentiable): the same crossing fraction and blending as
  :func:`_antialias_pairs`, for pairs whose silhouette triangle and edge are
  already known.

  Args:
    image: a tuple of [B, H, W, C_i] layers; points: [B, V, 3]; triangles:
      [F, 3] int32.
    pairs: [K, 3] int32 rows (pixel, flags, triangle); pixel B H W = padding.

  Returns:
    The layers plus the blending deltas.
  """
  batch, height, width, _ = image[0].shape
  num_vertices = points.shape[1]
  num_pixels = batch * height * width
  pixel, flags, tri = pairs[:, 0], pairs[:, 1], pairs[:, 2]
  used = pixel < num_pixels
  pix_a = jnp.where(used, pixel, 0)
  vertical = (flags & 1) != 0
  a_front = (flags & 2) != 0
  edge = flags >> 2
  pix_b = pix_a + jnp.where(vertical, width, 1)
  b = pix_a // (height * width)
  rest = pix_a - b * (height * width)
  i = rest // width
  j = rest - i * width
  f = intrinsics.focal
  dxa = (j.astype(jnp.float32) + 0.5 - intrinsics.cx) / f
  dya = (i.astype(jnp.float32) + 0.5 - intrinsics.cy) / f
  get = lambda x, k: x.at[k].get(mode="promise_in_bounds")
  vid = get(triangles, tri) + (b * num_vertices)[:, None]            # [K, 3]
  tables = [points[..., c].reshape(-1) for c in range(3)]
  pv = tuple(tuple(get(tables[c], vid[:, k]) for k in range(3)) for c in range(3))
  step = 1.0 / f
  hx = jnp.where(vertical, 0.0, step)
  hy = jnp.where(vertical, step, 0.0)
  sign = jnp.where(a_front, 1.0, -1.0)
  dx_in = dxa + jnp.where(a_front, 0.0, hx)
  dy_in = dya + jnp.where(a_front, 0.0, hy)
  e_in = _edges_soa(*pv, dx_in, dy_in)
  e_out = _edges_soa(*pv, dx_in + sign * hx, dy_in + sign * hy)
  orient = jax.lax.stop_gradient(jnp.where(e_in[0] + e_in[1] + e_in[2] < 0, -1.0, 1.0))
  pick = lambda e: jnp.where(edge == 2, e[2], jnp.where(edge == 1, e[1], e[0])) * orient
  ei, eo = pick(e_in), pick(e_out)
  denom = jnp.where(used, ei - eo, 1.0)
  t = jnp.where(used, ei / denom, 0.5)
  return _blend(image, pix_a, pix_b, a_front, t)


def _antialias_native(image, points, triangle_id, depth, triangles, neighbours,
                      intrinsics: Intrinsics):
  """:func:`antialias` with the pair search in the C++ kernel: only the pairs
  that do blend reach the differentiable part. ``image``: the tuple of layers."""
  batch, height, width, _ = image[0].shape
  pairs, count = _search_pairs(points, triangles, (triangle_id, depth, neighbours), intrinsics,
                               _pair_budget(batch, height, width))
  return _blend_pair_list(image, points, triangles, pairs, count,
                          (triangle_id, depth, neighbours), intrinsics)


def _pair_budget(batch, height, width):
  """Rows of the pair list asked of the kernel first: the pairs that blend are
  about 2x the silhouette length, ~H W / 200 per image for a frontal face (the
  candidate budget of :func:`_max_pairs` / 4); a frame with more takes a
  second, full-size search (see :func:`_on_compact_rows`)."""
  num_pairs = batch * (height * (width - 1) + (height - 1) * width)
  return min(num_pairs, _max_pairs(batch, height, width) // 4)


def _search_pairs(points, triangles, search, intrinsics, capacity=None):
  """``cpu_kernels.silhouette_pairs``; ``search`` = (triangle_id, depth,
  neighbours)."""
  triangle_id, depth, neighbours = search
  return cpu_kernels.silhouette_pairs(jax.lax.stop_gradient(points), triangle_id, depth,
                                      triangles, neighbours, intrinsics, capacity)


def _on_compact_rows(pairs, count, fn, full_pairs):
  """``fn(pairs)`` when the budget-sized pair list holds all the pairs found
  (almost always), else ``fn`` on the full list that ``full_pairs()``
  searches again (lax.cond: the second search only runs on overflow)."""
  return jax.lax.cond(count[0] <= pairs.shape[0], lambda: fn(pairs),
                      lambda: fn(full_pairs()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _blend_pair_list(image, points, triangles, pairs, count, search, intrinsics):
  return _on_compact_rows(
      pairs, count, lambda rows: _blend_pairs(image, points, triangles, rows, intrinsics),
      lambda: _search_pairs(points, triangles, search, intrinsics)[0])


def _blend_pair_list_fwd(image, points, triangles, pairs, count, search, intrinsics):
  out = _blend_pair_list(image, points, triangles, pairs, count, search, intrinsics)
  return out, (image, points, triangles, pairs, count, search)


def _blend_pair_list_bwd(intrinsics, res, g):
  # Recomputed inside each branch: autodiff of the lax.cond would keep (zeroed)
  # residuals of the full-size branch as well.
  image, points, triangles, pairs, count, search = res

  def grads(rows):
    _, vjp = jax.vjp(lambda im, p: _blend_pairs(im, p, triangles, rows, intrinsics),
                     image, points)
    return vjp(g)

  d_image, d_points = _on_compact_rows(
      pairs, count, grads, lambda: _search_pairs(points, triangles, search, intrinsics)[0])
  return d_image, d_points, None, None, None, (None, None, None)


_blend_pair_list.defvjp(_blend_pair_list_fwd, _blend_pair_list_bwd)


@functools.partial(jax.jit, static_argnames=("intrinsics", "native"))
def _antialias_batch(layers, points, triangle_id, depth, triangles, neighbours,
                     intrinsics: Intrinsics, native: bool):
  """Antialiases a tuple of [B, H, W, C_i] layers; returns the tuple."""
  if native:
    return _antialias_native(layers, points, triangle_id, depth, triangles, neighbours,
                             intrinsics)
  image = layers[0] if len(layers) == 1 else jnp.concatenate(layers, -1)
  out = _antialias_core(image, points, triangle_id, depth, triangles, neighbours, intrinsics)
  return tuple(jnp.split(out, np.cumsum([x.shape[-1] for x in layers])[:-1], axis=-1))


def antialias(image, points, triangles, fragments: Fragments, intrinsics: Intrinsics, *,
              native: Optional[bool] = None):
  """Analytic silhouette antialiasing with gradients w.r.t. vertex positions.

  As nvdiffrast's ``antialias`` (Laine et al. 2020): for every pair of
  horizontally or vertically adjacent pixels showing different triangles, take
  the front one and the first of its edges that the segment between the two
  pixel centres crosses. If that edge is a *silhouette* edge — by the mesh
  topology, a boundary edge or one whose neighbouring triangle faces the other
  way — and it is handled by this axis (the one most perpendicular to the
  edge), the two colours are blended in proportion to where the edge crosses
  the segment. Interior edges between triangles facing the same way are never
  blended. The result is continuous in the vertex positions, so silhouettes and
  occlusion boundaries get gradients.

  Beyond nvdiffrast, when the front triangle's crossed edge is interior the
  search continues through up to ``_WALK_STEPS`` neighbouring triangles along
  the segment (sub-pixel triangles at a silhouette cover no pixel centre of the
  pair, and nvdiffrast's rule alone skips most pairs of a dense mesh there).

  Pairs around triangles near a silhouette edge are found without gradients
  over the whole image, then blended on a compact list (static size, a
  full-size fallback when a frame has more), so the cost of the differentiable
  part and of its backward pass scales with the silhouette length.

  Args:
    image: [(B,) H, W, C] shaded image including the background, or a tuple
      of such arrays (any C each) blended alike, e.g. the image and its
      coverage mask [(B,) H, W, 1]; a tuple spares the CPU kernels a
      concatenation and its transpose.
    points: [(B,) V, 3] camera-space vertices (mm), as given to :func:`rasterize`.
    triangles: [F, 3] int32, the mesh (its edge topology is derived from it,
      see :func:`edge_neighbours`).
    fragments: from :func:`rasterize`.
    intrinsics: the camera.
    native: find the pixel pairs with the C++ CPU kernel (the blending and its
      gradient stay in JAX); None: as in :func:`rasterize`.

  Returns:
    [(B,) H, W, C] antialiased image (a tuple for a tuple).
  """
  is_tuple = isinstance(image, (tuple, list))
  layers = tuple(image) if is_tuple else (image,)
  native = cpu_kernels.resolve(native, *layers, points)
  neighbours = edge_neighbours(triangles)
  tid, depth = fragments.triangle_id, fragments.depth
  unbatched = layers[0].ndim == 3
  if unbatched:
    layers = tuple(x[None] for x in layers)
    points, tid, depth = points[None], tid[None], depth[None]
  out = _antialias_batch(layers, points, tid, depth, triangles, neighbours,
                         intrinsics=intrinsics, native=native)
  if unbatched:
    out = tuple(x[0] for x in out)
  return tuple(out) if is_tuple else out[0]


# ----------------------------------------------------------------------------
# soft rasterization


@flax.struct.dataclass
class SoftOutput:
  """Result of :func:`soft_rasterize` (leading batch axes when batched).

  Attributes:
    image: [H, W, C] aggregated attributes over the background.
    alpha: [H, W] soft coverage ``1 - prod_j (1 - D_j)`` in [0, 1].
    overflow: [] int32 fragment slots of large triangles that did not fit
      into ``max_fragments`` and were dropped (0 unless the budget is too
      small; always 0 with the CPU kernels, which have no budget).
  """
  image: jnp.ndarray
  alpha: jnp.ndarray
  overflow: jnp.ndarray


def _soft_triangles(points, attributes, triangles, intrinsics: Intrinsics, near: float,
                    cull_backfaces: bool, radius: float):
  """Per-triangle SoftRas setup of a flat batch (triangle rows ``b * F + f``).

  Args:
    points: [B, V, 3] camera-space vertices (mm); attributes: [B, V, C].
    radius: bounding-box margin (px) beyond which D vanishes.

  Returns:
    (fields, col0, row0, ncols, nrows): ``fields`` is a dict of differentiable
    per-triangle values, each a tuple of [B * F] arrays: ``u``, ``v`` (3
    projected vertex coordinates, px), ``iz`` (3 inverse depths, 1/mm), ``attr``
    (C x 3 vertex attributes), ``eu``, ``ev`` (edge k from vertex k to k + 1,
    px), ``inv_len2`` (1 / squared edge lengths), and ``orient`` ([B * F], -1 for front-facing
    = clockwise on screen, else 1; no gradient). col0, row0, ncols, nrows:
    [B * F] int32 padded pixel-centre boxes, empty for skipped triangles.
  """
  batch, num_vertices = points.shape[:2]
  rows = (triangles[None] + (jnp.arange(batch, dtype=jnp.int32)
                             * num_vertices)[:, None, None]).reshape(-1, 3)
  vid = _columns(rows)
  tables = _columns(points.reshape(-1, 3))
  x, y, z = (tuple(_gather(tables[c], vid[k]) for k in range(3)) for c in range(3))
  f = intrinsics.focal
  ok = functools.reduce(jnp.logical_and, [zk >= near for zk in z])
  safe_z = [jnp.where(ok, zk, 1.0) for zk in z]
  iz = [1.0 / zk for zk in safe_z]
  u = [f * x[k] * iz[k] + intrinsics.cx for k in range(3)]
  v = [f * y[k] * iz[k] + intrinsics.cy for k in range(3)]
  us, vs = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  area = (us[1] - us[0]) * (vs[2] - vs[0]) - (vs[1] - vs[0]) * (us[2] - us[0])
  front = area < 0
  ok &= (area != 0) & functools.reduce(jnp.logical_and,
                                       [jnp.isfinite(c) for c in list(us) + list(vs)])
  ok = jax.lax.stop_gradient(ok)
  if cull_backfaces:
    ok &= front
  # Skipped triangles get harmless stand-in values so that no inf/nan reaches
  # the (masked) gradient.
  u = tuple(jnp.where(ok, c, 0.0) for c in u)
  v = tuple(jnp.where(ok, c, 0.0) for c in v)
  iz = tuple(jnp.where(ok, c, 1.0) for c in iz)
  atables = _columns(attributes.reshape(-1, attributes.shape[-1]))
  attr = tuple(tuple(_gather(t, vid[k]) for k in range(3)) for t in atables)
  p = jax.lax.stop_gradient(jnp.stack([jnp.stack([x[k], y[k], z[k]], -1) for k in range(3)], 1))
  col0, row0, ncols, nrows = _screen_bounds(p, intrinsics, near, pad=radius)
  ncols = jnp.where(ok, ncols, 0)
  nrows = jnp.where(ok, nrows, 0)
  # Edge vectors and their inverse squared lengths, once per triangle rather
  # than per fragment.
  eu = tuple(u[(k + 1) % 3] - u[k] for k in range(3))
  ev = tuple(v[(k + 1) % 3] - v[k] for k in range(3))
  len2 = [eu[k] * eu[k] + ev[k] * ev[k] for k in range(3)]
  inv_len2 = tuple(1.0 / jnp.where(l > 0, l, 1.0) for l in len2)
  fields = dict(u=u, v=v, iz=iz, attr=attr, eu=eu, ev=ev, inv_len2=inv_len2,
                orient=jnp.where(front, -1.0, 1.0))
  return fields, col0, row0, ncols, nrows


def _soft_fragments(fields, px, py, sigma, zrange, cutoff):
  """SoftRas quantities of fragments (differentiable), on separate components.

  Args:
    fields: per-triangle values of :func:`_soft_triangles`, each broadcastable
      against the pixel coordinates.
    px, py: [...] pixel-centre coordinates (px).

  Returns:
    (probability D [...], log(1 - D) [...], scaled depth z~ [...], C-list of
    attribute values [...]).
  """
  u, v, iz, orient = fields["u"], fields["v"], fields["iz"], fields["orient"]
  # Edge k runs from vertex k to vertex k + 1.
  eu, ev = fields["eu"], fields["ev"]
  au = [px - u[k] for k in range(3)]
  av = [py - v[k] for k in range(3)]
  # Oriented 2-D edge functions: all >= 0 inside.
  s = [(eu[k] * av[k] - ev[k] * au[k]) * orient for k in range(3)]
  inside = (s[0] >= 0) & (s[1] >= 0) & (s[2] >= 0)
  # Squared distance to the nearest edge segment.
  dist2 = None
  for k in range(3):
    t = jnp.clip((au[k] * eu[k] + av[k] * ev[k]) * fields["inv_len2"][k], 0.0, 1.0)
    du, dv = au[k] - t * eu[k], av[k] - t * ev[k]
    d2 = du * du + dv * dv
    dist2 = d2 if dist2 is None else jnp.minimum(dist2, d2)
  x = jnp.where(inside, dist2, -dist2) / sigma
  # D is shifted and rescaled so that it reaches 0 exactly at the cutoff: the
  # fragments that are not aggregated then contribute nothing, and the image
  # stays continuous (with small gamma even a tiny D outweighs the background).
  raw = jax.nn.sigmoid(x)
  keep = raw > cutoff
  prob = jnp.where(keep, (raw - cutoff) / (1.0 - cutoff), 0.0)
  log_miss = jnp.where(keep, -jax.nn.softplus(x) - math.log1p(-cutoff), 0.0)
  # Screen-space barycentrics clamped to the triangle (as SoftRas), then made
  # perspective-correct: vertex k's weight is edge k + 1's function; the
  # normalisation by twice the area cancels except for its sign (``orient``).
  lam = [jnp.maximum(s[(k + 1) % 3], 0.0) for k in range(3)]
  lam_sum = lam[0] + lam[1] + lam[2]
  w = [lam[k] * iz[k] for k in range(3)]
  w_sum = w[0] + w[1] + w[2]
  # lam_sum > 0 for every pixel of a non-degenerate triangle; the guards keep
  # the masked-out slots finite.
  w_ok = w_sum > 0
  inv_w = 1.0 / jnp.where(w_ok, w_sum, 1.0)
  depth = jnp.where(w_ok, lam_sum * inv_w, 1.0)
  zn, zf = zrange
  zscaled = (zf - depth) / (zf - zn)
  values = [(w[0] * a[0] + w[1] * a[1] + w[2] * a[2]) * inv_w for a in fields["attr"]]
  return prob, log_miss, zscaled, values


def _soft_aggregate(fields, col0, row0, ncols, nrows, background, intrinsics: Intrinsics,
                    num_tiles: int, tile: int, values_args, gamma: float, eps: float):
  """Aggregates all fragments of a flat batch into B * H * W pixels.

  Each triangle's padded box is cut into tile x tile blocks of pixel centres;
  ``num_tiles`` (static) tile slots are expanded over the triangles, each
  gathers its triangle's values once and evaluates a dense block of tile²
  fragments (out-of-box ones masked). Gathers (and their scatter-add
  transposes) are thus per tile, not per fragment.

  Returns:
    (image [B * H * W, C], alpha [B * H * W]).
  """
  width, height = intrinsics.width, intrinsics.height
  num_tri = col0.shape[0]
  batch = background.shape[0]
  num_faces = num_tri // batch
  num_pixels = batch * width * height
  base = jnp.repeat(jnp.arange(batch, dtype=jnp.int32) * (width * height), num_faces)

  k = tile
  tile_cols = (ncols + k - 1) // k
  counts = tile_cols * ((nrows + k - 1) // k)
  starts = jnp.cumsum(counts) - counts
  tri, local, tile_valid = _expand(counts, starts, 0, num_tiles)
  tc = jnp.maximum(_gather(tile_cols, tri), 1)
  tr = local // tc
  tc = local - tr * tc
  dc = jnp.tile(jnp.arange(k, dtype=jnp.int32), k)[None, :]          # [1, k*k]
  dr = jnp.repeat(jnp.arange(k, dtype=jnp.int32), k)[None, :]
  dcol = (tc * k)[:, None] + dc
  drow = (tr * k)[:, None] + dr
  valid = (tile_valid[:, None] & (dcol < _gather(ncols, tri)[:, None])
           & (drow < _gather(nrows, tri)[:, None]))
  col = _gather(col0, tri)[:, None] + dcol
  row = _gather(row0, tri)[:, None] + drow
  pix = (_gather(base, tri)[:, None] + row * width + col)
  t_fields = jax.tree_util.tree_map(lambda a: _gather(a, tri)[:, None], fields)
  # Rematerialised in the backward pass: recomputing the fragment values from
  # the per-tile fields is cheaper than storing and re-reading a dozen
  # fragment-sized residuals (XLA:CPU is bound by memory traffic here).
  fragment_values = jax.checkpoint(lambda f, x, y: _soft_fragments(f, x, y, **values_args))
  prob, log_miss, zscaled, values = fragment_values(
      t_fields, col.astype(jnp.float32) + 0.5, row.astype(jnp.float32) + 0.5)
  valid &= prob > 0
  pix = jnp.where(valid, pix, num_pixels).reshape(-1)
  used = valid.reshape(-1)
  # Softmax over depth, stabilised by the per-pixel maximum (no gradient needed:
  # the result does not depend on it).
  zscaled = zscaled.reshape(-1)
  zmax = jnp.full((num_pixels,), eps, jnp.float32).at[pix].max(
      jax.lax.stop_gradient(zscaled), mode="drop")
  # Masked before the exp: a dropped slot's overflow would poison the gradient.
  shift = jnp.where(used, zscaled - jnp.take(zmax, jnp.minimum(pix, num_pixels - 1)), 0.0)
  weight = jnp.where(used, prob.reshape(-1) * jnp.exp(shift / gamma), 0.0)
  contribs = [weight] + [weight * c.reshape(-1) for c in values] + [log_miss.reshape(-1)]
  acc = [jnp.zeros((num_pixels,), jnp.float32).at[pix].add(c, mode="drop") for c in contribs]
  num_channels = len(values)
  w_bg = jnp.exp((eps - zmax) / gamma)
  bg = background.reshape(num_pixels, num_channels)
  total = acc[0] + w_bg
  image = jnp.stack([(acc[1 + c] + w_bg * bg[:, c]) / total for c in range(num_channels)], -1)
  alpha = 1.0 - jnp.exp(acc[-1])
  return image, alpha


# Soft rasterization of larger batches goes in groups of at most this many
# triangles (images x faces), which bounds its memory (fragment-sized arrays).
_SOFT_GROUP_TRIANGLES = 1 << 19


@functools.partial(jax.jit, static_argnames=(
    "intrinsics", "zrange", "eps", "near", "cull_backfaces", "footprint", "max_fragments",
    "cutoff"))
def _soft_rasterize_batch(points, attributes, background, triangles, intrinsics: Intrinsics,
                          sigma: float, gamma: float, zrange, eps: float, near: float,
                          cull_backfaces: bool, footprint: int, max_fragments: Optional[int],
                          cutoff: float):
  """:func:`soft_rasterize` of a batch [B, V, 3] as one flat problem of B * F
  triangles drawn into B * H * W pixels (as :func:`_rasterize_batch`)."""
  width, height = intrinsics.width, intrinsics.height
  batch = points.shape[0]
  num_channels = attributes.shape[-1]
  # Fragments farther than this from a triangle have D < cutoff.
  radius = jnp.sqrt(sigma * math.log(1.0 / cutoff - 1.0))
  fields, col0, row0, ncols, nrows = _soft_triangles(
      points, attributes, triangles, intrinsics, near, cull_backfaces, radius)
  k = footprint
  counts = ((ncols + k - 1) // k) * ((nrows + k - 1) // k)
  num_faces = triangles.shape[0]
  # Tile slots: one per triangle plus the extra tiles of larger triangles
  # (max_fragments / footprint² per image). Most meshes need far fewer extra
  # tiles: a quarter of them is tried first (lax.cond, both compiled).
  extra = max((max_fragments or 4 * width * height) // (k * k), 1)
  budget = batch * (num_faces + extra)
  small_budget = batch * (num_faces + max(extra // 4, 1))
  values_args = dict(sigma=sigma, zrange=zrange, cutoff=cutoff)
  run = lambda size: lambda: _soft_aggregate(
      fields, col0, row0, ncols, nrows, background, intrinsics, size, footprint,
      values_args, gamma, eps)
  image, alpha = jax.lax.cond(jnp.sum(counts) <= small_budget, run(small_budget),
                              run(budget))
  # Fragments of tiles beyond the budget (tile² per tile, an upper bound).
  dropped = jnp.clip(jnp.cumsum(counts) - budget, 0, counts) * (k * k)
  overflow = jnp.sum(dropped.reshape(batch, -1), axis=1)
  return SoftOutput(image=image.reshape(batch, height, width, num_channels),
                    alpha=alpha.reshape(batch, height, width), overflow=overflow)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _soft_native_core(points, attributes, background, triangles, params, static):
  return _soft_native_fwd(points, attributes, background, triangles, params, static)[0]


def _soft_native_fwd(points, attributes, background, triangles, params, static):
  intrinsics, kwargs = static
  image, alpha, *residuals = cpu_kernels.soft_rasterize(
      points, attributes, background, triangles, params, intrinsics, **dict(kwargs))
  return (image, alpha), (points, attributes, triangles, params, tuple(residuals), image)


def _soft_native_bwd(static, saved, g):
  """The C++ transpose: the fragments are recomputed from the vertices and
  their gradients go straight to the vertices (no per-fragment residuals).
  sigma and gamma get no gradient."""
  intrinsics, kwargs = static
  points, attributes, triangles, params, residuals, image = saved
  d_points, d_attributes, d_background = cpu_kernels.soft_rasterize_grad(
      points, attributes, triangles, params, residuals, image, g[0], g[1], intrinsics,
      **dict(kwargs))
  return (d_points.astype(points.dtype), d_attributes.astype(attributes.dtype), d_background,
          None, jnp.zeros_like(params))


_soft_native_core.defvjp(_soft_native_fwd, _soft_native_bwd)


@functools.partial(jax.jit, static_argnames=(
    "intrinsics", "zrange", "eps", "near", "cull_backfaces", "cutoff"))
def _soft_native_batch(points, attributes, background, triangles, intrinsics: Intrinsics,
                       sigma, gamma, zrange, eps: float, near: float, cull_backfaces: bool,
                       cutoff: float):
  """:func:`soft_rasterize` of a batch [B, V, 3] with the C++ CPU kernels."""
  sigma = jnp.asarray(sigma, jnp.float32)
  # As in _soft_rasterize_batch (float32 arithmetic on a possibly traced sigma).
  radius = jnp.sqrt(sigma * math.log(1.0 / cutoff - 1.0))
  params = jnp.stack([sigma, jnp.asarray(gamma, jnp.float32), radius])
  static = (intrinsics, (("near", near), ("cull_backfaces", cull_backfaces), ("eps", eps),
                         ("depth_range", zrange), ("cutoff", cutoff)))
  image, alpha = _soft_native_core(points, attributes, background, triangles, params, static)
  return SoftOutput(image=image, alpha=alpha,
                    overflow=jnp.zeros(points.shape[:1], jnp.int32))


def soft_rasterize(points, triangles, attributes, intrinsics: Intrinsics, *,
                   background=None, sigma: float = 0.1, gamma: float = 1e-4,
                   depth_range=(1.0, 1e4), eps: float = 1e-3, near: float = 1.0,
                   cull_backfaces: bool = False, footprint: int = 3,
                   max_fragments: Optional[int] = None, cutoff: float = 1e-3,
                   native: Optional[bool] = None) -> SoftOutput:
  """SoftRas-style probabilistic rasterization (Liu et al. 2019), differentiable.

  Every triangle j influences every pixel centre p near it with probability
  ``D_j(p) = sigmoid(±d²(p, j) / sigma)`` (+ inside, - outside, ``d`` the
  screen-space distance to its boundary). Colours are aggregated with depth
  softmax weights ``D_j exp(z~_j / gamma)`` plus a background weight
  ``exp(eps / gamma)``, where ``z~ = (far - z) / (far - near)`` is the scaled
  inverse-order depth; coverage is ``1 - prod_j (1 - D_j)``. Attributes and
  depth at a pixel outside a triangle use its barycentrics clamped to the
  triangle (as SoftRas), perspective-correct.

  Only pixels where the sigmoid exceeds ``cutoff`` are aggregated, i.e. within
  ``sqrt(sigma * log(1/cutoff - 1))`` px of the triangle; D is rescaled to
  ``(sigmoid - cutoff) / (1 - cutoff)`` so that it vanishes continuously there.
  Triangles reaching behind the near plane are dropped in this mode.

  Implementation: the batch is one flat problem (as :func:`rasterize`); each
  triangle's values (projected vertices, inverse depths, edge vectors,
  attributes) are set up once, then gathered once per tile of footprint²
  fragments; the fragment values are recomputed in the backward pass rather
  than stored, and batches of more than ``_SOFT_GROUP_TRIANGLES`` triangles in
  all go in groups of images (bounded memory). On the CPU backend the C++
  kernels of :mod:`~focus_jax.render.cpu_kernels` do the setup and the
  aggregation instead, and their hand-written backward pass recomputes the
  fragments and accumulates straight into the vertex gradients.

  Args:
    points: [(B,) V, 3] camera-space vertices (mm).
    triangles: [F, 3] int32.
    attributes: [(B,) V, C] per-vertex values to aggregate (e.g. shaded colour).
    intrinsics: the camera.
    background: [C] or [(B,) H, W, C] background values (default 0).
    sigma: blur, squared pixels (SoftRas's 1e-5 in NDC units is ~0.13 px² at
      224 px).
    gamma: depth temperature on the scaled depth.
    depth_range: (near, far) mm used to scale depth into [0, 1].
    eps: background's scaled depth.
    near: near-plane depth (mm).
    cull_backfaces: ignore triangles seen from the back.
    footprint: fragments are evaluated in tiles of footprint x footprint
      pixel centres, one tile per triangle whose padded box fits (static).
    max_fragments: per image, fragment slots for the extra tiles of larger
      triangles (static, default 4*H*W); :attr:`SoftOutput.overflow` counts
      what was dropped.
    cutoff: smallest probability that is aggregated.
    native: the C++ CPU kernels (forward and a hand-written backward) instead
      of the JAX code; None: on the CPU backend for float32 inputs (as
      :func:`rasterize`). They compute the same float32 formulas, fragment by
      fragment without a budget: ``footprint`` and ``max_fragments`` do not
      apply and :attr:`SoftOutput.overflow` is 0. No gradient w.r.t. sigma and
      gamma on this path.

  Returns:
    :class:`SoftOutput`.
  """
  native = cpu_kernels.resolve(native, points, attributes)
  if background is None:
    background = jnp.zeros((attributes.shape[-1],), jnp.float32)
  background = jnp.asarray(background, jnp.float32)
  if points.ndim == 2:
    bg = background if background.ndim == 1 else background[None]
    out = soft_rasterize(points[None], triangles, attributes[None] if attributes.ndim == 2
                         else attributes, intrinsics, background=bg, sigma=sigma, gamma=gamma,
                         depth_range=depth_range, eps=eps, near=near,
                         cull_backfaces=cull_backfaces, footprint=footprint,
                         max_fragments=max_fragments, cutoff=cutoff, native=native)
    return jax.tree_util.tree_map(lambda x: x[0], out)
  if attributes.ndim == 2:
    attributes = jnp.broadcast_to(attributes, (points.shape[0],) + attributes.shape)
  background = jnp.broadcast_to(background, points.shape[:1] + (
      intrinsics.height, intrinsics.width, attributes.shape[-1]))
  if native:
    return _soft_native_batch(points, attributes, background, triangles,
                              intrinsics=intrinsics, sigma=sigma, gamma=gamma,
                              zrange=tuple(depth_range), eps=eps, near=near,
                              cull_backfaces=cull_backfaces, cutoff=cutoff)
  core = functools.partial(_soft_rasterize_batch, triangles=triangles,
                           intrinsics=intrinsics, sigma=sigma, gamma=gamma,
                           zrange=tuple(depth_range), eps=eps, near=near,
                           cull_backfaces=cull_backfaces, footprint=footprint,
                           max_fragments=max_fragments, cutoff=cutoff)
  batch = points.shape[0]
  group = max(d for d in range(1, batch + 1)
              if batch % d == 0 and (d == 1 or d * triangles.shape[0] <= _SOFT_GROUP_TRIANGLES))
  if group == batch:
    return core(points, attributes, background)
  # Large problems go in groups of images, each rematerialised in the backward
  # pass, so that only one group's fragments are alive at a time.
  split = lambda x: x.reshape((batch // group, group) + x.shape[1:])
  one = jax.checkpoint(lambda args: core(*args))
  out = jax.lax.map(one, (split(points), split(attributes), split(background)))
  return jax.tree_util.tree_map(lambda x: x.reshape((batch,) + x.shape[2:]), out)
