"""Float64 finite-difference checks of the gradients that training and fitting use.

Every loss term of :mod:`focus_jax.losses` (element by element, at points away from
its kinks) and the renderer: the full :func:`render.render` (image, coverage and
landmarks w.r.t. shape, expression, albedo, pose and light, visibility held fixed),
:func:`render.vertex_stage`, and antialiasing under a general motion of every vertex.

The finite differences run in float64 (``jax.enable_x64`` inside each test, so
nothing leaks into other tests), on the pure-JAX path, which is what float64 inputs
select. The C++ CPU kernels compute in float32 only: their (float32) gradients are
checked against the same float64 differences, with a float32 tolerance.
"""

import contextlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax import losses
from focus_jax.morphable import model as model_lib
from focus_jax.render import camera, cpu_kernels, render, shading
from focus_jax.render import rasterize as R

sys.path.insert(0, os.path.dirname(__file__))
from render_testing import icosphere, rotation, to_camera_space  # noqa: E402

native_available = pytest.mark.skipif(
    not cpu_kernels.available(), reason="CPU kernels unavailable (pure-JAX path only)")


def _f64(tree):
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _elementwise_fd(fn, args, argnum, h):
  """Central differences of scalar ``fn(*args)`` w.r.t. every element of
  ``args[argnum]`` (all perturbations evaluated in one vmapped call)."""
  x = args[argnum]
  eye = jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)

  def at(dx):
    return fn(*args[:argnum], x + dx, *args[argnum + 1:])

  plus, minus = jax.vmap(at)(h * eye), jax.vmap(at)(-h * eye)
  return np.asarray((plus - minus) / (2 * h)).reshape(x.shape)


def check_loss_gradient(fn, args, argnums, h=1e-6, rtol=1e-6):
  """Analytic gradient of ``fn`` (reverse mode, as training takes it) against
  central differences, element by element, in float64."""
  with jax.enable_x64(True):
    args = _f64(args)
    fn = jax.jit(fn)
    grads = jax.grad(fn, argnums)(*args)
    for k, g in zip(argnums, grads):
      fd = _elementwise_fd(fn, args, k, h)
      g = np.asarray(g)
      assert g.dtype == np.float64
      assert np.abs(fd).max() > 1e-6, f"argument {k}: the loss does not depend on it"
      np.testing.assert_allclose(g, fd, rtol=rtol, atol=rtol * np.abs(fd).max(),
                                 err_msg=f"argument {k}")


# ----------------------------------------------------------------------------- losses


def _images(rng, shape=(2, 5, 6)):
  return rng.uniform(0.1, 0.9, shape + (3,)), rng.uniform(0.1, 0.9, shape + (3,))


def test_robust_photometric_gradient():
  rng = np.random.default_rng(0)
  image = rng.uniform(0.2, 0.8, (2, 5, 6, 3))
  # Residual norms in [0.2, 2.5]σ (inliers) or [3.5, 6]σ (outliers): every pixel stays
  # on its side of the 3σ threshold under the perturbations.
  direction = rng.normal(size=image.shape)
  direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
  inlier = rng.random(image.shape[:-1]) < 0.6
  norm = np.where(inlier, rng.uniform(0.2, 2.5, inlier.shape), rng.uniform(3.5, 6, inlier.shape))
  target = image + losses.SIGMA * norm[..., None] * direction
  face = (rng.random(image.shape[:-1]) < 0.8).astype(np.float64)
  _, w = losses.robust_photometric(jnp.asarray(image, jnp.float32),
                                   jnp.asarray(target, jnp.float32), jnp.asarray(face))
  assert 0 < float(jnp.sum(w)) < face.sum()       # both inliers and outliers in the face
  check_loss_gradient(lambda i, t: losses.robust_photometric(i, t, face)[0], (image, target),
                      (0, 1))
  # A misfit-prior σ map: the gradient w.r.t. the image and the map itself.
  sigma = losses.SIGMA * rng.uniform(1.0, 1.5, image.shape[:-1])
  check_loss_gradient(lambda i, s: losses.robust_photometric(i, target, face, sigma=s)[0],
                      (image, sigma), (0, 1))


def test_masked_reconstruction_gradient():
  rng = np.random.default_rng(1)
  image, target = _images(rng)
  face, inlier = rng.uniform(0.1, 1, image.shape[:-1]), rng.uniform(0.1, 1, image.shape[:-1])
  check_loss_gradient(losses.masked_reconstruction, (image, target, face, inlier), (0, 1, 2, 3))


def test_landmark_loss_gradient():
  rng = np.random.default_rng(2)
  predicted = rng.uniform(0, 64, (2, 68, 2))
  target = predicted + rng.normal(size=predicted.shape) * 3
  valid = np.ones((2, 68), bool)
  valid[0, :5] = valid[1, 40] = False
  target[~valid] = np.nan                      # undefined landmarks: no value, no gradient
  check_loss_gradient(lambda p: losses.landmark_loss(p, target, valid=valid), (predicted,), (0,))
  target[~valid] = 0.0
  check_loss_gradient(lambda p, t: losses.landmark_loss(p, t, valid=valid), (predicted, target),
                      (0, 1))


@pytest.mark.parametrize("term", ["perceptual", "preserve", "dist"])
def test_cosine_terms_gradient(term):
  rng = np.random.default_rng(3)
  fn = getattr(losses, f"{term}_loss")
  shape = (3, 16) if term == "perceptual" else (2, 3, 2, 8)     # embeddings / NHWC maps
  a = rng.normal(size=shape)
  b = a + rng.normal(size=shape)
  check_loss_gradient(fn, (a, b), (0, 1))


def test_coefficient_regularization_gradient():
  rng = np.random.default_rng(4)
  check_loss_gradient(losses.coefficient_regularization,
                      (rng.normal(size=(2, 5)), rng.normal(size=(2, 3)), rng.normal(size=(2, 4))),
                      (0, 1, 2))


def test_area_and_binary_gradients():
  rng = np.random.default_rng(5)
  face = rng.uniform(0.05, 1, (2, 5, 6))
  inlier = rng.uniform(0.05, 1, (2, 5, 6))
  check_loss_gradient(losses.area_loss, (face, inlier), (0, 1))
  # |M·F − 0.5| has a kink at 0.5: keep every product at least 0.05 away.
  product = face * inlier
  inlier = np.where(np.abs(product - 0.5) < 0.05, np.clip(inlier * 0.8, 0.05, 1), inlier)
  assert np.abs(face * inlier - 0.5).min() > 0.01
  check_loss_gradient(losses.binary_loss, (face, inlier), (0, 1))


def test_neighbour_loss_gradient():
  rng = np.random.default_rng(6)
  image, target = _images(rng, (1, 6, 7))
  inlier = rng.uniform(0.3, 1, (1, 6, 7))
  scale = rng.uniform(1, 2, (1, 6, 7))
  # The minimum over the 5x5 shifts is a kink where two shifts tie; random colours
  # keep the two smallest distances apart at every pixel (checked).
  m = inlier[..., None]
  shifted = [np.linalg.norm((image * m)[:, 2:4, 2:5] - (target * m)[:, 2 + dy:4 + dy,
                                                                    2 + dx:5 + dx], axis=-1)
             for dy in range(-2, 3) for dx in range(-2, 3)]
  two = np.sort(np.stack(shifted), axis=0)[:2]
  assert (two[1] - two[0]).min() > 1e-4
  check_loss_gradient(lambda i, t, w, s: losses.neighbour_loss(i, t, w, scale=s),
                      (image, target, inlier, scale), (0, 1, 2, 3))


# ----------------------------------------------------------------------------- renderer

INTR = camera.Intrinsics.reference(32)


def _directional_check(grads, params, rng, h, rtol, reference, directions=2, fixed=None):
  """<grad, d> against the central difference of the float64 ``reference`` along
  random directions d, per parameter of ``params`` (the others from ``fixed``);
  visibility (the aux output, triangle ids) must not change between x ± h·d."""
  with jax.enable_x64(True):
    base = _f64(dict(fixed or {}, **params))
    ids = np.asarray(reference(base)[1])
    for name in params:
      for _ in range(directions):
        d = jnp.asarray(rng.normal(size=np.shape(params[name])), jnp.float64)
        plus = dict(base, **{name: base[name] + h * d})
        minus = dict(base, **{name: base[name] - h * d})
        (fp, ip), (fm, im) = reference(plus), reference(minus)
        np.testing.assert_array_equal(np.asarray(ip), ids)     # visibility held fixed
        np.testing.assert_array_equal(np.asarray(im), ids)
        fd = float(fp - fm) / (2 * h)
        an = float(np.sum(np.asarray(grads[name], np.float64) * np.asarray(d)))
        scale = float(np.linalg.norm(np.asarray(grads[name], np.float64)) * np.linalg.norm(d))
        assert scale > 0, name
        assert abs(an - fd) <= rtol * max(abs(fd), 0.1 * scale), (name, an, fd)


@pytest.fixture(scope="module")
def sphere_model():
  """A bumpy sphere 'face' (radius 80 mm, 320 triangles) with random bases."""
  v, f = icosphere(2)
  rng = np.random.default_rng(0)
  return model_lib.make_model(
      v * 80.0, rng.normal(size=(2, len(v), 3)) * 2.0, rng.normal(size=(1, len(v), 3)),
      rng.uniform(0.2, 0.8, size=(len(v), 3)), rng.normal(size=(2, len(v), 3)) * 0.05, f,
      landmarks=np.arange(68), name="fd-sphere")


def _render_params(rng):
  return dict(shape=rng.normal(size=(1, 2)), expression=rng.normal(size=(1, 1)),
              albedo_coeffs=rng.normal(size=(1, 2)), angles=rng.normal(size=(1, 3)) * 0.1,
              translation=rng.normal(size=(1, 3)) * 3.0,
              light=np.asarray(shading.default_light((1,))) + rng.normal(size=(1, 9, 3)) * 0.3)


@contextlib.contextmanager
def _visibility_of(held):
  """While render is traced: its rasterizer sees ``held`` camera-space vertices
  instead of the ones it is given (visibility held fixed; gradients unchanged)."""
  real = render.raster_lib.rasterize
  render.raster_lib.rasterize = lambda points, *a, **kw: real(jax.lax.stop_gradient(held), *a,
                                                              **kw)
  try:
    yield
  finally:
    render.raster_lib.rasterize = real


def _render_loss(model, held_visibility):
  def loss(p, weights, held=None):
    with (_visibility_of(held) if held_visibility else contextlib.nullcontext()):
      out = render.render(model, intrinsics=INTR, background=jnp.full((3,), 0.3), **p)
    value = (jnp.sum(out.image * weights[0]) + jnp.sum(out.mask * weights[1])
             + jnp.sum(out.landmarks * weights[2]))
    return value, (out.triangle_id, out.vertices_camera)
  return jax.jit(loss)


@pytest.fixture(scope="module")
def render_case(sphere_model):
  """Parameters, two weightings (image + coverage + landmarks; the coverage alone,
  whose gradient is the silhouette antialiasing's) and the float64 reference
  (compiled once for both tests). Its visibility is held at that of the
  unperturbed mesh: visibility is computed in float32, so a float64 step of 1e-5
  can flip a pixel centre within float32 rounding of an interior edge to the
  neighbouring triangle (no gradient describes that jump)."""
  rng = np.random.default_rng(7)
  params = _render_params(rng)
  weights = (rng.normal(size=(1, 32, 32, 3)), rng.normal(size=(1, 32, 32)),
             rng.normal(size=(1, 68, 2)) * 0.01)
  mask_only = (0 * weights[0], weights[1], 0 * weights[2])
  loss64 = _render_loss(sphere_model, held_visibility=True)
  with jax.enable_x64(True):
    p = _f64(params)
    held = camera.to_camera(model_lib.vertices(sphere_model, p["shape"], p["expression"]),
                            p["angles"], p["translation"])
    ids = np.asarray(loss64(p, _f64(weights), held)[1][0])
  assert 0.2 < np.mean(ids >= 0) < 0.9            # silhouettes in view

  def reference(w):
    def fn(p):
      value, (tid, _) = loss64(p, _f64(w), held)
      return value, tid
    return fn
  return dict(params=params, weightings=(weights, mask_only), reference=reference, ids=ids,
              loss64=loss64, held=held)


@pytest.mark.parametrize("path", ["jax", pytest.param("native", marks=native_available)])
def test_render_gradient_matches_float64_differences(sphere_model, render_case, path):
  """Image (with antialiased silhouettes), coverage and landmarks w.r.t. every
  coefficient group (shape and expression move every vertex), and the coverage
  alone. float64 inputs take the JAX path; float32 ones the kernels (render as it
  runs, its own visibility)."""
  params = render_case["params"]
  f32 = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), t)
  if path == "native":
    assert cpu_kernels.resolve(None, f32(params)["shape"])
    loss32 = _render_loss(sphere_model, held_visibility=False)
    grad = jax.jit(jax.grad(lambda p, w: loss32(p, w)[0]))
  rng = np.random.default_rng(10)
  for w in render_case["weightings"]:
    if path == "jax":
      with jax.enable_x64(True):
        grads = jax.grad(lambda p: render_case["loss64"](p, _f64(w), render_case["held"])[0])(
            _f64(params))
    else:
      tid = loss32(f32(params), f32(w))[1][0]
      np.testing.assert_array_equal(np.asarray(tid), np.asarray(render_case["ids"]))
      grads = grad(f32(params), f32(w))
    # The coverage depends on the geometry only (albedo and light: zero gradient).
    names = params if w is render_case["weightings"][0] else (
        "shape", "expression", "angles", "translation")
    _directional_check(grads, {k: params[k] for k in names}, rng, h=1e-5,
                       rtol=1e-6 if path == "jax" else 2e-3,
                       reference=render_case["reference"](w), directions=1, fixed=params)


@pytest.mark.parametrize("path", ["jax", pytest.param("native", marks=native_available)])
def test_vertex_stage_gradient_matches_float64_differences(path):
  """Camera-space vertices, unit normals and shaded colours w.r.t. vertices,
  albedo, pose and light (a batch of two)."""
  v, triangles = icosphere(2)
  rng = np.random.default_rng(8)
  params = dict(verts=60.0 * v[None] + rng.normal(size=(2,) + v.shape),
                albedo=rng.uniform(0.2, 1.0, (2,) + v.shape), angles=rng.normal(size=(2, 3)) * 0.3,
                translation=rng.normal(size=(2, 3)) * 5.0,
                light=np.asarray(shading.default_light((2,))) + rng.normal(size=(2, 9, 3)) * 0.3)
  weights = [rng.normal(size=(2,) + v.shape) for _ in range(3)]
  tri = jnp.asarray(triangles)

  def make(w, native):
    def loss(p):
      out = render.vertex_stage(p["verts"], p["albedo"], p["angles"], p["translation"],
                                p["light"], tri, native=native)
      return sum(jnp.sum(o * wk) for o, wk in zip(out, w)), jnp.zeros(())
    return loss

  with jax.enable_x64(True):
    reference = jax.jit(make(_f64(weights), False))
    if path == "jax":
      grads = jax.grad(lambda p: reference(p)[0])(_f64(params))
  if path == "native":
    f32 = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), t)
    grads = jax.jit(jax.grad(lambda p: make(f32(weights), True)(p)[0]))(f32(params))
  _directional_check(grads, params, rng, h=1e-5, rtol=1e-6 if path == "jax" else 1e-3,
                     reference=reference, directions=3)


# The JAX path's antialias backward takes ~25 s to compile; in the default run the
# render test covers it (shape and expression move every vertex; coverage alone).
@pytest.mark.parametrize("path", [pytest.param("jax", marks=pytest.mark.slow),
                                  pytest.param("native", marks=native_available)])
def test_antialias_gradient_under_general_vertex_motion(path):
  """Interpolate + antialias of a colour image and its coverage with the
  fragments held fixed; every vertex moves (a random direction), so silhouette
  crossings move along both axes at once. Then the coverage alone, whose gradient
  comes from the silhouette blending only (it cannot hide behind the
  interpolation's)."""
  v, triangles = icosphere(2)
  rng = np.random.default_rng(9)
  points = to_camera_space(v, 40.0, rotation(0.3, 0.5, 0.1), 600.0)
  points += rng.normal(size=points.shape) * 1.5                     # bumpy silhouette
  intr = camera.Intrinsics(focal=200.0, cx=16.0, cy=15.0, width=32, height=30)
  tri = jnp.asarray(triangles)
  frags = R.rasterize(jnp.asarray(points, jnp.float32), tri, intr, cull_backfaces=True)
  coverage = frags.mask[..., None]
  blended = R.antialias(coverage.astype(jnp.float32), jnp.asarray(points, jnp.float32), tri,
                        frags, intr)
  assert int(jnp.sum((blended > 1e-3) & (blended < 1 - 1e-3))) > 30     # silhouettes blend
  colors = rng.uniform(size=(len(v), 3))
  weights = (rng.normal(size=(30, 32, 3)), rng.normal(size=(30, 32, 1)))

  def make(native):
    def loss(p, w):
      fr = jax.tree_util.tree_map(jnp.asarray, frags)
      image = R.interpolate(p["colors"], p["points"], tri, fr, intr, native=native)
      out = R.antialias((image, coverage.astype(image.dtype)), p["points"], tri, fr, intr,
                        native=native)
      return jnp.sum(out[0] * w[0]) + jnp.sum(out[1] * w[1]), fr.triangle_id
    return jax.jit(loss)

  f32 = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), t)
  params = dict(points=points, colors=colors)
  loss64 = make(False)
  grad = jax.jit(jax.grad(lambda p, w: make(path == "native")(p, w)[0]))
  for w, names in ((weights, ("points", "colors")), ((0 * weights[0], weights[1]), ("points",))):
    with jax.enable_x64(True):
      reference = lambda p, w=_f64(w): loss64(p, w)
    if path == "jax":
      with jax.enable_x64(True):
        grads = grad(_f64(params), _f64(w))
    else:
      grads = grad(f32(params), f32(w))
    _directional_check(grads, {k: params[k] for k in names}, rng, h=1e-6,
                       rtol=1e-6 if path == "jax" else 2e-3, reference=reference,
                       directions=2, fixed=params)
