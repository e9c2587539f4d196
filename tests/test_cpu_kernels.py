"""The C++ CPU kernels (focus_jax.render.cpu_kernels) against the pure-JAX path.

The kernels are the default on the CPU backend, so every other renderer test
(brute-force reference, edge cases, finite differences, pmap) runs through
them; these tests pin them to the JAX code that runs on GPU/TPU, and check the
fallback when they cannot be built.
"""

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.render import cpu_kernels
from focus_jax.render import rasterize as R
from focus_jax.render import soft
from focus_jax.render.cpu_kernels import raster_ops
from focus_jax.render.camera import Intrinsics

sys.path.insert(0, os.path.dirname(__file__))
from render_testing import icosphere, rotation, to_camera_space  # noqa: E402

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason=f"CPU kernels unavailable: {cpu_kernels._state['error']}")

INTR = Intrinsics(focal=100.0, cx=32.0, cy=30.0, width=64, height=60)


def soup(seed, num_triangles=600):
  """Random triangles of all sizes (some crossing the image border), ten that
  cross or lie behind the camera plane, and twenty degenerate ones."""
  rng = np.random.default_rng(seed)
  centres = np.concatenate([rng.uniform(-60, 60, (num_triangles, 2)),
                            rng.uniform(80, 300, (num_triangles, 1))], 1)
  scale = rng.uniform(1.0, 15.0, (num_triangles, 1, 1))
  points = centres[:, None, :] + scale * rng.normal(size=(num_triangles, 3, 3))
  points[:10, :, 2] = rng.uniform(-40, 120, (10, 3))
  points[10:30, 1] = points[10:30, 0]
  triangles = np.arange(3 * num_triangles, dtype=np.int32).reshape(-1, 3)
  return jnp.asarray(points.reshape(-1, 3), jnp.float32), jnp.asarray(triangles)


def sphere_batch(batch=2, seed=0):
  v, f = icosphere(3)
  rng = np.random.default_rng(seed)
  points = np.stack([to_camera_space(v, 60.0, rotation(*rng.normal(size=3)), 300.0)
                     + rng.normal(size=(1, 3)) * 5 for _ in range(batch)])
  return jnp.asarray(points, jnp.float32), jnp.asarray(f)


@pytest.mark.parametrize("cull", [False, True])
@pytest.mark.parametrize("near", [1.0, 40.0])
def test_rasterize_kernel_matches_jax(cull, near):
  points, triangles = soup(0)
  points = jnp.stack([points, points * jnp.asarray([1.0, -1.0, 1.0])])   # two images
  got = R.rasterize(points, triangles, INTR, cull_backfaces=cull, near=near, native=True)
  want = R.rasterize(points, triangles, INTR, cull_backfaces=cull, near=near, native=False)
  np.testing.assert_array_equal(np.asarray(got.triangle_id), np.asarray(want.triangle_id))
  np.testing.assert_array_equal(np.asarray(got.num_fragments), np.asarray(want.num_fragments))
  assert len(np.unique(np.asarray(got.triangle_id))) > 50
  np.testing.assert_allclose(np.asarray(got.depth), np.asarray(want.depth), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got.barycentric), np.asarray(want.barycentric),
                             atol=1e-5)


@pytest.mark.parametrize("native", [True, False])
def test_rasterize_without_barycentrics(native):
  """barycentrics=False: the same ids, depths and fragment counts, no
  barycentrics (batched and unbatched)."""
  points, triangles = soup(1)
  points = jnp.stack([points, points * jnp.asarray([1.0, -1.0, 1.0])])
  full = R.rasterize(points, triangles, INTR, cull_backfaces=True, native=native)
  for p, want in ((points, full), (points[1], jax.tree_util.tree_map(lambda x: x[1], full))):
    got = R.rasterize(p, triangles, INTR, cull_backfaces=True, native=native,
                      barycentrics=False)
    assert got.barycentric is None
    for field in ("triangle_id", "depth", "mask", "num_fragments"):
      np.testing.assert_array_equal(np.asarray(getattr(got, field)),
                                    np.asarray(getattr(want, field)))
  assert int(full.mask.sum()) > 100


def test_interpolate_kernel_matches_jax_values_and_gradients():
  points, triangles = soup(1)
  rng = np.random.default_rng(1)
  points = jnp.stack([points, points + 3.0])
  attributes = jnp.asarray(rng.uniform(size=(2, points.shape[1], 4)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(2, INTR.height, INTR.width, 4)), jnp.float32)
  frags = R.rasterize(points, triangles, INTR)

  def loss(a, p, native):
    return jnp.sum(R.interpolate(a, p, triangles, frags, INTR, native=native) * weights)

  for argnums in ((0, 1),):
    got = jax.grad(loss, argnums)(attributes, points, True)
    want = jax.grad(loss, argnums)(attributes, points, False)
    for g, w in zip(got, want):
      assert float(jnp.abs(w).max()) > 0
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                                 atol=1e-5 * float(jnp.abs(w).max()))
  np.testing.assert_allclose(
      np.asarray(R.interpolate(attributes, points, triangles, frags, INTR, native=True)),
      np.asarray(R.interpolate(attributes, points, triangles, frags, INTR, native=False)),
      atol=1e-5)
  # One image: the kernel splits it into bands with private gradient buffers.
  one = lambda native: jax.grad(lambda p: loss(attributes[:1], p, native))(points[:1])
  frags = R.rasterize(points[:1], triangles, INTR)
  weights = weights[:1]
  np.testing.assert_allclose(np.asarray(one(True)), np.asarray(one(False)), rtol=1e-4,
                             atol=1e-5 * float(jnp.abs(one(False)).max()))


def test_antialias_kernel_matches_jax_values_and_gradients():
  points, triangles = sphere_batch()
  rng = np.random.default_rng(2)
  frags = R.rasterize(points, triangles, INTR, cull_backfaces=True)
  colors = jnp.asarray(rng.uniform(size=(2, points.shape[1], 3)), jnp.float32)
  image = R.interpolate(colors, points, triangles, frags, INTR)
  image = jnp.concatenate([image, frags.mask[..., None].astype(jnp.float32)], -1)
  weights = jnp.asarray(rng.normal(size=image.shape), jnp.float32)

  def output_and_grads(native):
    out, vjp = jax.vjp(lambda im, p: R.antialias(im, p, triangles, frags, INTR, native=native),
                       image, points)
    return out, vjp(weights)

  got, got_grads = jax.jit(lambda: output_and_grads(True))()
  want, want_grads = jax.jit(lambda: output_and_grads(False))()
  blended = np.asarray(jnp.abs(want - image).max(-1) > 0)
  assert blended.sum() > 50          # the silhouettes are blended at all
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  for g, w in zip(got_grads, want_grads):
    assert float(jnp.abs(w).max()) > 0
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5 * float(jnp.abs(w).max()))


def test_antialias_kernel_one_image_and_vmap_match_jax():
  """One image (the kernel then splits its per-triangle silhouette tables over
  bands of faces) and a vmapped batch blend as the JAX path does."""
  points, triangles = sphere_batch()
  rng = np.random.default_rng(4)
  colors = jnp.asarray(rng.uniform(size=(2, points.shape[1], 3)), jnp.float32)

  def blend(p, c, native):
    frags = R.rasterize(p, triangles, INTR, cull_backfaces=True)
    image = R.interpolate(c, p, triangles, frags, INTR)
    return R.antialias(image, p, triangles, frags, INTR, native=native)

  for native in (True, False):
    one = jax.jit(lambda p, c: blend(p, c, native))(points[:1], colors[:1])
    mapped = jax.jit(jax.vmap(lambda p, c: blend(p[None], c[None], native)[0]))(points, colors)
    if native:
      got = (one, mapped)
    else:
      want = (one, mapped)
  image = R.interpolate(colors[:1], points[:1], triangles,
                        R.rasterize(points[:1], triangles, INTR, cull_backfaces=True), INTR)
  assert int((jnp.abs(want[0] - image).max(-1) > 0).sum()) > 50  # silhouettes are blended
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6)
  np.testing.assert_allclose(np.asarray(got[1][0]), np.asarray(got[0][0]), atol=1e-6)


@pytest.mark.parametrize("budget", [None, 5])
def test_antialias_kernel_layers_and_pair_overflow(monkeypatch, budget):
  """A tuple of layers (image, mask) blends as their concatenation does on the
  JAX path, also when the pairs overflow the kernel's first, budget-sized
  pair list (the second, full-size search then runs)."""
  if budget is not None:
    monkeypatch.setattr(raster_ops, "_pair_budget", lambda *shape: budget)
  points, triangles = sphere_batch()
  rng = np.random.default_rng(3)
  frags = R.rasterize(points, triangles, INTR, cull_backfaces=True)
  colors = jnp.asarray(rng.uniform(size=(2, points.shape[1], 3)), jnp.float32)
  image = R.interpolate(colors, points, triangles, frags, INTR)
  mask = frags.mask[..., None].astype(jnp.float32)
  weights = jnp.asarray(rng.normal(size=image.shape[:-1] + (4,)), jnp.float32)

  def native(im, m, p):
    out = R.antialias((im, m), p, triangles, frags, INTR, native=True)
    assert isinstance(out, tuple) and out[1].shape == m.shape
    return jnp.concatenate(out, -1)

  def jax_path(im, m, p):
    return R.antialias(jnp.concatenate([im, m], -1), p, triangles, frags, INTR, native=False)

  def output_and_grads(fn):
    out, vjp = jax.vjp(fn, image, mask, points)
    return out, vjp(weights)

  got, got_grads = jax.jit(lambda: output_and_grads(native))()
  want, want_grads = jax.jit(lambda: output_and_grads(jax_path))()
  count = raster_ops._search_pairs(points, triangles, (frags.triangle_id, frags.depth,
                                                       R.edge_neighbours(triangles)), INTR, 5)[1]
  assert int(count[0]) > 5           # the overflow case does overflow
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w),
                               atol=1e-5 * max(float(jnp.abs(w).max()), 1.0))
  assert float(jnp.abs(want_grads[2]).max()) > 0


@pytest.mark.parametrize("batch", [1, 3])
def test_vertex_stage_kernel_matches_jax_values_and_gradients(batch):
  """render.vertex_stage: the fused kernel (pose, normals, SH shading) against
  the JAX composition, values and gradients w.r.t. every input; batch 1 splits
  the vertices over threads."""
  from focus_jax.render import render, shading  # pylint: disable=import-outside-toplevel
  v, triangles = icosphere(3)
  rng = np.random.default_rng(5)
  verts = jnp.asarray(60.0 * v[None] + rng.normal(size=(batch,) + v.shape), jnp.float32)
  albedo = jnp.asarray(rng.uniform(0.2, 1.0, verts.shape), jnp.float32)
  angles = jnp.asarray(rng.normal(size=(batch, 3)) * 0.3, jnp.float32)
  translation = jnp.asarray(rng.normal(size=(batch, 3)) * 5.0, jnp.float32)
  light = shading.default_light((batch,)) + jnp.asarray(rng.normal(size=(batch, 9, 3)) * 0.3,
                                                        jnp.float32)
  triangles = jnp.asarray(triangles)
  weights = [jnp.asarray(rng.normal(size=verts.shape), jnp.float32) for _ in range(3)]
  args = (verts, albedo, angles, translation, light)

  def loss(native, *a):
    out = render.vertex_stage(*a, triangles, native=native)
    return sum(jnp.sum(o * w) for o, w in zip(out, weights)), out

  step = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3, 4, 5), has_aux=True),
                 static_argnums=0)
  (_, got), got_grads = step(True, *args)
  (_, want), want_grads = step(False, *args)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6,
                               atol=1e-6 * float(jnp.abs(w).max()))
  for g, w in zip(got_grads, want_grads):
    assert float(jnp.abs(w).max()) > 0
    np.testing.assert_allclose(np.asarray(g), np.asarray(w),
                               atol=2e-5 * float(jnp.abs(w).max()))
  # vmap over a leading axis: the same as each slice.
  stacked = jax.vmap(lambda *a: render.vertex_stage(*a, triangles, native=True))(
      *(x[:, None] for x in args))
  for s, w in zip(stacked, want):
    np.testing.assert_allclose(np.asarray(s[:, 0]), np.asarray(w), rtol=1e-6,
                               atol=1e-6 * float(jnp.abs(w).max()))


def test_vertex_normals_kernel_matches_jax_values_and_gradients():
  from focus_jax.render import shading  # pylint: disable=import-outside-toplevel
  points, triangles = sphere_batch(batch=3)
  rng = np.random.default_rng(4)
  points = points + jnp.asarray(rng.normal(size=points.shape), jnp.float32)   # bumpy
  weights = jnp.asarray(rng.normal(size=points.shape), jnp.float32)
  loss = lambda p, n: jnp.sum(shading.vertex_normals(p, triangles, native=n) * weights)
  np.testing.assert_allclose(
      np.asarray(shading.vertex_normals(points, triangles, native=True)),
      np.asarray(shading.vertex_normals(points, triangles, native=False)), atol=1e-6)
  got, want = jax.grad(loss)(points, True), jax.grad(loss)(points, False)
  assert float(jnp.abs(want).max()) > 0
  np.testing.assert_allclose(np.asarray(got), np.asarray(want),
                             atol=1e-5 * float(jnp.abs(want).max()))


def test_kernels_under_vmap_and_jit():
  """vmap over a batch axis in front of the kernels' own batch: the same as
  calling them on each slice (and, for rasterize + interpolate, as JAX)."""
  points, triangles = sphere_batch(batch=2)
  stacked = jnp.stack([points, points + jnp.asarray([4.0, 0.0, 0.0])])   # [2, 2, V, 3]
  colors = jnp.ones(points.shape[1:2] + (3,), jnp.float32) * jnp.linspace(0, 1, 3)

  def image(p, native, aa=True):
    frags = R.rasterize(p, triangles, INTR, cull_backfaces=True, native=native)
    im = R.interpolate(colors, p, triangles, frags, INTR, native=native)
    return R.antialias(im, p, triangles, frags, INTR, native=native) if aa else im

  got = jax.jit(jax.vmap(lambda p: image(p, True)))(stacked)
  assert got.shape == (2, 2, INTR.height, INTR.width, 3)
  for k in range(2):
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(image(stacked[k], True)),
                               atol=1e-6)
  g = jax.jit(jax.grad(lambda p, n: jnp.sum(jax.vmap(lambda q: image(q, n, False))(p) ** 2)),
              static_argnums=1)
  np.testing.assert_allclose(np.asarray(g(stacked, True)), np.asarray(g(stacked, False)),
                             rtol=1e-4, atol=1e-4)


SOFT_INTR = Intrinsics(focal=100.0, cx=20.0, cy=18.0, width=40, height=36)


def soft_scene(seed, batch=2, channels=3):
  """Two images of a soup of 200 triangles (see :func:`soup`: all sizes, both
  facings, many crossing the image border, some crossing the near plane),
  plus 20 tiny ones (~0.05 px) in view; random attributes and backgrounds."""
  points, triangles = soup(seed, 200)
  rng = np.random.default_rng(seed)
  tiny = (np.concatenate([rng.uniform(-15, 15, (20, 1, 2)), np.full((20, 1, 1), 150.0)], 2)
          + 0.1 * rng.normal(size=(20, 3, 3)))
  points = jnp.concatenate([points * jnp.asarray([0.5, 0.5, 1.0]),
                            jnp.asarray(tiny.reshape(-1, 3), jnp.float32)])
  triangles = jnp.concatenate([triangles, 600 + jnp.arange(60, dtype=jnp.int32).reshape(-1, 3)])
  points = jnp.stack([points + jnp.asarray([2.0 * b, -1.0 * b, 3.0 * b]) for b in range(batch)])
  attributes = jnp.asarray(rng.uniform(size=points.shape[:2] + (channels,)), jnp.float32)
  shape = (batch, SOFT_INTR.height, SOFT_INTR.width, channels)
  background = jnp.asarray(rng.uniform(size=shape), jnp.float32)
  weights = (jnp.asarray(rng.normal(size=shape), jnp.float32),
             jnp.asarray(rng.normal(size=shape[:-1]), jnp.float32))
  return points, triangles, attributes, background, weights


def _soft_loss(points, attributes, background, triangles, weights, native, **kw):
  out = R.soft_rasterize(points, triangles, attributes, SOFT_INTR, background=background,
                         native=native, **kw)
  return jnp.sum(out.image * weights[0]) + jnp.sum(out.alpha * weights[1]), out


def assert_close_mostly(got, want, atol, rtol=0.0, worst=None, fraction=0.995):
  """All but ``1 - fraction`` of the elements within atol + rtol |want|, all
  within ``worst`` (see test_soft_rasterize_kernel_matches_jax)."""
  got, want = np.asarray(got), np.asarray(want)
  err = np.abs(got - want)
  assert np.mean(err <= atol + rtol * np.abs(want)) >= fraction, (err.max(), np.mean(err > atol))
  assert err.max() <= (worst if worst is not None else 20 * atol), err.max()


# The kernels round like the JAX code up to a few ulp (exp, sigmoid, and the
# order of the per-pixel sums differ), and soft aggregation amplifies that:
# the depth softmax weights exp(z~ / gamma) scale the rounding of the scaled
# depth z~ (~1e-7) by 1 / gamma, and a fragment just above the cutoff has
# D = (sigmoid - cutoff) / (1 - cutoff), which cancels, yet can dominate its
# pixel when it is in front. Hence a tolerance growing with 1 / gamma, and a
# handful of pixels allowed a few times more.
@pytest.mark.parametrize("sigma,gamma,cull", [(0.1, 1e-4, False), (0.5, 0.05, True)])
def test_soft_rasterize_kernel_matches_jax(sigma, gamma, cull):
  points, triangles, attributes, background, weights = soft_scene(3)
  kw = dict(sigma=sigma, gamma=gamma, cull_backfaces=cull, max_fragments=20000)
  grad = jax.jit(jax.value_and_grad(_soft_loss, (0, 1, 2), has_aux=True),
                 static_argnames=("native", "sigma", "gamma", "cull_backfaces", "max_fragments"))
  (_, got), got_grads = grad(points, attributes, background, triangles, weights, True, **kw)
  (_, want), want_grads = grad(points, attributes, background, triangles, weights, False, **kw)
  np.testing.assert_array_equal(np.asarray(want.overflow), 0)
  np.testing.assert_array_equal(np.asarray(got.overflow), 0)
  alpha = np.asarray(want.alpha)
  assert np.sum((alpha > 0.01) & (alpha < 0.99)) > 100        # soft edges
  assert np.sum(alpha > 0.9) > 20                              # and interiors
  amplification = max(1.0, 0.01 / gamma)
  assert_close_mostly(got.image, want.image, atol=1e-5 * amplification, worst=2e-4)
  assert_close_mostly(got.alpha, alpha, atol=5e-6, worst=3e-5)
  for g, w in zip(got_grads, want_grads):
    w = np.asarray(w)
    scale = np.abs(w).max()
    assert scale > 0 and np.mean(np.abs(w) > 1e-3 * scale) > 0.01
    assert_close_mostly(g, w, rtol=1e-3, atol=1e-5 * amplification * scale,
                        worst=2e-3 * scale)


def test_soft_rasterize_kernel_default_unbatched_vmap_and_jit():
  """native=None picks the kernel on CPU; unbatched inputs with an [H, W, C]
  background (one image: the kernels split it over threads), and vmap over a
  leading axis, equal the batched calls (values and gradients)."""
  points, triangles, attributes, background, weights = soft_scene(4)
  kw = dict(sigma=0.3, gamma=1e-3)
  auto = R.soft_rasterize(points, triangles, attributes, SOFT_INTR, background=background, **kw)
  batched = R.soft_rasterize(points, triangles, attributes, SOFT_INTR, background=background,
                             native=True, **kw)
  np.testing.assert_array_equal(np.asarray(auto.image), np.asarray(batched.image))
  np.testing.assert_array_equal(np.asarray(batched.overflow), 0)
  loss = lambda *a: _soft_loss(*a[:3], triangles, a[3], True, **kw)[0]
  grad = jax.jit(jax.grad(loss, (0, 1, 2)))
  grads = grad(points, attributes, background, weights)
  for b in range(2):
    single = R.soft_rasterize(points[b], triangles, attributes[b], SOFT_INTR,
                              background=background[b], native=True, **kw)
    assert single.image.shape == (SOFT_INTR.height, SOFT_INTR.width, 3)
    assert single.overflow.shape == ()
    np.testing.assert_allclose(np.asarray(single.image), np.asarray(batched.image[b]),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(single.alpha), np.asarray(batched.alpha[b]),
                               atol=1e-6)
    got = grad(points[b], attributes[b], background[b], (weights[0][b], weights[1][b]))
    for g, w in zip(got, grads):
      w = np.asarray(w[b])
      assert np.abs(w).max() > 0
      np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
  # Other channel counts (a generic code path) split like the channels.
  extra = attributes[..., :1] * 2.0 - 0.5
  wide = [jnp.concatenate([x, y], -1) for x, y in ((attributes, extra),
                                                  (background, background[..., :1]),
                                                  (weights[0], weights[0][..., :1]))]
  wide_grads = grad(points, wide[0], wide[1], (wide[2], weights[1]))
  one = R.soft_rasterize(points, triangles, extra, SOFT_INTR, background=background[..., :1],
                         native=True, **kw)
  wide_image = R.soft_rasterize(points, triangles, wide[0], SOFT_INTR, background=wide[1],
                                native=True, **kw).image
  np.testing.assert_array_equal(np.asarray(wide_image[..., :3]), np.asarray(batched.image))
  np.testing.assert_array_equal(np.asarray(wide_image[..., 3:]), np.asarray(one.image))
  np.testing.assert_allclose(np.asarray(wide_grads[1][..., :3]), np.asarray(grads[1]),
                             rtol=1e-5, atol=1e-6)
  stacked = [jnp.stack([x, x[::-1]]) for x in (points, attributes, background)]
  image = lambda p, a, bg: R.soft_rasterize(p, triangles, a, SOFT_INTR, background=bg,
                                            native=True, **kw).image
  vmapped = jax.jit(jax.vmap(image))(*stacked)
  assert vmapped.shape == (2, 2, SOFT_INTR.height, SOFT_INTR.width, 3)
  vloss = lambda f, p: jnp.sum(f(p, stacked[1], stacked[2]) * weights[0])
  vgrad = jax.jit(jax.grad(lambda p: vloss(jax.vmap(image), p)))(stacked[0])
  for k in range(2):
    args = (stacked[0][k], stacked[1][k], stacked[2][k])
    np.testing.assert_allclose(np.asarray(vmapped[k]), np.asarray(image(*args)), atol=1e-6)
    want = np.asarray(jax.grad(lambda p: jnp.sum(image(p, *args[1:]) * weights[0]))(args[0]))
    np.testing.assert_allclose(np.asarray(vgrad[k]), want, rtol=1e-4,
                               atol=1e-5 * np.abs(want).max())


def test_soft_rasterize_kernel_setup_residual_and_lanes(monkeypatch):
  """The forward's set-up residual lists each triangle that _soft_triangles
  draws once, with the same pixel box, ordered by first row; and the
  transpose's portable 4-lane code (FOCUS_JAX_AVX=0, what CPUs without AVX
  run) gives the gradients of the 8-lane AVX code up to the order of each
  triangle's sums (the same code where the CPU has no AVX)."""
  points, triangles, attributes, background, weights = soft_scene(5)
  sigma, cutoff, cull = 0.3, 1e-3, False
  params = jnp.asarray([sigma, 1e-3, math.sqrt(sigma * math.log(1.0 / cutoff - 1.0))],
                       jnp.float32)
  kw = dict(near=1.0, cull_backfaces=cull, eps=1e-3, depth_range=(1.0, 1e4), cutoff=cutoff)
  *_, boxes = cpu_kernels.soft_rasterize(points, attributes, background, triangles, params,
                                         SOFT_INTR, **kw)
  boxes = np.asarray(boxes)
  num_faces = triangles.shape[0]
  assert boxes.shape == (2, num_faces + 1, 16)
  _, col0, row0, ncols, nrows = soft._soft_triangles(points, attributes, triangles, SOFT_INTR,
                                                     1.0, cull, params[2])
  want = np.stack([np.asarray(x).reshape(2, num_faces) for x in (col0, row0, ncols, nrows)], -1)
  tri = np.asarray(triangles)
  for b in range(2):
    count = boxes[b, 0, 0]
    drawn = np.nonzero((want[b, :, 2] > 0) & (want[b, :, 3] > 0))[0]
    assert count == len(drawn) > 100
    records = boxes[b, 1:count + 1]
    assert np.all(np.diff(records[:, 13]) >= 0)                # ordered by first row
    # Each drawn triangle once (its vertex ids), with the box of _soft_triangles.
    order = np.lexsort(records[:, 2::-1].T)
    keys = np.lexsort(tri[drawn][:, ::-1].T)
    np.testing.assert_array_equal(records[order, :3], tri[drawn][keys])
    np.testing.assert_array_equal(records[order, 12:], want[b, drawn[keys]])
  loss = lambda p, a, bg: _soft_loss(p, a, bg, triangles, weights, True, sigma=sigma,
                                     gamma=1e-3, cull_backfaces=cull)[0]
  grad = jax.jit(jax.grad(loss, (0, 1, 2)))
  default = grad(points, attributes, background)
  monkeypatch.setenv("FOCUS_JAX_AVX", "0")
  portable = grad(points, attributes, background)
  for g, w in zip(portable, default):
    w = np.asarray(w)
    assert np.abs(w).max() > 0
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6 * np.abs(w).max())


# A small scene for the fallback test, built the same way in the parent process
# (kernels) and in the child processes (kernels off or unbuildable).
_FALLBACK_SCENE = """
import numpy as np
import jax, jax.numpy as jnp
from focus_jax.render import rasterize as R, render
from focus_jax.render.camera import Intrinsics
intr = Intrinsics(focal=50.0, cx=8.0, cy=8.0, width=16, height=16)
rng = np.random.default_rng(0)
p = jnp.asarray([[-30., -30., 100.], [30., -31., 100.], [0., 30., 101.], [11.3, 0.7, 93.]])
tri = jnp.asarray([[0, 1, 2], [0, 3, 1]])
colours_in = jnp.asarray(rng.uniform(size=(4, 3)), jnp.float32)
weights = jnp.asarray(rng.normal(size=(16, 16, 3)), jnp.float32)

def scene(native=None):
  f = R.rasterize(p, tri, intr, native=native)
  image = R.antialias(R.interpolate(colours_in, p, tri, f, intr, native=native), p, tri, f,
                      intr, native=native)
  s = R.soft_rasterize(p, tri, colours_in, intr, native=native)
  stage = render.vertex_stage(
      p[None], jnp.asarray(rng.uniform(size=(1, 4, 3)), jnp.float32),
      jnp.asarray([[0.1, -0.2, 0.05]]), jnp.asarray([[1.0, 2.0, 3.0]]),
      jnp.asarray(rng.normal(size=(1, 9, 3)), jnp.float32), tri, native=native)
  grad = jax.grad(lambda q: jnp.sum(R.interpolate(colours_in, q, tri, f, intr, native=native)
                                    * weights))(p)
  return dict(ids=f.triangle_id, image=image, soft=s.image, alpha=s.alpha, stage=stage[2],
              grad=grad)
"""


def test_disabled_or_unbuildable_kernels_fall_back_to_jax(tmp_path):
  """FOCUS_JAX_NATIVE=0, and a compiler that fails, both give the JAX path
  (with one warning for the failure) and the kernels' values (visibility,
  antialiased image, soft image, shaded vertices, a gradient); native=True then
  raises a clear error."""
  script = _FALLBACK_SCENE + textwrap.dedent("""
      import json
      from focus_jax.render import cpu_kernels
      out = {k: np.asarray(v).tolist() for k, v in scene().items()}
      raised = []
      for fn in (lambda: R.rasterize(p, tri, intr, native=True),
                 lambda: R.soft_rasterize(p, tri, p, intr, native=True),
                 lambda: render.vertex_stage(p[None], jnp.ones((1, 4, 3)), jnp.zeros((1, 3)),
                                             jnp.zeros((1, 3)), jnp.ones((1, 9, 3)), tri,
                                             native=True)):
        try:
          fn()
          raised.append("")
        except RuntimeError as err:
          raised.append(str(err))
      print(json.dumps(dict(available=cpu_kernels.available(), raised=raised, **out)))
  """)
  kernels = {}
  exec(_FALLBACK_SCENE, kernels)  # pylint: disable=exec-used
  want = {k: np.asarray(v) for k, v in kernels["scene"](native=True).items()}
  assert (want["ids"] >= 0).sum() > 50 and (want["ids"] == 1).sum() > 5
  base = dict(os.environ, FOCUS_JAX_CACHE=str(tmp_path / "cache"))
  for extra in ({"FOCUS_JAX_NATIVE": "0"}, {"CXX": "/bin/false"}):
    out = subprocess.run([sys.executable, "-c", script], env=dict(base, **extra),
                         capture_output=True, text=True, timeout=300, check=True)
    result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert result["available"] is False
    assert all("CPU kernels are unavailable" in r for r in result["raised"])
    assert len(result["raised"]) == 3
    np.testing.assert_array_equal(result["ids"], want["ids"])
    # Soft aggregation rounds differently (see test_soft_rasterize_kernel_matches_jax:
    # the default gamma 1e-4 amplifies it); the rest to float32 rounding.
    for key, atol in (("image", 1e-5), ("soft", 2e-4), ("alpha", 3e-5), ("stage", 1e-5),
                      ("grad", 1e-5)):
      scale = max(np.abs(want[key]).max(), 1e-3)
      np.testing.assert_allclose(result[key], want[key], atol=atol * scale, err_msg=key)
    if "CXX" in extra:
      assert "native CPU kernels unavailable" in out.stderr
      assert not list((tmp_path / "cache").rglob("*.so"))   # nothing half-written
