"""Closed-form SH light: a rank-1 light (one spatial SH distribution times an RGB
tint) fitted to per-vertex colours by weighted (optionally robust) least squares.

Shapes: V vertices; lights are [..., 9, 3] (see :mod:`focus_jax.render.shading`).
"""

from __future__ import annotations

import jax.numpy as jnp

from focus_jax.render import shading as shading_lib


def light_from_factors(sh, tint):
  """Rank-1 SH light ``sh ⊗ tint``: [..., 9], [..., 3] -> [..., 9, 3]."""
  return sh[..., :, None] * tint[..., None, :]


def solve_light(albedo, normals, target_colors, weight, ridge: float,
                robust_scale: float = 0.0, iterations: int = 0, init=None,
                tint_ridge: float = 0.0):
  """Weighted least-squares rank-1 SH light ``γ[k, c] = g[k]·t[c]``.

  One spatial SH distribution ``g`` [9] shared by the colour channels, times an
  RGB tint ``t`` [3] (normalised to mean 1) — a white-ish light of one colour.
  A full per-channel light can tint parts of the face (9 functions per channel),
  which lets it absorb coloured occluders; the rank-1 light cannot. Solved by
  alternating least squares (ridge towards the ambient default). With
  ``iterations > 0``, each round reweights with Cauchy weights
  ``1 / (1 + ‖r‖² / robust_scale²)`` of the RGB residuals (IRLS), so that an
  occluder does not bias it.

  albedo, normals, target_colors: [V, 3]; weight: [V].
  init: optional (g [9], t [3]) current light estimate. With ``iterations > 0``
    the first solve is then already weighted by its Cauchy weights (IRLS warm
    start), so that a large occluder cannot drag the unweighted first solve — and
    with it the whole IRLS — into the occluder's colour.
  tint_ridge: λ ≥ 0; every tint update is shrunk towards white,
    ``t ← (t + λ) / (1 + λ)`` (mean-1 tints), keeping the light's intensity
    (see :attr:`~focus_jax.fitting.config.Light.initial_tint_ridge`). 0 = a free tint.
  Returns (g [9], t [3]); the light is :func:`light_from_factors` (g, t).
  """
  basis = shading_lib.sh_basis(normals)                          # [V, 9]
  g_default = shading_lib.default_light()[:, 0]

  def solve(w, tint):
    n = jnp.maximum(jnp.sum(w), 1.0)
    a = basis[:, None, :] * (albedo * tint)[:, :, None]          # [V, 3, 9]
    aw = a * w[:, None, None]
    lhs = jnp.einsum("vck,vcl->kl", aw, a) / n + ridge * jnp.eye(9)
    rhs = jnp.einsum("vck,vc->k", aw, target_colors) / n + ridge * g_default
    g = jnp.linalg.solve(lhs, rhs)
    shade = (basis @ g)[:, None] * albedo                        # [V, 3]
    tint = (jnp.sum(w[:, None] * shade * target_colors, 0)
            / jnp.maximum(jnp.sum(w[:, None] * shade * shade, 0), 1e-6))
    scale = jnp.mean(tint)
    # A black target or all-zero weights leave the tint at 0 (0/0 below): keep it white.
    known = jnp.abs(scale) > 1e-12
    scale = jnp.where(known, scale, 1.0)
    tint = jnp.where(known, tint / scale, 1.0)
    if tint_ridge:
      tint = (tint + tint_ridge) / (1.0 + tint_ridge)
    return g * scale, tint

  cauchy = lambda g, tint: weight / (1.0 + jnp.sum(jnp.square(
      shading_lib.shade(albedo, normals, light_from_factors(g, tint)) - target_colors), -1)
                                     / robust_scale ** 2)
  w0 = weight if init is None or iterations == 0 else cauchy(*init)
  t0 = jnp.ones(3) if init is None or iterations == 0 else init[1]
  g, tint = solve(w0, t0)
  g, tint = solve(w0, tint)
  for _ in range(iterations):
    r2 = jnp.sum(jnp.square(shading_lib.shade(albedo, normals, light_from_factors(g, tint))
                            - target_colors), -1)
    g, tint = solve(weight / (1.0 + r2 / robust_scale ** 2), tint)
  return g, tint
