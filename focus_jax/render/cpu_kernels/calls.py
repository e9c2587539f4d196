"""Thin bindings: one ``jax.ffi.ffi_call`` per kernel entry point of the
library (registered by library.py), with the shapes of its results and its
static attributes. No autodiff here (see raster_ops.py and vertex_ops.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rasterize(points, triangles, intrinsics, near: float, cull_backfaces: bool,
              barycentrics: bool = True):
  """Z-buffer visibility of a batch (the kernel behind ``rasterize.rasterize``).

  Args:
    points: [B, V, 3] float32 camera-space vertices (mm), no gradient.
    triangles: [F, 3] int32 vertex indices, shared by the batch.
    intrinsics: :class:`~focus_jax.render.camera.Intrinsics` (static).
    near: near-plane depth (mm).
    cull_backfaces: drop triangles seen from the back.
    barycentrics: also compute the barycentrics (static); False returns None
      for them and skips their per-pixel work and memory.

  Returns:
    (triangle_id [B, H, W] int32, -1 on background; barycentric [B, H, W, 3]
    float32 or None; depth [B, H, W] float32 in mm; fragments [B] int32, the
    summed clipped bounding-box areas of the drawn triangles). Zeros on
    background.
  """
  batch = points.shape[0]
  shape = (batch, intrinsics.height, intrinsics.width)
  ids, depth = jax.ShapeDtypeStruct(shape, jnp.int32), jax.ShapeDtypeStruct(shape, jnp.float32)
  count = jax.ShapeDtypeStruct((batch,), jnp.int32)
  args = (points.astype(jnp.float32), triangles.astype(jnp.int32))
  attrs = dict(near=np.float32(near), cull=np.int32(cull_backfaces), **_camera(intrinsics))
  if not barycentrics:
    call = jax.ffi.ffi_call("focus_rasterize_depth", (ids, depth, count),
                            vmap_method="broadcast_all")
    tid, depth, num_fragments = call(*args, **attrs)
    return tid, None, depth, num_fragments
  call = jax.ffi.ffi_call(
      "focus_rasterize", (ids, jax.ShapeDtypeStruct(shape + (3,), jnp.float32), depth, count),
      vmap_method="broadcast_all")
  return call(*args, **attrs)


def interpolate(attributes, points, triangle_id, triangles, intrinsics):
  """Attributes at every pixel (the forward kernel of ``rasterize.interpolate``).

  Args:
    attributes: [B, V, C] float32; points: [B, V, 3] float32 camera-space
      vertices (mm); triangle_id: [B, H, W] int32 (-1 = background);
      triangles: [F, 3] int32.

  Returns:
    [B, H, W, C] float32, 0 on background.
  """
  shape = triangle_id.shape + attributes.shape[-1:]
  call = jax.ffi.ffi_call("focus_interpolate", jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method="broadcast_all")
  return call(attributes.astype(jnp.float32), points.astype(jnp.float32), triangle_id,
              triangles.astype(jnp.int32), **_camera(intrinsics))


def interpolate_grad(attributes, points, triangle_id, triangles, intrinsics, cotangent):
  """The transpose of :func:`interpolate` w.r.t. attributes and points.

  Returns:
    (d_attributes [B, V, C], d_points [B, V, 3]) float32.
  """
  call = jax.ffi.ffi_call(
      "focus_interpolate_grad",
      (jax.ShapeDtypeStruct(attributes.shape, jnp.float32),
       jax.ShapeDtypeStruct(points.shape, jnp.float32)),
      vmap_method="broadcast_all")
  return call(attributes.astype(jnp.float32), points.astype(jnp.float32), triangle_id,
              triangles.astype(jnp.int32), cotangent.astype(jnp.float32), **_camera(intrinsics))


def silhouette_pairs(points, triangle_id, depth, triangles, neighbours, intrinsics,
                     capacity=None):
  """The adjacent pixel pairs that straddle a silhouette edge (the discrete half
  of ``rasterize.antialias``; the blending is ``raster_ops._blend_pairs``).

  Args:
    points: [B, V, 3] float32 camera-space vertices (mm), no gradient;
      triangle_id, depth: [B, H, W] from ``rasterize``; triangles, neighbours:
      [F, 3] int32 (see ``rasterize.edge_neighbours``).
    capacity: rows of the pair list (static); None: all adjacent pairs,
      B (H (W - 1) + (H - 1) W), which always suffices.

  Returns:
    (pairs [capacity, 3] int32, count [1] int32, the number of pairs found,
    which may exceed the capacity: only the first ``capacity`` are kept). The
    first ``min(count, capacity)`` rows are (flat index over [B, H, W] of the
    left / top pixel; flags: bit 0 vertical pair, bit 1 that pixel is in
    front, bits 2-3 the edge of the triangle crossed; the triangle); the other
    rows are padding with pixel B H W.
  """
  if capacity is None:
    batch, height, width = triangle_id.shape
    capacity = batch * (height * (width - 1) + (height - 1) * width)
  call = jax.ffi.ffi_call(
      "focus_silhouette_pairs",
      (jax.ShapeDtypeStruct((capacity, 3), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.int32)),
      vmap_method="broadcast_all")
  return call(points.astype(jnp.float32), triangle_id, depth.astype(jnp.float32),
              triangles.astype(jnp.int32), neighbours.astype(jnp.int32), **_camera(intrinsics))


def vertex_normals(verts, triangles, eps: float):
  """Area-weighted unit vertex normals (the kernel behind
  ``shading.vertex_normals``): [..., V, 3] float32 -> [..., V, 3]."""
  call = jax.ffi.ffi_call("focus_vertex_normals",
                          jax.ShapeDtypeStruct(verts.shape, jnp.float32),
                          vmap_method="broadcast_all")
  return call(verts.astype(jnp.float32), triangles.astype(jnp.int32), eps=np.float32(eps))


def vertex_normals_grad(verts, triangles, eps: float, cotangent):
  """The transpose of :func:`vertex_normals` w.r.t. ``verts``."""
  call = jax.ffi.ffi_call("focus_vertex_normals_grad",
                          jax.ShapeDtypeStruct(verts.shape, jnp.float32),
                          vmap_method="broadcast_all")
  return call(verts.astype(jnp.float32), triangles.astype(jnp.int32),
              cotangent.astype(jnp.float32), eps=np.float32(eps))


def vertex_stage(verts, triangles, albedo, rotation, translation, light, eps: float):
  """The per-vertex stage of ``render.render`` (the kernel behind
  ``render.vertex_stage``).

  Args:
    verts, albedo: [..., V, 3] float32 model-space vertices (mm) and albedo;
      triangles: [F, 3] int32; rotation: [..., 3, 3] model-to-camera rotation;
      translation: [..., 3] camera-space position of the model origin (mm);
      light: [..., 9, 3] SH light; eps: as ``shading.vertex_normals``.

  Returns:
    (camera-space vertices, camera-space unit vertex normals, shaded colours,
    summed face normals in model space: the residual of
    :func:`vertex_stage_grad`), each [..., V, 3] float32.
  """
  f32 = jax.ShapeDtypeStruct(verts.shape, jnp.float32)
  call = jax.ffi.ffi_call("focus_vertex_stage", (f32, f32, f32, f32),
                          vmap_method="broadcast_all")
  return call(verts.astype(jnp.float32), triangles.astype(jnp.int32),
              albedo.astype(jnp.float32), rotation.astype(jnp.float32),
              translation.astype(jnp.float32), light.astype(jnp.float32), eps=np.float32(eps))


def vertex_stage_grad(verts, triangles, albedo, rotation, translation, light, summed, g_cam,
                      g_normals, g_colors, eps: float):
  """The transpose of :func:`vertex_stage` w.r.t. verts, albedo, rotation,
  translation and light, given its ``summed`` residual and the cotangents of
  its first three results.

  Returns:
    (d_verts, d_albedo, d_rotation, d_translation, d_light) float32, shaped as
    those inputs.
  """
  f32 = lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32)
  call = jax.ffi.ffi_call(
      "focus_vertex_stage_grad",
      (f32(verts), f32(albedo), f32(rotation), f32(translation), f32(light)),
      vmap_method="broadcast_all")
  return call(verts.astype(jnp.float32), triangles.astype(jnp.int32),
              albedo.astype(jnp.float32), rotation.astype(jnp.float32),
              translation.astype(jnp.float32), light.astype(jnp.float32), summed,
              g_cam.astype(jnp.float32), g_normals.astype(jnp.float32),
              g_colors.astype(jnp.float32), eps=np.float32(eps))


def _soft_attributes(intrinsics, near, cull_backfaces, eps, depth_range, cutoff):
  """Static attributes of the soft kernels: the constants of
  ``soft._soft_fragments`` and ``_soft_aggregate``, rounded to float32 as
  JAX rounds them (Python-float arithmetic first, then float32)."""
  zn, zf = depth_range
  return dict(near=np.float32(near), cull=np.int32(cull_backfaces), eps=np.float32(eps),
              zf=np.float32(zf), zden=np.float32(zf - zn), cutoff=np.float32(cutoff),
              keep_den=np.float32(1.0 - cutoff), **_camera(intrinsics))


def soft_rasterize(points, attributes, background, triangles, params, intrinsics, *, near,
                   cull_backfaces, eps, depth_range, cutoff):
  """SoftRas aggregation of a batch (the kernel behind ``rasterize.soft_rasterize``).

  Args:
    points: [B, V, 3] float32 camera-space vertices (mm); attributes: [B, V, C]
      float32; background: [B, H, W, C] float32; triangles: [F, 3] int32.
    params: [3] float32 (sigma px², gamma, radius px: the box margin), which
      may be traced values.
    near, cull_backfaces, eps, depth_range, cutoff: as ``soft_rasterize``
      (static).

  Returns:
    (image [B, H, W, C], alpha [B, H, W], and the residuals of
    :func:`soft_rasterize_grad`: zmax, total, miss [B, H, W] float32 and the
    per-triangle set-up [B, F + 1, 16] int32, the drawn triangles' projected
    vertices and pixel boxes ordered by first row, so that the backward pass
    does not redo it).

  Same formulas as ``soft._soft_triangles`` / ``_soft_fragments`` /
  ``_soft_aggregate``, fragment by fragment over each triangle's padded
  bounding box (no fragment budget), several fragments at a time (SIMD lanes,
  same IEEE rounding per lane), with differences in rounding only: exp is a
  polynomial within 1 ulp (not XLA's), as is the sigmoid built on it; the
  per-pixel sums run in another order (triangles sorted by first row) and
  online: each pixel's sums are rescaled by ``exp((m_old - m) / gamma)`` when
  its largest scaled depth m so far grows; the coverage is ``1 - prod(1 - D)``
  (with ``1 - D = (1 - sigmoid) / (1 - cutoff)``) instead of
  ``1 - exp(sum log(1 - D))``; and the backward pass sums each triangle's
  gradient lane by lane. The depth softmax amplifies such rounding by up to
  ``1 / gamma`` (see tests/test_cpu_kernels.py).
  """
  shape = background.shape[:-1]
  f32 = lambda s: jax.ShapeDtypeStruct(s, jnp.float32)
  boxes = jax.ShapeDtypeStruct(points.shape[:-2] + (triangles.shape[-2] + 1, 16), jnp.int32)
  call = jax.ffi.ffi_call("focus_soft_rasterize",
                          (f32(background.shape), f32(shape), f32(shape), f32(shape),
                           f32(shape), boxes), vmap_method="broadcast_all")
  return call(points.astype(jnp.float32), attributes.astype(jnp.float32),
              background.astype(jnp.float32), triangles.astype(jnp.int32),
              params.astype(jnp.float32),
              **_soft_attributes(intrinsics, near, cull_backfaces, eps, depth_range, cutoff))


def soft_rasterize_grad(points, attributes, triangles, params, residuals, image, g_image,
                        g_alpha, intrinsics, *, near, cull_backfaces, eps, depth_range, cutoff):
  """The transpose of :func:`soft_rasterize` w.r.t. points, attributes and
  background; ``residuals`` = (zmax, total, miss, set-up) of the forward call.

  Returns:
    (d_points [B, V, 3], d_attributes [B, V, C], d_background [B, H, W, C]).
  """
  f32 = lambda s: jax.ShapeDtypeStruct(s, jnp.float32)
  call = jax.ffi.ffi_call("focus_soft_rasterize_grad",
                          (f32(points.shape), f32(attributes.shape), f32(image.shape)),
                          vmap_method="broadcast_all")
  zmax, total, miss, boxes = residuals
  return call(points.astype(jnp.float32), attributes.astype(jnp.float32),
              triangles.astype(jnp.int32), params.astype(jnp.float32), zmax, total, miss, boxes,
              image, g_image.astype(jnp.float32), g_alpha.astype(jnp.float32),
              **_soft_attributes(intrinsics, near, cull_backfaces, eps, depth_range, cutoff))


def _camera(intrinsics):
  return dict(width=np.int32(intrinsics.width), height=np.int32(intrinsics.height),
              focal=np.float32(intrinsics.focal), cx=np.float32(intrinsics.cx),
              cy=np.float32(intrinsics.cy))
