"""The C++ CPU kernels (focus_jax.render.cpu_kernels) against the pure-JAX path.

The kernels are the default on the CPU backend, so every other renderer test
(brute-force reference, edge cases, finite differences, pmap) runs through
them; these tests pin them to the JAX code that runs on GPU/TPU, and check the
fallback when they cannot be built.
"""

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


def test_disabled_or_unbuildable_kernels_fall_back_to_jax(tmp_path):
  """FOCUS_JAX_NATIVE=0, and a compiler that fails, both give the JAX path
  (with one warning for the failure) and the same image; native=True then
  raises a clear error."""
  script = textwrap.dedent("""
      import json, sys
      import jax.numpy as jnp
      from focus_jax.render import cpu_kernels, rasterize as R
      from focus_jax.render.camera import Intrinsics
      intr = Intrinsics(focal=50.0, cx=8.0, cy=8.0, width=16, height=16)
      p = jnp.asarray([[-30., -30., 100.], [30., -30., 100.], [0., 30., 100.]])
      f = R.rasterize(p, jnp.asarray([[0, 1, 2]]), intr)
      try:
        R.rasterize(p, jnp.asarray([[0, 1, 2]]), intr, native=True)
        raised = ""
      except RuntimeError as err:
        raised = str(err)
      print(json.dumps(dict(available=cpu_kernels.available(), covered=int(f.mask.sum()),
                            raised=raised)))
  """)
  base = dict(os.environ, FOCUS_JAX_CACHE=str(tmp_path / "cache"))
  for extra in ({"FOCUS_JAX_NATIVE": "0"}, {"CXX": "/bin/false"}):
    out = subprocess.run([sys.executable, "-c", script], env=dict(base, **extra),
                         capture_output=True, text=True, timeout=300, check=True)
    result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert result["available"] is False
    assert result["covered"] > 50
    assert "CPU kernels are unavailable" in result["raised"]
    if "CXX" in extra:
      assert "native CPU kernels unavailable" in out.stderr
      assert not list((tmp_path / "cache").rglob("*.so"))   # nothing half-written
