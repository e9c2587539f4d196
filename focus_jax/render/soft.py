"""SoftRas-style probabilistic rasterization in pure JAX (see
``rasterize.soft_rasterize`` for the model and the arguments).

The batch is one flat problem (B * F triangles into B * H * W pixels, as in
visibility.py). Each triangle's values (projected vertices, inverse depths,
edge vectors, attributes) are set up once (:func:`_soft_triangles`), then
gathered once per tile of footprint² fragments (:func:`_soft_aggregate`); the
fragment values (:func:`_soft_fragments`) are recomputed in the backward pass
rather than stored, and batches of more than ``_SOFT_GROUP_TRIANGLES``
triangles in all go in groups of images (bounded memory).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from focus_jax.render.camera import Intrinsics
from focus_jax.render.geometry import columns, expand, gather, screen_bounds

# Soft rasterization of larger batches goes in groups of at most this many
# triangles (images x faces), which bounds its memory (fragment-sized arrays).
_SOFT_GROUP_TRIANGLES = 1 << 19


@flax.struct.dataclass
class SoftOutput:
  """Result of ``rasterize.soft_rasterize`` (leading batch axes when batched).

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
  vid = columns(rows)
  tables = columns(points.reshape(-1, 3))
  x, y, z = (tuple(gather(tables[c], vid[k]) for k in range(3)) for c in range(3))
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
  atables = columns(attributes.reshape(-1, attributes.shape[-1]))
  attr = tuple(tuple(gather(t, vid[k]) for k in range(3)) for t in atables)
  p = jax.lax.stop_gradient(jnp.stack([jnp.stack([x[k], y[k], z[k]], -1) for k in range(3)], 1))
  col0, row0, ncols, nrows = screen_bounds(p, intrinsics, near, pad=radius)
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
  tri, local, tile_valid = expand(counts, starts, 0, num_tiles)
  tc = jnp.maximum(gather(tile_cols, tri), 1)
  tr = local // tc
  tc = local - tr * tc
  dc = jnp.tile(jnp.arange(k, dtype=jnp.int32), k)[None, :]          # [1, k*k]
  dr = jnp.repeat(jnp.arange(k, dtype=jnp.int32), k)[None, :]
  dcol = (tc * k)[:, None] + dc
  drow = (tr * k)[:, None] + dr
  valid = (tile_valid[:, None] & (dcol < gather(ncols, tri)[:, None])
           & (drow < gather(nrows, tri)[:, None]))
  col = gather(col0, tri)[:, None] + dcol
  row = gather(row0, tri)[:, None] + drow
  pix = (gather(base, tri)[:, None] + row * width + col)
  t_fields = jax.tree_util.tree_map(lambda a: gather(a, tri)[:, None], fields)
  # Rematerialised in the backward pass: recomputing the fragment values from
  # the per-tile fields is cheaper than storing and re-reading a dozen
  # fragment-sized residuals (memory traffic bounds this code).
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


@functools.partial(jax.jit, static_argnames=(
    "intrinsics", "zrange", "eps", "near", "cull_backfaces", "footprint", "max_fragments",
    "cutoff"))
def _soft_rasterize_batch(points, attributes, background, triangles, intrinsics: Intrinsics,
                          sigma: float, gamma: float, zrange, eps: float, near: float,
                          cull_backfaces: bool, footprint: int, max_fragments: Optional[int],
                          cutoff: float):
  """Soft rasterization of a batch [B, V, 3] as one flat problem of B * F
  triangles drawn into B * H * W pixels."""
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


def soft_rasterize_batch(points, attributes, background, triangles, intrinsics: Intrinsics, *,
                         sigma, gamma, depth_range, eps: float, near: float,
                         cull_backfaces: bool, footprint: int, max_fragments: Optional[int],
                         cutoff: float) -> SoftOutput:
  """Soft rasterization of points [B, V, 3] with attributes [B, V, C] over
  background [B, H, W, C] (see ``rasterize.soft_rasterize`` for the other
  arguments), in groups of images when the batch has more than
  ``_SOFT_GROUP_TRIANGLES`` triangles in all."""
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
