"""Tests of focus_jax.render.render (model -> camera -> shading -> rasterization)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from focus_jax.morphable import model as model_lib
from focus_jax.render import camera, rasterize, render, shading

sys.path.insert(0, os.path.dirname(__file__))
from render_testing import icosphere  # noqa: E402

INTR = camera.Intrinsics.reference(48)


@pytest.fixture(scope="module")
def tiny_model():
  """A sphere 'face' of radius 80 mm with small random bases and a textured albedo."""
  v, f = icosphere(2)
  rng = np.random.default_rng(0)
  mean = v * 80.0
  shape = rng.normal(size=(2, len(v), 3)) * 2.0
  expr = rng.normal(size=(1, len(v), 3)) * 1.0
  albedo_mean = rng.uniform(0.2, 0.8, size=(len(v), 3))
  albedo_basis = rng.normal(size=(2, len(v), 3)) * 0.05
  return model_lib.make_model(mean, shape, expr, albedo_mean, albedo_basis, f,
                              landmarks=np.arange(68), name="tiny-sphere")


def params(batch=2, seed=0):
  rng = np.random.default_rng(seed)
  return dict(
      shape=jnp.asarray(rng.normal(size=(batch, 2)), jnp.float32),
      expression=jnp.asarray(rng.normal(size=(batch, 1)), jnp.float32),
      albedo_coeffs=jnp.asarray(rng.normal(size=(batch, 2)), jnp.float32),
      angles=jnp.asarray(rng.normal(size=(batch, 3)) * 0.01, jnp.float32),
      translation=jnp.asarray(rng.normal(size=(batch, 3)) * 3.0, jnp.float32),
      light=shading.default_light((batch,)) + jnp.asarray(
          rng.normal(size=(batch, 9, 3)) * 0.3, jnp.float32))


@pytest.fixture(scope="module")
def hard_output(tiny_model):
  fn = jax.jit(lambda p: render.render(tiny_model, intrinsics=INTR, **p))
  p = params()
  return p, fn(p)


def test_hard_render_buffers(tiny_model, hard_output):
  p, out = hard_output
  b, h, w = 2, INTR.height, INTR.width
  assert out.image.shape == (b, h, w, 3) and out.mask.shape == (b, h, w)
  assert out.landmarks.shape == (b, 68, 2) and out.triangle_id.shape == (b, h, w)
  assert out.normals.shape == (b, h, w, 3) and out.albedo.shape == (b, h, w, 3)
  mask = np.asarray(out.mask)
  assert mask.min() >= 0 and mask.max() <= 1 + 1e-6
  assert 0.2 < mask.mean() < 0.8
  # Landmarks are the projected landmark vertices.
  verts = model_lib.vertices(tiny_model, p["shape"], p["expression"])
  cam = camera.to_camera(verts[:, :68], p["angles"], p["translation"])
  np.testing.assert_allclose(np.asarray(out.landmarks), np.asarray(camera.project(cam, INTR)),
                             atol=1e-3)
  # Visibility is the rasterizer's.
  frags = rasterize.rasterize(out.vertices_camera, tiny_model.triangles, INTR,
                              cull_backfaces=True)
  np.testing.assert_array_equal(np.asarray(out.triangle_id), np.asarray(frags.triangle_id))
  # Background stays black away from the face; interior pixels are albedo x irradiance.
  hard = np.asarray(out.triangle_id) >= 0
  far = ~hard & (np.asarray(out.mask) == 0)
  assert np.all(np.asarray(out.image)[far] == 0)
  normals = np.asarray(out.normals)[hard]
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  assert np.mean(normals[:, 2] < 0) > 0.95  # facing the camera (camera z forward)
  light = np.asarray(p["light"])[:, None, None].repeat(h, 1).repeat(w, 2)[hard]
  approx = np.asarray(out.albedo)[hard] * np.einsum(
      "nk,nkc->nc", np.asarray(shading.sh_basis(jnp.asarray(normals))), light)
  interior = np.abs(np.asarray(out.mask)[hard] - 1) < 1e-6
  assert np.median(np.abs(np.asarray(out.image)[hard][interior] - approx[interior])) < 0.02


def test_background_and_soft_mode(tiny_model, hard_output):
  p, hard = hard_output
  bg = jnp.full((2, INTR.height, INTR.width, 3), 0.25)
  soft = jax.jit(lambda p: render.render(tiny_model, intrinsics=INTR, mode="soft", background=bg,
                                         sigma=0.02, **p))(p)
  mask = np.asarray(hard.mask)
  outside = (mask == 0) & (np.asarray(soft.mask) < 1e-6)
  np.testing.assert_allclose(np.asarray(soft.image)[outside], 0.25, atol=1e-5)
  inside = mask == 1
  assert np.median(np.abs(np.asarray(soft.image - hard.image))[inside]) < 0.02
  assert np.mean(np.abs(np.asarray(soft.mask) - mask)) < 0.1
  np.testing.assert_array_equal(np.asarray(soft.triangle_id), np.asarray(hard.triangle_id))


def test_inverse_rendering_recovers_pose_and_light(tiny_model):
  """Fits angles, translation and SH light to a rendered target (hard mode with
  antialiasing) from a perturbed start."""
  truth = params(batch=1, seed=1)
  target = render.render(tiny_model, intrinsics=INTR, **truth).image
  rng = np.random.default_rng(2)
  scale = dict(angles=0.01, translation=5.0, light=1.0)   # parameter units per step unit
  start = dict(
      angles=truth["angles"] + 0.005 * jnp.asarray(rng.normal(size=(1, 3)), jnp.float32),
      translation=truth["translation"] + jnp.asarray([[4.0, -3.0, 20.0]], jnp.float32),
      light=truth["light"] + 0.15 * jnp.asarray(rng.normal(size=(1, 9, 3)), jnp.float32))
  fixed = {k: truth[k] for k in ("shape", "expression", "albedo_coeffs")}

  def loss(x):
    p = {k: x[k] * scale[k] for k in x}
    image = render.render(tiny_model, intrinsics=INTR, **fixed, **p).image
    return jnp.mean((image - target) ** 2)

  steps = 300
  opt = optax.adam(optax.cosine_decay_schedule(0.05, steps))
  x = {k: start[k] / scale[k] for k in start}
  state = opt.init(x)

  @jax.jit
  def step(x, state):
    value, grad = jax.value_and_grad(loss)(x)
    updates, state = opt.update(grad, state)
    return optax.apply_updates(x, updates), state, value

  first = float(loss(x))
  for _ in range(steps):
    x, state, _ = step(x, state)
  final = float(loss(x))
  assert final < 3e-3 * first, (first, final)
  got = {k: np.asarray(x[k] * scale[k]) for k in x}
  err = lambda k, p: np.abs(p[k] - np.asarray(truth[k])).max()
  assert err("translation", got) < 0.5 < 0.1 * err("translation", start)
  assert err("angles", got) < 2e-3
  # A single view constrains some SH directions weakly (the DC and z bands trade
  # off over the visible hemisphere), so the light is checked through the
  # irradiance it gives the normals the camera sees.
  n = np.random.default_rng(3).normal(size=(2000, 3))
  n /= np.linalg.norm(n, axis=-1, keepdims=True)
  n = jnp.asarray(n[n[:, 2] < -0.2], jnp.float32)
  irr = lambda light: shading.irradiance(n, jnp.asarray(light)[0])
  rms = lambda light: float(jnp.sqrt(jnp.mean((irr(light) - irr(truth["light"])) ** 2)))
  assert rms(got["light"]) < 0.25 * rms(start["light"]), (rms(got["light"]),
                                                          rms(start["light"]))


@pytest.mark.parametrize("native", [False, None])
def test_sh_functions_in_the_documented_order(native):
  """Each of the 9 light coefficients lights a vertex with its own real SH function
  of the camera-space normal, in shading's documented order (1, y, z, x, xy, yz,
  3z²-1, xz, x²-y², orthonormal constants), in the JAX composition and the CPU
  kernel (None): an orthonormality check cannot see two functions swapped."""
  v, f = icosphere(1)
  verts = jnp.asarray(np.broadcast_to(60.0 * v, (9,) + v.shape), jnp.float32)
  light = jnp.asarray(np.repeat(np.eye(9)[:, :, None], 3, axis=2), jnp.float32)  # [9, 9, 3]
  angles = jnp.asarray(np.tile([[0.3, -0.5, 0.2]], (9, 1)), jnp.float32)
  cam, normals, colours = render.vertex_stage(
      verts, jnp.ones_like(verts), angles, jnp.zeros((9, 3)), light, jnp.asarray(f),
      native=native)
  n = np.asarray(normals[0], np.float64)
  x, y, z = n[:, 0], n[:, 1], n[:, 2]
  c0, c1 = 0.5 / np.sqrt(np.pi), np.sqrt(3 / (4 * np.pi))
  c2, c20, c22 = 0.5 * np.sqrt(15 / np.pi), 0.25 * np.sqrt(5 / np.pi), 0.25 * np.sqrt(15 / np.pi)
  want = [np.full_like(x, c0), c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z,
          c20 * (3 * z * z - 1), c2 * x * z, c22 * (x * x - y * y)]
  for k in range(9):
    np.testing.assert_allclose(np.asarray(colours[k]), np.repeat(want[k][:, None], 3, 1),
                               atol=1e-5, err_msg=f"SH function {k}")
  # The normals are the camera-space ones (the same rotation as the vertices).
  rot = np.asarray(camera.camera_rotation(angles[0]))
  np.testing.assert_allclose(n, shading.vertex_normals(verts[0], jnp.asarray(f)) @ rot.T,
                             atol=1e-5)
