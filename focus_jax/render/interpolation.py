"""Differentiable interpolation of per-vertex attributes in pure JAX.

The barycentrics are recomputed from the vertex positions of the triangle that
the rasterizer chose at each pixel, so gradients reach both the attributes and
the positions (not across visibility changes: see antialiasing.py). The
backward pass is hand-written: the per-pixel gradients of the 9 vertex
coordinates and 3 C attribute values are formed elementwise and materialised,
then each goes through one scalar scatter-add.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from focus_jax.render.geometry import columns, edges_soa, gather, pixel_rays, vertex_coordinates


def _interpolate_forward(attributes, points, triangle_id, triangles, intrinsics):
  """Interpolated channels and what the backward pass needs.

  Returns:
    (C-list of [B, H, W] channels, (vid, coords, bary, total, gathered attributes)).
  """
  shape = triangle_id.shape
  coords, vid = vertex_coordinates(points, triangle_id, triangles)
  dx, dy = pixel_rays(intrinsics)
  e = edges_soa(*coords, dx, dy)
  total = e[0] + e[1] + e[2]
  ok = (triangle_id >= 0) & (total != 0)
  total = jnp.where(ok, total, jnp.inf)
  # A division, not a multiplication by 1 / total (see cpu_kernels' notes).
  bary = tuple(ek / total for ek in e)
  # Channel by channel on [B, H, W] arrays.
  values = [tuple(gather(table, vid[k]).reshape(shape) for k in range(3))
            for table in columns(attributes)]
  channels = [bary[0] * v[0] + bary[1] * v[1] + bary[2] * v[2] for v in values]
  return channels, (vid, coords, bary, total, values)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _interpolate_core(attributes, points, triangle_id, triangles, intrinsics):
  channels, _ = _interpolate_forward(attributes, points, triangle_id, triangles, intrinsics)
  return jnp.stack(channels, -1)


def _interpolate_fwd(attributes, points, triangle_id, triangles, intrinsics):
  channels, res = _interpolate_forward(attributes, points, triangle_id, triangles, intrinsics)
  # The inputs themselves (alive anyway) carry the shapes and dtypes.
  return jnp.stack(channels, -1), (res, attributes, points)


def _interpolate_bwd(intrinsics, saved, g):
  """Hand-written transpose (see the module docstring)."""
  (vid, coords, bary, total, values), attr_spec, point_spec = saved
  num_rows = attr_spec.shape[0] * attr_spec.shape[1]
  dx, dy = pixel_rays(intrinsics)
  gc = [g[..., c] for c in range(g.shape[-1])]
  d_bary = [sum(gc[c] * values[c][k] for c in range(len(gc))) for k in range(3)]
  mean = d_bary[0] * bary[0] + d_bary[1] * bary[1] + d_bary[2] * bary[2]
  # Divisions again (see cpu_kernels' notes).
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


@functools.partial(jax.jit, static_argnames=("intrinsics",))
def interpolate_batch(attributes, points, triangle_id, triangles, intrinsics):
  """Attributes [B, V, C] at the pixels of triangle_id [B, H, W] (see
  ``rasterize.interpolate``): [B, H, W, C], 0 on background."""
  return _interpolate_core(attributes, points, triangle_id, triangles, intrinsics)
