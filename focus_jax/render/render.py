"""One call from morphable-model coefficients to an image: model -> camera -> SH
shading -> rasterization.

Shading is per vertex (Gouraud), as in the FOCUS reference: vertex normals of the
posed mesh are rotated into camera space, lit with the SH light and multiplied by
the albedo; the rasterizer then interpolates the colours. Two modes:

* ``"hard"``: exact visibility (:func:`~focus_jax.render.rasterize.rasterize`),
  differentiable interpolation, and (by default) analytic silhouette
  antialiasing so that the image and the mask have gradients w.r.t. the
  silhouette.
* ``"soft"``: SoftRas aggregation
  (:func:`~focus_jax.render.rasterize.soft_rasterize`); the mask is the soft
  coverage.

All per-face inputs carry a leading batch axis B; the model is shared.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.struct
import jax.numpy as jnp

from focus_jax.morphable import model as model_lib
from focus_jax.render import camera as camera_lib
from focus_jax.render import cpu_kernels
from focus_jax.render import rasterize as raster_lib
from focus_jax.render import shading as shading_lib
from focus_jax.render.cpu_kernels import vertex_ops


@flax.struct.dataclass
class RenderOutput:
  """What :func:`render` returns (B = batch, H x W = image size, V = vertices).

  Attributes:
    image: [B, H, W, 3] rendered face over the background, linear RGB.
    mask: [B, H, W] float32 face coverage in [0, 1]: antialiased (hard mode) or
      soft (soft mode), differentiable w.r.t. the geometry at the silhouette.
    landmarks: [B, 68, 2] projected landmark vertices (pixels, x right, y down,
      pixel centres at +0.5); undefined landmarks project vertex 0 (see
      :func:`~focus_jax.morphable.landmark_mask`).
    landmark_depth: [B, 68] their camera-space depth (mm).
    triangle_id: [B, H, W] int32 visible triangle, -1 for background (hard
      visibility, also in soft mode), or None when ``buffers=False`` in soft mode.
    depth: [B, H, W] camera-space depth (mm) of the visible surface, 0 for
      background; None as ``triangle_id``.
    normals: [B, H, W, 3] interpolated camera-space vertex normals (not
      renormalised), 0 for background; None when ``buffers=False``.
    albedo: [B, H, W, 3] interpolated albedo; None when ``buffers=False``.
    vertices_camera: [B, V, 3] camera-space vertices (mm).
    vertices_image: [B, V, 2] projected vertices (pixels).
    vertex_colors: [B, V, 3] shaded vertex colours.
  """
  image: jnp.ndarray
  mask: jnp.ndarray
  landmarks: jnp.ndarray
  landmark_depth: jnp.ndarray
  triangle_id: Optional[jnp.ndarray]
  depth: Optional[jnp.ndarray]
  normals: Optional[jnp.ndarray]
  albedo: Optional[jnp.ndarray]
  vertices_camera: jnp.ndarray
  vertices_image: jnp.ndarray
  vertex_colors: jnp.ndarray


def render(model: model_lib.MorphableModel, shape, expression, albedo_coeffs, angles,
           translation, light, intrinsics: camera_lib.Intrinsics, *, mode: str = "hard",
           background=None, cull_backfaces: bool = True, antialias: bool = True,
           buffers: bool = True, sigma: float = 0.1, gamma: float = 1e-4,
           near: float = 1.0) -> RenderOutput:
  """Renders faces from morphable-model coefficients.

  Args:
    model: the morphable model (shared by the batch).
    shape: [B, Ks] identity coefficients.
    expression: [B, Ke] expression coefficients, or None (neutral).
    albedo_coeffs: [B, Ka] albedo coefficients.
    angles: [B, 3] Euler angles (radians), see :mod:`focus_jax.render.camera`.
    translation: [B, 3] translation (mm).
    light: [B, 9, 3] SH light, see :mod:`focus_jax.render.shading`.
    intrinsics: the camera; fixes the image size.
    mode: ``"hard"`` or ``"soft"`` (static).
    background: None (black), [3], or [B, H, W, 3] image behind the face.
    cull_backfaces: skip triangles facing away from the camera.
    antialias: hard mode: blend silhouette pixels (gives silhouette gradients).
    buffers: also return triangle ids, depth, normal and albedo buffers (in soft
      mode this costs an extra hard rasterization).
    sigma, gamma: soft mode blur (px²) and depth temperature, see
      :func:`~focus_jax.render.rasterize.soft_rasterize`.
    near: near-plane depth (mm).

  Returns:
    :class:`RenderOutput`.
  """
  if mode not in ("hard", "soft"):
    raise ValueError(f"render: mode must be 'hard' or 'soft', got {mode!r}")
  verts = model_lib.vertices(model, shape, expression)                  # [B, V, 3]
  albedo = model_lib.albedo(model, albedo_coeffs)                       # [B, V, 3]
  tri = model.triangles
  cam, normals, colors = vertex_stage(verts, albedo, angles, translation, light, tri)
  vimg = project_vertices(cam, intrinsics)
  lm_cam = model_lib.landmark_positions(model, cam)
  landmarks = project_vertices(lm_cam, intrinsics)

  batch = verts.shape[0]
  size = (batch, intrinsics.height, intrinsics.width, 3)
  bg = jnp.zeros(size, jnp.float32) if background is None else jnp.broadcast_to(
      jnp.asarray(background, jnp.float32), size)

  frags = None
  if mode == "hard" or buffers:
    frags = raster_lib.rasterize(cam, tri, intrinsics, cull_backfaces=cull_backfaces,
                                 near=near, barycentrics=False)
  if mode == "hard":
    coverage = frags.mask.astype(jnp.float32)
    color = raster_lib.interpolate(colors, cam, tri, frags, intrinsics)
    # The interpolated colours are 0 on background pixels.
    image = color if background is None else color + (1.0 - coverage[..., None]) * bg
    if antialias:
      image, coverage = raster_lib.antialias((image, coverage[..., None]), cam, tri, frags,
                                             intrinsics)
      coverage = coverage[..., 0]
    mask = coverage
  else:
    soft = raster_lib.soft_rasterize(cam, tri, colors, intrinsics, background=bg,
                                      sigma=sigma, gamma=gamma, near=near,
                                      cull_backfaces=cull_backfaces)
    image, mask = soft.image, soft.alpha

  normal_buf = albedo_buf = None
  if buffers:
    both = raster_lib.interpolate(jnp.concatenate([normals, albedo], -1), cam, tri, frags,
                                  intrinsics)
    normal_buf, albedo_buf = both[..., :3], both[..., 3:]
  return RenderOutput(
      image=image, mask=mask, landmarks=landmarks, landmark_depth=lm_cam[..., 2],
      triangle_id=None if frags is None else frags.triangle_id,
      depth=None if frags is None else frags.depth,
      normals=normal_buf, albedo=albedo_buf, vertices_camera=cam, vertices_image=vimg,
      vertex_colors=colors)


def vertex_stage(verts, albedo, angles, translation, light, triangles, *,
                 native: Optional[bool] = None):
  """The per-vertex part of :func:`render`: pose, vertex normals and shading.

  Args:
    verts: [B, V, 3] model-space vertices (mm).
    albedo: [B, V, 3] per-vertex albedo.
    angles, translation: [B, 3] pose (radians, mm), see :mod:`~focus_jax.render.camera`.
    light: [B, 9, 3] SH light, see :mod:`~focus_jax.render.shading`.
    triangles: [F, 3] int32.
    native: one C++ CPU kernel for the whole stage, forward and backward (see
      :mod:`~focus_jax.render.cpu_kernels.vertex_ops`), instead of the JAX
      composition of ``camera.to_camera``, ``shading.vertex_normals``,
      ``camera.rotate_to_camera`` and ``shading.shade``; same results up to
      float32 rounding. None: when the CPU kernels are the default and the
      inputs are float32.

  Returns:
    (camera-space vertices [B, V, 3] mm, camera-space unit vertex normals
    [B, V, 3], shaded vertex colours [B, V, 3]).
  """
  if cpu_kernels.resolve(native, verts, albedo, angles, translation, light):
    return vertex_ops.vertex_stage(verts, albedo, angles, translation, light, triangles,
                                   shading_lib.NORMALS_EPS)
  return pose_and_shade(verts, shading_lib.vertex_normals(verts, triangles, native=False),
                        albedo, angles, translation, light)


def pose_and_shade(verts, normals, albedo, angles, translation, light):
  """:func:`vertex_stage` with given model-space vertex normals (pure JAX).

  For callers that hold the normals fixed or compute them apart (the fit's
  M-step poses a vertex subset with the normals of its last E-step).

  Args:
    verts: [..., V, 3] model-space vertices (mm).
    normals: [..., V, 3] model-space unit vertex normals.
    albedo: [..., V, 3]; angles, translation: [..., 3] (radians, mm);
    light: [..., 9, 3] SH light.

  Returns:
    (camera-space vertices [..., V, 3] mm, camera-space normals [..., V, 3],
    shaded vertex colours [..., V, 3]).
  """
  cam = camera_lib.to_camera(verts, angles, translation)
  normals = camera_lib.rotate_to_camera(normals, angles)
  return cam, normals, shading_lib.shade(albedo, normals, light)


def project_vertices(points_camera, intrinsics: camera_lib.Intrinsics):
  """:func:`camera.project` with the renderer's near-plane guard: [..., N, 3] mm ->
  [..., N, 2] px. Points at or behind the camera plane (z <= 0) project as if
  at depth 1 mm: finite positions and gradients (the rasterizer clips them)."""
  z = points_camera[..., 2]
  safe = points_camera.at[..., 2].set(jnp.where(z > 0, z, 1.0))
  return camera_lib.project(safe, intrinsics)


def photometric_loss(image, target, mask=None):
  """Mean squared colour error over (masked) pixels: [B, H, W, C] -> scalar."""
  diff = image - target
  # Channel by channel: XLA:CPU reduces a small minor axis (jnp.sum(..., -1)) slowly.
  err = functools.reduce(jnp.add, [diff[..., c] ** 2 for c in range(diff.shape[-1])])
  if mask is None:
    return jnp.mean(err)
  return jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)

