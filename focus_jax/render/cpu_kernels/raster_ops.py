"""The CPU backend of the rasterizer ops (``rasterize.py`` dispatches here): the
C++ kernels of this package (through calls.py) wired into JAX autodiff, each
with the batch layout of its pure-JAX counterpart.

* :func:`rasterize`: the z-buffer kernel (rasterize.cc); no gradient.
* :func:`interpolate`: the interpolation kernel and its transpose
  (interpolate.cc) as a ``custom_vjp``.
* :func:`antialias`: the pair search in C++ (antialias.cc), the blending of
  the pairs found, and so its gradient, in JAX.
* :func:`soft_rasterize`: the SoftRas kernels (soft_forward.cc and the
  hand-written transpose soft_backward.cc) as a ``custom_vjp``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from focus_jax.render.antialiasing import blend, max_pairs
from focus_jax.render.camera import Intrinsics
from focus_jax.render.cpu_kernels import calls
from focus_jax.render.geometry import edges_soa
from focus_jax.render.soft import SoftOutput
from focus_jax.render.visibility import Fragments


@functools.partial(jax.jit, static_argnames=("intrinsics", "cull_backfaces", "near",
                                             "barycentrics"))
def rasterize(points, triangles, intrinsics: Intrinsics, cull_backfaces: bool, near: float,
              barycentrics: bool = True) -> Fragments:
  """``rasterize.rasterize`` of a batch [B, V, 3] with the C++ kernel."""
  points = jax.lax.stop_gradient(points).astype(jnp.float32)
  tid, bary, depth, num_fragments = calls.rasterize(points, triangles, intrinsics, near,
                                                    cull_backfaces, barycentrics)
  return Fragments(triangle_id=tid, barycentric=bary, depth=depth, mask=tid >= 0,
                   num_fragments=num_fragments)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _interpolate(attributes, points, triangle_id, triangles, intrinsics):
  return calls.interpolate(attributes, points, triangle_id, triangles, intrinsics)


def _interpolate_fwd(attributes, points, triangle_id, triangles, intrinsics):
  out = calls.interpolate(attributes, points, triangle_id, triangles, intrinsics)
  return out, (attributes, points, triangle_id, triangles)


def _interpolate_bwd(intrinsics, saved, g):
  """The C++ transpose: the pure-JAX backward pass per pixel, in one pass."""
  attributes, points, triangle_id, triangles = saved
  d_attributes, d_points = calls.interpolate_grad(attributes, points, triangle_id,
                                                  triangles, intrinsics, g)
  return (d_attributes.astype(attributes.dtype), d_points.astype(points.dtype), None, None)


_interpolate.defvjp(_interpolate_fwd, _interpolate_bwd)


@functools.partial(jax.jit, static_argnames=("intrinsics",))
def interpolate(attributes, points, triangle_id, triangles, intrinsics: Intrinsics):
  """``rasterize.interpolate`` of a batch (attributes [B, V, C]) with the C++
  kernels (forward and backward)."""
  return _interpolate(attributes, points, triangle_id, triangles, intrinsics)


@functools.partial(jax.jit, static_argnames=("intrinsics",))
def antialias(layers, points, triangle_id, depth, triangles, neighbours,
              intrinsics: Intrinsics):
  """``rasterize.antialias`` of a tuple of [B, H, W, C_i] layers with the pair
  search in the C++ kernel: only the pairs that do blend reach the
  differentiable part. Returns the tuple."""
  batch, height, width, _ = layers[0].shape
  pairs, count = _search_pairs(points, triangles, (triangle_id, depth, neighbours), intrinsics,
                               _pair_budget(batch, height, width))
  return _blend_pair_list(layers, points, triangles, pairs, count,
                          (triangle_id, depth, neighbours), intrinsics)


def _blend_pairs(image, points, triangles, pairs, intrinsics: Intrinsics):
  """Blends the pixel pairs found by ``calls.silhouette_pairs``
  (differentiable): the same crossing fraction and blending as
  ``antialiasing._antialias_pairs``, for pairs whose silhouette triangle and
  edge are already known.

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
  e_in = edges_soa(*pv, dx_in, dy_in)
  e_out = edges_soa(*pv, dx_in + sign * hx, dy_in + sign * hy)
  orient = jax.lax.stop_gradient(jnp.where(e_in[0] + e_in[1] + e_in[2] < 0, -1.0, 1.0))
  pick = lambda e: jnp.where(edge == 2, e[2], jnp.where(edge == 1, e[1], e[0])) * orient
  ei, eo = pick(e_in), pick(e_out)
  denom = jnp.where(used, ei - eo, 1.0)
  t = jnp.where(used, ei / denom, 0.5)
  return blend(image, pix_a, pix_b, a_front, t)


def _pair_budget(batch, height, width):
  """Rows of the pair list asked of the kernel first: the pairs that blend are
  about 2x the silhouette length, ~H W / 200 per image for a frontal face (the
  candidate budget of ``antialiasing.max_pairs`` / 4); a frame with more takes a
  second, full-size search (see :func:`_on_compact_rows`)."""
  num_pairs = batch * (height * (width - 1) + (height - 1) * width)
  return min(num_pairs, max_pairs(batch, height, width) // 4)


def _search_pairs(points, triangles, search, intrinsics, capacity=None):
  """``calls.silhouette_pairs``; ``search`` = (triangle_id, depth,
  neighbours)."""
  triangle_id, depth, neighbours = search
  return calls.silhouette_pairs(jax.lax.stop_gradient(points), triangle_id, depth,
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _soft_core(points, attributes, background, triangles, params, static):
  return _soft_fwd(points, attributes, background, triangles, params, static)[0]


def _soft_fwd(points, attributes, background, triangles, params, static):
  intrinsics, kwargs = static
  image, alpha, *residuals = calls.soft_rasterize(
      points, attributes, background, triangles, params, intrinsics, **dict(kwargs))
  return (image, alpha), (points, attributes, triangles, params, tuple(residuals), image)


def _soft_bwd(static, saved, g):
  """The C++ transpose: the fragments are recomputed from the vertices and
  their gradients go straight to the vertices (no per-fragment residuals).
  sigma and gamma get no gradient."""
  intrinsics, kwargs = static
  points, attributes, triangles, params, residuals, image = saved
  d_points, d_attributes, d_background = calls.soft_rasterize_grad(
      points, attributes, triangles, params, residuals, image, g[0], g[1], intrinsics,
      **dict(kwargs))
  return (d_points.astype(points.dtype), d_attributes.astype(attributes.dtype), d_background,
          None, jnp.zeros_like(params))


_soft_core.defvjp(_soft_fwd, _soft_bwd)


@functools.partial(jax.jit, static_argnames=(
    "intrinsics", "zrange", "eps", "near", "cull_backfaces", "cutoff"))
def soft_rasterize(points, attributes, background, triangles, intrinsics: Intrinsics,
                       sigma, gamma, zrange, eps: float, near: float, cull_backfaces: bool,
                       cutoff: float):
  """``rasterize.soft_rasterize`` of a batch [B, V, 3] with the C++ kernels."""
  sigma = jnp.asarray(sigma, jnp.float32)
  # As in soft._soft_rasterize_batch (float32 arithmetic on a possibly traced sigma).
  radius = jnp.sqrt(sigma * math.log(1.0 / cutoff - 1.0))
  params = jnp.stack([sigma, jnp.asarray(gamma, jnp.float32), radius])
  static = (intrinsics, (("near", near), ("cull_backfaces", cull_backfaces), ("eps", eps),
                         ("depth_range", zrange), ("cutoff", cutoff)))
  image, alpha = _soft_core(points, attributes, background, triangles, params, static)
  return SoftOutput(image=image, alpha=alpha,
                    overflow=jnp.zeros(points.shape[:1], jnp.int32))
