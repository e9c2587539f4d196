"""The CPU backend of the per-vertex ops (``shading.vertex_normals`` and
``render.vertex_stage`` dispatch here): the kernels of vertex.cc (through
calls.py) with their hand-written transposes as ``custom_vjp``s.

The fused vertex stage replaces the JAX composition of ``camera.to_camera``,
``shading.vertex_normals``, ``camera.rotate_to_camera`` and ``shading.shade``,
whose small [B, V, 3] x [3, 3] products and transposes XLA:CPU runs slowly;
same results up to float32 rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from focus_jax.render import camera as camera_lib
from focus_jax.render.cpu_kernels import calls


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def vertex_normals(verts, triangles, eps):
  """``shading.vertex_normals`` with the C++ kernel (forward and backward):
  verts [..., V, 3] float32, triangles [F, 3] -> [..., V, 3]."""
  return calls.vertex_normals(verts, triangles, eps)


def _vertex_normals_fwd(verts, triangles, eps):
  return calls.vertex_normals(verts, triangles, eps), (verts, triangles)


def _vertex_normals_bwd(eps, res, g):
  verts, triangles = res
  return calls.vertex_normals_grad(verts, triangles, eps, g).astype(verts.dtype), None


vertex_normals.defvjp(_vertex_normals_fwd, _vertex_normals_bwd)


def vertex_stage(verts, albedo, angles, translation, light, triangles, eps: float):
  """``render.vertex_stage`` with one C++ kernel for the whole stage, forward
  and backward (same arguments, and ``eps`` of ``shading.vertex_normals``)."""
  batch = jnp.broadcast_shapes(verts.shape[:-2], albedo.shape[:-2], angles.shape[:-1],
                               translation.shape[:-1], light.shape[:-2])
  expand = lambda x, tail: jnp.broadcast_to(x, batch + tail)
  return _vertex_stage(
      expand(verts, verts.shape[-2:]), expand(albedo, verts.shape[-2:]),
      expand(camera_lib.camera_rotation(angles), (3, 3)),
      expand(camera_lib.camera_translation(translation), (3,)), expand(light, light.shape[-2:]),
      triangles, eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _vertex_stage(verts, albedo, rotation, translation, light, triangles, eps):
  return _vertex_stage_fwd(verts, albedo, rotation, translation, light, triangles, eps)[0]


def _vertex_stage_fwd(verts, albedo, rotation, translation, light, triangles, eps):
  *out, summed = calls.vertex_stage(verts, triangles, albedo, rotation, translation, light, eps)
  return tuple(out), (verts, albedo, rotation, translation, light, triangles, summed)


def _vertex_stage_bwd(eps, res, g):
  *inputs, triangles, summed = res
  verts, albedo, rotation, translation, light = inputs
  grads = calls.vertex_stage_grad(verts, triangles, albedo, rotation, translation, light,
                                  summed, *g, eps)
  return tuple(d.astype(x.dtype) for d, x in zip(grads, inputs)) + (None,)


_vertex_stage.defvjp(_vertex_stage_fwd, _vertex_stage_bwd)
