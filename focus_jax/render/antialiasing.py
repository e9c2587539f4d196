"""Analytic silhouette antialiasing in pure JAX (nvdiffrast-style, see
``rasterize.antialias`` for the rule).

Pairs of adjacent pixels around triangles near a silhouette edge are found
without gradients over the whole image (:func:`_antialias_setup`), then blended
on a compact list of static size (:func:`_antialias_pairs`, with a full-size
fallback when a frame has more), so the cost of the differentiable part and of
its backward pass scales with the silhouette length. The silhouette edges come
from the mesh topology (:func:`edge_neighbours`): a boundary edge, or one
between triangles facing opposite ways.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.render.camera import Intrinsics
from focus_jax.render.geometry import edges_soa, gather

# Edge-steps the antialiasing walk may take beyond the front triangle to reach
# a silhouette edge between two pixel centres (0 = nvdiffrast's rule).
_WALK_STEPS = 2

# Host-side cache of edge neighbours: the mesh topology is fixed while the
# geometry changes, so it is computed once per distinct triangle array.
_NEIGHBOUR_CACHE = {}


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
    e_out = edges_soa(*pv, dx_in + sign_step * hx, dy_in + sign_step * hy)
    e_perp = edges_soa(*pv, dx_in + hy, dy_in + hx)
  elif axis == 1:
    dx_in = dxa + jnp.where(a_front, 0.0, step)
    dy_in = dya
    e_out = edges_soa(*pv, dx_in + sign_step * step, dy_in)
    e_perp = edges_soa(*pv, dx_in, dy_in + step)
  elif axis == 0:
    dx_in = dxa
    dy_in = dya + jnp.where(a_front, 0.0, step)
    e_out = edges_soa(*pv, dx_in, dy_in + sign_step * step)
    e_perp = edges_soa(*pv, dx_in + step, dy_in)
  e_in = edges_soa(*pv, dx_in, dy_in)
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
  # Vertex-major rows of B x 3 values (see cpu_kernels' notes).
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
  return jnp.where(tid >= 0, gather(tri_bits, row), 0)


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


def blend(image, pix_a, pix_b, a_front, t):
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
    return tuple(blend(layer, pix_a, pix_b, a_front, t) for layer in image)
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
  return blend(image, pix_a, pix_b, a_front, t)


def max_pairs(batch, height, width):
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
  small = min(num_pairs, max_pairs(batch, height, width))
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
  small = min(num_pairs, max_pairs(batch, height, width))
  d_image, d_points = jax.lax.cond(count <= small, branch(small), branch(num_pairs))
  return d_image, d_points, None, None, None, None


_antialias_core.defvjp(_antialias_fwd, _antialias_bwd)


@functools.partial(jax.jit, static_argnames=("intrinsics",))
def antialias_batch(layers, points, triangle_id, depth, triangles, neighbours,
                    intrinsics: Intrinsics):
  """Antialiases a tuple of [B, H, W, C_i] layers (see ``rasterize.antialias``);
  returns the tuple."""
  image = layers[0] if len(layers) == 1 else jnp.concatenate(layers, -1)
  out = _antialias_core(image, points, triangle_id, depth, triangles, neighbours, intrinsics)
  return tuple(jnp.split(out, np.cumsum([x.shape[-1] for x in layers])[:-1], axis=-1))
