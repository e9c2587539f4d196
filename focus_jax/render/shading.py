"""Vertex normals, the real spherical-harmonics basis, and Lambertian SH shading.

Lighting follows the FOCUS reference: 3 SH bands (9 functions) per colour channel,
27 coefficients stored as ``[..., 9, 3]`` (band-major, then R, G, B). The shaded
colour of a vertex with albedo ``a`` and unit normal ``n`` (camera space) is::

    colour = a * sum_k  gamma[k, c] * Y_k(n)

with ``Y_k`` the *orthonormal* real SH functions (∫ Y_i Y_j dω = δ_ij over the unit
sphere). ``gamma`` thus already holds the irradiance coefficients — the
reference folds the Lambertian band attenuation (π, 2π/3, π/4) into the learned
light, and so do we. The default light is ambient with DC coefficient 0.7·2π, as
the reference initialises it (uniform irradiance 0.7·2π·Y_0 ≈ 1.24).

Order of the 9 functions (l, m): (0,0), (1,-1), (1,0), (1,1), (2,-2), (2,-1),
(2,0), (2,1), (2,2), i.e. 1, y, z, x, xy, yz, 3z²-1, xz, x²-y² (up to constants).
The reference's basis carries the Condon–Shortley phase (its odd-m functions have
the opposite sign); converting a reference light flips those coefficients.
"""

from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp

from focus_jax.render import cpu_kernels
from focus_jax.render.cpu_kernels import vertex_ops

NUM_SH = 9
# DC light coefficient of the reference initialisation.
DEFAULT_DC = 0.7 * 2.0 * math.pi

_C0 = 0.5 * math.sqrt(1.0 / math.pi)            # Y_00
_C1 = math.sqrt(3.0 / (4.0 * math.pi))          # Y_1m
_C2 = 0.5 * math.sqrt(15.0 / math.pi)           # Y_2,-2  Y_2,-1  Y_2,1
_C20 = 0.25 * math.sqrt(5.0 / math.pi)          # Y_20
_C22 = 0.25 * math.sqrt(15.0 / math.pi)         # Y_22


def face_normals(verts, triangles) -> jnp.ndarray:
  """Unnormalised face normals, length = 2 × triangle area.

  Args:
    verts: [..., V, 3] positions.
    triangles: [F, 3] int vertex indices, counter-clockwise = front.

  Returns:
    [..., F, 3] cross((v1 - v0), (v2 - v0)).
  """
  v0 = jnp.take(verts, triangles[:, 0], axis=-2)
  v1 = jnp.take(verts, triangles[:, 1], axis=-2)
  v2 = jnp.take(verts, triangles[:, 2], axis=-2)
  return jnp.cross(v1 - v0, v2 - v0)


# Added to the squared length before normalising a vertex normal (vertex_normals'
# default, also the fused vertex-stage kernel's in render.vertex_stage).
NORMALS_EPS = 1e-12


def vertex_normals(verts, triangles, eps: float = NORMALS_EPS, *,
                   native: Optional[bool] = None) -> jnp.ndarray:
  """Area-weighted unit vertex normals: [..., V, 3] -> [..., V, 3].

  Each vertex gets the sum of the unnormalised normals of its triangles (so larger
  triangles weigh more), normalised. Vertices in no triangle get a zero normal.
  Scatter-adds over faces (no Python loop over faces), computed vertex-major
  ([V, batch, 3]) so that gathers and scatters move whole rows of batch x 3 values.
  ``native``: the C++ CPU kernel instead (forward and backward; None =
  automatic, see :func:`focus_jax.render.cpu_kernels.resolve`).
  """
  if cpu_kernels.resolve(native, verts):
    return vertex_ops.vertex_normals(verts, triangles, eps)
  flat = jnp.reshape(verts, (-1,) + verts.shape[-2:])              # [N, V, 3]
  x = jnp.transpose(flat, (1, 0, 2))                               # [V, N, 3]
  p = [jnp.take(x, triangles[:, k], axis=0, mode="clip") for k in range(3)]
  face = jnp.cross(p[1] - p[0], p[2] - p[0])                       # [F, N, 3]
  summed = jnp.zeros_like(x)
  for corner in range(3):  # three static scatter-adds, not a loop over faces.
    summed = summed.at[triangles[:, corner]].add(face, mode="promise_in_bounds")
  summed = summed / jnp.sqrt(jnp.sum(summed * summed, axis=-1, keepdims=True) + eps)
  return jnp.reshape(jnp.transpose(summed, (1, 0, 2)), verts.shape)


def sh_basis(normals) -> jnp.ndarray:
  """The 9 orthonormal real SH functions at unit directions: [..., 3] -> [..., 9]."""
  x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
  return jnp.stack([
      jnp.full_like(x, _C0),
      _C1 * y, _C1 * z, _C1 * x,
      _C2 * x * y, _C2 * y * z, _C20 * (3.0 * z * z - 1.0), _C2 * x * z,
      _C22 * (x * x - y * y),
  ], axis=-1)


def default_light(batch_shape=(), dtype=jnp.float32) -> jnp.ndarray:
  """The reference's initial light: ambient, [*batch_shape, 9, 3]."""
  light = jnp.zeros((*batch_shape, NUM_SH, 3), dtype)
  return light.at[..., 0, :].set(DEFAULT_DC)


def irradiance(normals, light) -> jnp.ndarray:
  """SH irradiance: normals [..., N, 3], light [..., 9, 3] -> [..., N, 3]."""
  return jnp.einsum("...nk,...kc->...nc", sh_basis(normals), light, precision="highest")


def shade(albedo, normals, light) -> jnp.ndarray:
  """Lambertian colour: albedo [..., N, 3] × irradiance(normals, light) -> [..., N, 3]."""
  return albedo * irradiance(normals, light)


def light_from_vector(light27) -> jnp.ndarray:
  """Encoder layout -> [..., 9, 3]: 27 numbers ordered R(9), G(9), B(9) as the reference."""
  return jnp.swapaxes(jnp.reshape(light27, (*light27.shape[:-1], 3, NUM_SH)), -1, -2)

