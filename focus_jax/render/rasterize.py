"""Differentiable rasterization of triangle meshes: the public ops, and the one
place where each picks its backend.

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

Each op has two backends with the same results: the pure-JAX modules
(visibility.py, interpolation.py, antialiasing.py and soft.py, over
geometry.py), which run on GPU and TPU, and the C++ kernels of
:mod:`focus_jax.render.cpu_kernels`, the default on the CPU backend (see
:func:`soft_rasterize` for where soft aggregation rounds differently).
``native=`` chooses per call: None (default) the kernels when JAX's default
backend is the CPU, the inputs are float32 and the kernels are available
(``FOCUS_JAX_NATIVE=0`` turns them off); True the kernels (an error if they are
unavailable); False the pure-JAX code.

Geometry enters in **camera space** ([V, 3] mm, x right, y down, z = depth, see
:mod:`focus_jax.render.camera`) together with the :class:`Intrinsics`, so that
triangles that cross or lie behind the camera plane are clipped exactly (see
geometry.py for the conventions). All functions take one image's geometry
([V, 3]) or a batch ([B, V, 3]) and work under ``jit``, ``vmap``, ``grad`` and
``pmap``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from focus_jax.render import antialiasing, cpu_kernels, interpolation, soft, visibility
from focus_jax.render.antialiasing import edge_neighbours
from focus_jax.render.camera import Intrinsics
from focus_jax.render.cpu_kernels import raster_ops
from focus_jax.render.soft import SoftOutput
from focus_jax.render.visibility import Fragments, barycentrics, default_chunk_size

__all__ = ["Fragments", "SoftOutput", "antialias", "barycentrics", "default_chunk_size",
           "edge_neighbours", "interpolate", "rasterize", "soft_rasterize"]


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
  batched = points if points.ndim == 3 else points[None]
  kwargs = dict(intrinsics=intrinsics, cull_backfaces=cull_backfaces, near=near,
                barycentrics=barycentrics)
  if native:
    out = raster_ops.rasterize(batched, triangles, **kwargs)
  else:
    out = visibility.rasterize_batch(batched, triangles, chunk_size=chunk_size,
                                     footprint=footprint, **kwargs)
  return out if points.ndim == 3 else jax.tree_util.tree_map(lambda x: x[0], out)


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
  batch_fn = raster_ops.interpolate if native else interpolation.interpolate_batch
  if attributes.ndim == 2 and points.ndim == 3:
    attributes = jnp.broadcast_to(attributes, (points.shape[0],) + attributes.shape)
  if attributes.ndim == 2:
    return batch_fn(attributes[None], points[None], fragments.triangle_id[None], triangles,
                    intrinsics=intrinsics)[0]
  return batch_fn(attributes, points, fragments.triangle_id, triangles, intrinsics=intrinsics)


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
  search continues through up to two (``antialiasing._WALK_STEPS``) neighbouring triangles along
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
  batch_fn = raster_ops.antialias if native else antialiasing.antialias_batch
  out = batch_fn(layers, points, tid, depth, triangles, neighbours, intrinsics=intrinsics)
  if unbatched:
    out = tuple(x[0] for x in out)
  return tuple(out) if is_tuple else out[0]


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

  Implementation: soft.py (pure JAX, a fragment budget per image) and the
  CPU kernels (soft_forward.cc, soft_backward.cc: no budget, a hand-written
  backward pass that recomputes the fragments).

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
  unbatched = points.ndim == 2
  points, attributes, background = _soft_inputs(points, attributes, background, intrinsics)
  kwargs = dict(intrinsics=intrinsics, sigma=sigma, gamma=gamma, eps=eps, near=near,
                cull_backfaces=cull_backfaces, cutoff=cutoff)
  if native:
    out = raster_ops.soft_rasterize(points, attributes, background, triangles,
                                    zrange=tuple(depth_range), **kwargs)
  else:
    out = soft.soft_rasterize_batch(points, attributes, background, triangles,
                                    depth_range=depth_range, footprint=footprint,
                                    max_fragments=max_fragments, **kwargs)
  return jax.tree_util.tree_map(lambda x: x[0], out) if unbatched else out


def _soft_inputs(points, attributes, background, intrinsics: Intrinsics):
  """:func:`soft_rasterize`'s arguments with a batch axis: (points [B, V, 3],
  attributes [B, V, C], background [B, H, W, C] float32)."""
  if background is None:
    background = jnp.zeros((attributes.shape[-1],), jnp.float32)
  background = jnp.asarray(background, jnp.float32)
  if points.ndim == 2:
    points = points[None]
    attributes = attributes[None] if attributes.ndim == 2 else attributes
    background = background if background.ndim == 1 else background[None]
  if attributes.ndim == 2:
    attributes = jnp.broadcast_to(attributes, (points.shape[0],) + attributes.shape)
  background = jnp.broadcast_to(background, points.shape[:1] + (
      intrinsics.height, intrinsics.width, attributes.shape[-1]))
  return points, attributes, background
