"""Hard rasterization in pure JAX: per pixel the front-most triangle, its depth
and perspective-correct barycentrics (no gradient; see interpolation.py).

Visibility is computed by *fragment expansion*: each triangle gets as many
fragment slots as there are pixel centres in its (clipped, image-clamped)
bounding box. Triangles whose box fits a footprint x footprint block are drawn
as such fixed-size blocks; the slots of the others are processed in
static-size chunks by a ``while_loop`` (almost always one iteration). Each
pass does a scatter-min depth test followed by a scatter-min of the triangle
id among the depth winners, so the depth test is exact and ties resolve to the
smallest triangle id. Work is proportional to the total bounding-box area, not
to triangles x pixels, and triangles of any size are handled exactly.
Conventions (camera space, pixel centres, edge functions): geometry.py.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.render.camera import Intrinsics
from focus_jax.render.geometry import (edges_soa, expand, gather, pixel_rays, screen_bounds,
                                       vertex_coordinates)

# Triangle ids are int32; a sentinel larger than any id marks "no triangle".
_NO_TRIANGLE = np.iinfo(np.int32).max
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
      ``rasterize.interpolate`` for gradients.
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
  col0, row0, ncols, nrows = screen_bounds(p, intrinsics, near, pad)
  f = intrinsics.focal
  dx0 = (col0.astype(jnp.float32) + 0.5 - intrinsics.cx) / f
  dy0 = (row0.astype(jnp.float32) + 0.5 - intrinsics.cy) / f
  x, y, z = ([p[:, k, c] for k in range(3)] for c in range(3))
  e0 = edges_soa(x, y, z, dx0, dy0)                               # 3 x [F]
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
  # A tuple of [F] arrays rather than one [F, 13] array.
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


def default_chunk_size(intrinsics: Intrinsics) -> int:
  """Fragment slots per iteration of the large-triangle path (a static shape)."""
  return max(4096, intrinsics.width * intrinsics.height // 2)


@functools.partial(jax.jit, static_argnames=("intrinsics", "cull_backfaces", "near",
                                             "chunk_size", "footprint", "barycentrics"))
def rasterize_batch(points, triangles, intrinsics: Intrinsics, cull_backfaces: bool,
                    near: float, chunk_size: Optional[int], footprint: int,
                    barycentrics: bool = True) -> Fragments:
  """Rasterizes a batch [B, V, 3] as one problem of B * F triangles drawn into
  B * H * W pixels (see ``rasterize.rasterize`` for the arguments). Global
  triangle ids ``b * F + f`` keep the smaller-id tie-break."""
  # Visibility is computed in float32 whatever the input precision (as the kernel
  # does): the z-buffer scatters are float32, and float64 inverse depths never
  # equal their rounded maxima, which left float64 images empty.
  points = jax.lax.stop_gradient(points).astype(jnp.float32)
  batch, num_vertices = points.shape[:2]
  width, height = intrinsics.width, intrinsics.height
  num_pixels = batch * width * height
  chunk = batch * (chunk_size or default_chunk_size(intrinsics))
  num_faces = triangles.shape[0]
  image = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), num_faces)       # [B * F]
  all_triangles = (triangles[None] + (jnp.arange(batch, dtype=jnp.int32)
                                      * num_vertices)[:, None, None]).reshape(-1, 3)
  p = jnp.take(points.reshape(-1, 3), all_triangles, axis=0, mode="clip")   # [B * F, 3, 3]
  record, ncols, nrows = _triangle_setup(p, intrinsics, near, cull_backfaces)
  base = image * (width * height)
  small = (ncols <= footprint) & (nrows <= footprint)
  zbuf, idbuf = _draw_small(record, ncols, nrows, small, base, num_pixels, width,
                            near, cull_backfaces, footprint)
  zbuf, idbuf = _draw_large(record, jnp.where(small, 0, ncols * nrows), base, zbuf, idbuf,
                            width, chunk, near, cull_backfaces)
  return _resolve(points, triangles, intrinsics, zbuf, idbuf, ncols * nrows, barycentrics)


def _draw_small(record, ncols, nrows, small, base, num_pixels: int, width: int, near,
                cull_backfaces: bool, footprint: int):
  """The small triangles (``small`` [N] bool: the box holds at most footprint x
  footprint pixel centres), each as a fixed footprint x footprint block of
  fragments, drawn into fresh buffers.

  Args:
    record, ncols, nrows: of :func:`_triangle_setup` for the N = B * F
      triangle rows.
    base: [N] int32 flat index of the first pixel of each triangle's image.
    num_pixels: B * H * W.

  Returns:
    (zbuf [B * H * W] maximum inverse depth, 0 where nothing is drawn; idbuf
    [B * H * W] int32 triangle row, _NO_TRIANGLE where nothing is drawn).
  """
  ids = jnp.arange(ncols.shape[0], dtype=jnp.int32)
  col0 = record[10].astype(jnp.int32)
  row0 = record[11].astype(jnp.int32)
  k = footprint
  dc = jnp.tile(jnp.arange(k, dtype=jnp.int32), k)      # [k*k]
  dr = jnp.repeat(jnp.arange(k, dtype=jnp.int32), k)
  covered, inv_z = _fragments([r[:, None] for r in record], dc.astype(jnp.float32)[None, :],
                              dr.astype(jnp.float32)[None, :], near, cull_backfaces)
  covered &= small[:, None] & (dc[None, :] < ncols[:, None]) & (dr[None, :] < nrows[:, None])
  pix = jnp.where(covered, base[:, None] + (row0[:, None] + dr) * width + col0[:, None] + dc,
                  num_pixels)
  return _zbuffer_merge(
      pix.reshape(-1), inv_z.reshape(-1), jnp.broadcast_to(ids[:, None], pix.shape).reshape(-1),
      jnp.zeros((num_pixels,), jnp.float32), jnp.full((num_pixels,), _NO_TRIANGLE, jnp.int32))


def _draw_large(record, big_counts, base, zbuf, idbuf, width: int, chunk: int, near,
                cull_backfaces: bool):
  """The other triangles (``big_counts`` [N]: their box areas, 0 for the small
  ones), one fragment slot per pixel of their box, ``chunk`` slots at a time
  (a while_loop), merged into the buffers of :func:`_draw_small`."""
  num_pixels = zbuf.shape[0]
  big_starts = jnp.cumsum(big_counts) - big_counts
  total = big_starts[-1] + big_counts[-1]

  def body(state):
    index, zbuf, idbuf = state
    tri, local, valid = expand(big_counts, big_starts, index * chunk, chunk)
    rec = [gather(r, tri) for r in record]           # _RECORD x [S]
    ncol = rec[12].astype(jnp.int32)
    drow = local // ncol
    dcol = local - drow * ncol
    covered, inv_z = _fragments(rec, dcol.astype(jnp.float32), drow.astype(jnp.float32),
                                near, cull_backfaces)
    covered &= valid
    col = rec[10].astype(jnp.int32) + dcol
    row = rec[11].astype(jnp.int32) + drow
    pix = jnp.where(covered, gather(base, tri) + row * width + col, num_pixels)
    zbuf, idbuf = _zbuffer_merge(pix, inv_z, tri, zbuf, idbuf)
    return index + 1, zbuf, idbuf

  num_chunks = (total + chunk - 1) // chunk
  _, zbuf, idbuf = jax.lax.while_loop(lambda s: s[0] < num_chunks, body,
                                      (jnp.int32(0), zbuf, idbuf))
  return zbuf, idbuf


def _resolve(points, triangles, intrinsics: Intrinsics, zbuf, idbuf, counts,
             barycentrics: bool) -> Fragments:
  """:class:`Fragments` of the batch from the merged buffers; ``counts`` [B * F]:
  the box areas of the triangle rows."""
  batch = points.shape[0]
  width, height = intrinsics.width, intrinsics.height
  num_faces = triangles.shape[0]
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


def _barycentrics_batch(points, triangle_id, triangles, intrinsics: Intrinsics):
  """Perspective-correct barycentrics: 3-tuple of [B, H, W] (0 on background),
  and the vertex rows of :func:`vertex_coordinates`."""
  coords, vid = vertex_coordinates(points, triangle_id, triangles)
  dx, dy = pixel_rays(intrinsics)
  e = edges_soa(*coords, dx, dy)
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
    fragments: the output of ``rasterize.rasterize`` for these points.

  Returns:
    [(B,) H, W, 3], zero on background pixels.
  """
  if points.ndim == 2:
    return _barycentrics_jit(points[None], fragments.triangle_id[None], triangles,
                             intrinsics=intrinsics)[0]
  return _barycentrics_jit(points, fragments.triangle_id, triangles, intrinsics=intrinsics)
