"""Tests of focus_jax.render.rasterize against a brute-force NumPy rasterizer."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.render import rasterize as R
from focus_jax.render import soft
from focus_jax.render.camera import Intrinsics

sys.path.insert(0, os.path.dirname(__file__))
from render_testing import (icosphere, grid, reference_rasterize, rotation,  # noqa: E402
                            to_camera_space)

INTR = Intrinsics.reference(48)
# A focal length that makes a 100 mm object at 1000 mm about as wide as the image.
WIDE = Intrinsics(focal=480.0, cx=24.0, cy=24.0, width=48, height=48)


def sphere(subdivisions=2, angles=(0.3, 0.5, 0.1), radius=40.0, depth=1000.0, offset=(0, 0)):
  v, f = icosphere(subdivisions)
  p = to_camera_space(v, radius, rotation(*angles), depth)
  p[:, 0] += offset[0]
  p[:, 1] += offset[1]
  return p.astype(np.float32), f


def random_soup(rng, num, spread=60.0, size=25.0, depth=1000.0):
  """Random triangles, some large and crossing the image border, random depths."""
  centres = np.stack([rng.uniform(-spread, spread, num), rng.uniform(-spread, spread, num),
                      rng.uniform(depth - 50, depth + 50, num)], -1)
  scale = size * rng.uniform(0.1, 1.5, (num, 1, 1))
  p = centres[:, None, :] + scale * rng.normal(size=(num, 3, 3)) * [1, 1, 0.3]
  return p.reshape(-1, 3).astype(np.float32), np.arange(3 * num, dtype=np.int32).reshape(num, 3)


def padded(points, triangles, num_vertices=1024, num_triangles=512):
  """Pads a mesh with unused vertices and degenerate triangles to fixed sizes, so
  that the tests share compiled executables (XLA compilation dominates their
  run time)."""
  p = np.zeros((max(num_vertices, len(points)), 3), np.float32)
  p[:len(points)] = points
  t = np.zeros((max(num_triangles, len(triangles)), 3), np.int32)
  t[:len(triangles)] = triangles
  return jnp.asarray(p), jnp.asarray(t)


def check_against_reference(points, triangles, intr=WIDE, cull=False, min_agree=0.999, **kw):
  frags = R.rasterize(*padded(points, triangles), intr, cull_backfaces=cull, **kw)
  tid, depth, bary = reference_rasterize(points, triangles, intr, cull_backfaces=cull)
  got = np.asarray(frags.triangle_id)
  assert got.shape == (intr.height, intr.width)
  agree = np.mean(got == tid)
  assert agree >= min_agree, agree
  np.testing.assert_array_equal(np.asarray(frags.mask), tid >= 0)
  same = (got == tid) & (tid >= 0)
  np.testing.assert_allclose(np.asarray(frags.depth)[same], depth[same], rtol=1e-4)
  np.testing.assert_allclose(np.asarray(frags.barycentric)[same], bary[same], atol=2e-3)
  assert np.all(np.isfinite(np.asarray(frags.barycentric)))
  assert np.all(np.asarray(frags.depth)[tid < 0] == 0)
  return frags, tid


@pytest.mark.parametrize("cull", [False, True])
def test_sphere_matches_reference(cull):
  points, triangles = sphere()
  frags, tid = check_against_reference(points, triangles, cull=cull)
  assert 0.2 < np.mean(tid >= 0) < 0.9
  # A closed sphere: the visible triangle is front-facing either way.
  frags_cull = R.rasterize(*padded(points, triangles), WIDE, cull_backfaces=not cull)
  assert np.mean(np.asarray(frags_cull.triangle_id) == np.asarray(frags.triangle_id)) > 0.999


def test_random_soup_matches_reference():
  rng = np.random.default_rng(0)
  points, triangles = random_soup(rng, 60)
  check_against_reference(points, triangles)
  check_against_reference(points, triangles, cull=True)


def test_quad_covering_whole_image():
  points = np.array([[-500, -510, 900], [530, -500, 900], [500, 520, 1100], [-500, 500, 1100]],
                    np.float32)
  triangles = np.array([[0, 2, 1], [0, 3, 2]], np.int32)
  frags, tid = check_against_reference(points, triangles)
  assert np.all(tid >= 0)
  # Both orientations are front-facing exactly once.
  frags = R.rasterize(*padded(points, triangles[:, ::-1].copy()), WIDE, cull_backfaces=True)
  assert not np.any(np.asarray(frags.mask))


def test_slivers_and_partly_outside():
  rng = np.random.default_rng(1)
  tris = []
  for _ in range(40):
    a = rng.uniform(-80, 80, 2)
    d = rng.normal(size=2)
    d /= np.linalg.norm(d)
    b = a + rng.uniform(20, 150) * d
    c = (a + b) / 2 + rng.uniform(0.05, 1.0) * np.array([-d[1], d[0]])   # ~0.05-1 px wide
    z = rng.uniform(950, 1050)
    tris.append([[*a, z], [*b, z + rng.uniform(-5, 5)], [*c, z]])
  points = np.array(tris, np.float32).reshape(-1, 3)
  triangles = np.arange(len(points), dtype=np.int32).reshape(-1, 3)
  check_against_reference(points, triangles)


def test_triangles_behind_and_crossing_camera():
  points = np.array([
      # Crosses the camera plane: one vertex behind the camera.
      [-30, -40, 500], [60, -10, 600], [10, 30, -300],
      # Entirely behind the camera (must not appear mirrored).
      [-50, -50, -500], [50, -50, -500], [0, 50, -500],
      # Two vertices behind, straddling the image.
      [0, 0, 800], [-400, 100, -100], [300, 290, -50],
      # In front, occluded in part by the crossing ones.
      [-80, -80, 1000], [80, -80, 1000], [0, 90, 1000],
  ], np.float32)
  triangles = np.arange(12, dtype=np.int32).reshape(4, 3)
  frags, tid = check_against_reference(points, triangles)
  assert not np.any(tid == 1)
  assert np.any(tid == 0) and np.any(tid == 3)
  for k in (0, 2):   # each crossing triangle on its own
    _, tid = check_against_reference(points, triangles[k:k + 1])
    assert 0.05 < np.mean(tid == 0) < 1.0
  # Without clipping the projected triangle 1 would cover the image centre.
  frags = R.rasterize(*padded(points[3:6], np.arange(3)[None]), WIDE)
  assert not np.any(np.asarray(frags.mask))


def test_degenerate_triangles():
  points = np.array([
      [0, 0, 1000], [10, 0, 1000], [20, 0, 1000],        # collinear
      [5, 5, 1000], [5, 5, 1000], [30, 20, 1000],        # repeated vertex
      [0, 0, 1000], [0, 0, 1000], [0, 0, 1000],          # a point
      [-10, -10, 1000], [np.nan, 0, 1000], [0, 10, 1000],  # non-finite
      [0, 0, 500], [0, 10, 1000], [0, -10, 1500],        # plane through the camera
      [-60, -60, 1100], [60, -60, 1100], [0, 60, 1100],  # a proper one behind them
  ], np.float32)
  triangles = np.arange(18, dtype=np.int32).reshape(6, 3)
  frags = R.rasterize(*padded(points, triangles), WIDE)
  tid = np.asarray(frags.triangle_id)
  assert set(np.unique(tid)) <= {-1, 5}
  assert np.mean(tid == 5) > 0.1
  for field in (frags.depth, frags.barycentric):
    assert np.all(np.isfinite(np.asarray(field)))


def test_chunking_and_footprint_do_not_change_result():
  rng = np.random.default_rng(2)
  points, triangles = random_soup(rng, 40)
  base = R.rasterize(*padded(points, triangles), WIDE)
  for kw in (dict(footprint=5, chunk_size=97),):
    other = R.rasterize(*padded(points, triangles), WIDE, **kw)
    np.testing.assert_array_equal(np.asarray(other.triangle_id), np.asarray(base.triangle_id))


def test_float64_points_give_the_float32_visibility():
  """Under x64 (the finite-difference tests) float64 points take the JAX path; their
  visibility is the float32 one (it once came back empty: float64 inverse depths
  never equalled their float32-rounded z-buffer maxima)."""
  points, triangles = sphere(subdivisions=1)
  pts, tri = padded(points, triangles)
  want = R.rasterize(pts, tri, WIDE, cull_backfaces=True, native=False)
  with jax.enable_x64(True):
    got = R.rasterize(jnp.asarray(pts, jnp.float64), tri, WIDE, cull_backfaces=True)
    got = jax.tree_util.tree_map(np.asarray, got)
  assert int(want.mask.sum()) > 200
  np.testing.assert_array_equal(got.triangle_id, np.asarray(want.triangle_id))
  np.testing.assert_array_equal(got.depth, np.asarray(want.depth))


def test_ties_resolve_to_smallest_id():
  points = np.array([[-80, -80, 1000], [80, -80, 1000], [0, 90, 1000]], np.float32)
  # Bitwise-equal depths (a repeated triangle): the smaller id wins. (A rotated
  # vertex order is an exact tie only in exact arithmetic.)
  triangles = np.array([[1, 2, 0], [0, 1, 2], [0, 1, 2]], np.int32)
  frags = R.rasterize(*padded(points, triangles), WIDE)
  ids = np.asarray(frags.triangle_id)
  assert not np.any(ids == 2)
  assert np.any(ids == 1)


def test_batched_jit_matches_single():
  pts = [padded(*sphere(angles=(0.1 * i, 0.2, 0.0)))[0] for i in range(3)]
  tri = padded(*sphere())[1]
  fn = jax.jit(lambda p: R.rasterize(p, tri, WIDE, cull_backfaces=True))
  batched = fn(jnp.stack(pts))
  assert batched.triangle_id.shape == (3, 48, 48)
  for i in range(3):
    single = R.rasterize(pts[i], tri, WIDE, cull_backfaces=True)
    np.testing.assert_array_equal(np.asarray(batched.triangle_id[i]),
                                  np.asarray(single.triangle_id))


def _interior_weights(tid):
  """1 on pixels whose 4-neighbourhood shows the same triangle, else 0."""
  t = np.pad(tid, 1, constant_values=-2)
  same = ((t[1:-1, 1:-1] == t[:-2, 1:-1]) & (t[1:-1, 1:-1] == t[2:, 1:-1])
          & (t[1:-1, 1:-1] == t[1:-1, :-2]) & (t[1:-1, 1:-1] == t[1:-1, 2:]))
  return (same & (tid >= 0)).astype(np.float64)


def test_interpolate_matches_barycentrics_and_finite_differences():
  points, triangles = sphere(subdivisions=1, radius=60.0)
  tri = jnp.asarray(triangles)
  frags = R.rasterize(*padded(points, triangles), WIDE, cull_backfaces=True)
  rng = np.random.default_rng(3)
  attrs = rng.uniform(size=(len(points), 3))
  img = R.interpolate(jnp.asarray(attrs, jnp.float32), jnp.asarray(points), tri, frags, WIDE)
  tid = np.asarray(frags.triangle_id)
  expect = np.einsum("hwk,hwkc->hwc", np.asarray(frags.barycentric),
                     attrs[triangles[np.maximum(tid, 0)]]) * (tid >= 0)[..., None]
  np.testing.assert_allclose(np.asarray(img), expect, atol=1e-5)

  weights = _interior_weights(tid)[..., None] * rng.normal(size=(48, 48, 3))
  with jax.enable_x64(True):
    frags64 = jax.tree_util.tree_map(jnp.asarray, frags)
    def loss(p, a):
      return jnp.sum(R.interpolate(a, p, tri, frags64, WIDE) * weights)
    p0, a0 = jnp.asarray(points, jnp.float64), jnp.asarray(attrs)
    gp, ga = jax.grad(loss, argnums=(0, 1))(p0, a0)
    assert np.abs(np.asarray(gp)).max() > 0
    for _ in range(3):
      dp = jnp.asarray(rng.normal(size=points.shape))
      da = jnp.asarray(rng.normal(size=attrs.shape))
      h = 1e-4
      fd = (loss(p0 + h * dp, a0 + h * da) - loss(p0 - h * dp, a0 - h * da)) / (2 * h)
      an = jnp.sum(gp * dp) + jnp.sum(ga * da)
      np.testing.assert_allclose(float(an), float(fd), rtol=1e-5, atol=1e-8)


def test_antialias_area_and_silhouette_gradient():
  """The antialiased coverage of a square sums to its exact area; its gradient
  w.r.t. the square's size matches the analytic derivative of that area."""
  tri = jnp.array([[0, 2, 1], [0, 3, 2]], jnp.int32)
  ang = 0.3

  def square(half):
    c, s = np.cos(ang), np.sin(ang)
    corners = jnp.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], jnp.float32) * half
    rot = jnp.array([[c, -s], [s, c]], jnp.float32)
    xy = corners @ rot.T + jnp.array([1.3, -0.7])
    return jnp.concatenate([xy, jnp.full((4, 1), 1000.0)], -1)

  @jax.jit
  @jax.value_and_grad
  def coverage(half):
    pts, tri_padded = padded(np.zeros((4, 3)), np.asarray(tri))
    pts = pts.at[:4].set(square(half))
    frags = R.rasterize(pts, tri_padded, WIDE)
    alpha = frags.mask.astype(jnp.float32)[..., None]
    return jnp.sum(R.antialias(alpha, pts, tri_padded, frags, WIDE))

  px = WIDE.focal / 1000.0          # pixels per mm at this depth
  for half in (25.0, 31.7):
    area = (2 * half * px) ** 2
    value, grad = coverage(jnp.float32(half))
    assert abs(float(value) - area) < 0.01 * area
    np.testing.assert_allclose(float(grad), 8 * half * px * px, rtol=0.05)


def test_interior_edges_are_not_blurred():
  points, triangles = grid(8, size=100.0)
  pts, tri = padded(to_camera_space(points, 1.0, np.eye(3), 1000.0), triangles)
  frags = R.rasterize(pts, tri, WIDE)
  img = jnp.ones((48, 48, 1)) * frags.mask[..., None]
  out = R.antialias(img, pts, tri, frags, WIDE)
  inner = np.asarray(frags.mask)
  inner = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(
      inner, -1, 1)
  np.testing.assert_allclose(np.asarray(out)[inner], 1.0, atol=1e-6)


def test_edge_neighbours_of_grid_and_traced_path():
  points, triangles = grid(3)
  nb = np.asarray(R.edge_neighbours(jnp.asarray(triangles)))
  # A 3 x 3-quad grid: 12 boundary edges, every other edge shared by two.
  assert np.sum(nb < 0) == 12
  for f, k in zip(*np.nonzero(nb >= 0)):
    edge = {triangles[f][(k + 1) % 3], triangles[f][(k + 2) % 3]}
    g = nb[f, k]
    assert len(edge & set(triangles[g])) == 2 and g != f
    assert f in nb[g]
  # Traced triangles (a jit argument) go through the host callback.
  traced = jax.jit(R.edge_neighbours)(jnp.asarray(triangles))
  np.testing.assert_array_equal(np.asarray(traced), nb)


def _two_triangle_aa(triangles):
  """Antialiased one-hot triangle image of a quad split along its diagonal
  0-2, and the gradient of the antialiased image near that diagonal (away from
  the quad's outline) w.r.t. the vertices."""
  corners = np.array([[-30, -25, 1000], [35, -30, 1000], [30, 35, 1000], [-35, 30, 1000]],
                     np.float32)
  pts, tri = padded(corners, triangles)
  frags = R.rasterize(pts, tri, WIDE)
  img = jnp.stack([frags.triangle_id == 0, frags.triangle_id == 1], -1).astype(jnp.float32)
  # The quad shrunk by 20 % about its centre: pixels >= 2 px from the outline.
  inner = np.asarray(R.rasterize(pts * jnp.array([0.8, 0.8, 1.0]), tri, WIDE).mask)
  weights = jnp.asarray(inner[..., None] * np.array([1.0, -1.0]), jnp.float32)
  loss = lambda p: jnp.sum(R.antialias(img, p, tri, frags, WIDE) * weights)
  out = R.antialias(img, pts, tri, frags, WIDE)
  return np.asarray(out - img), inner, np.asarray(jax.grad(loss)(pts))[:4]


def test_antialias_skips_interior_edges_and_blends_silhouettes():
  # Both triangles front-facing (clockwise on the y-down image) and sharing
  # the edge 0-2: an interior edge, no blending and no gradient along it.
  delta, inner, grad = _two_triangle_aa(np.array([[0, 2, 1], [0, 3, 2]], np.int32))
  assert np.any(delta != 0)                       # the outline is antialiased
  np.testing.assert_array_equal(delta[inner], 0.0)
  np.testing.assert_array_equal(grad, 0.0)
  # The second triangle wound the other way (seen from the back): the same
  # screen-space edge is now a silhouette, blended, with a gradient.
  delta, inner, grad = _two_triangle_aa(np.array([[0, 2, 1], [0, 2, 3]], np.int32))
  assert np.sum(delta[inner] != 0) >= 10
  assert np.abs(grad).max() > 0
  assert np.abs(grad[[0, 2]]).max() > 0           # the diagonal's vertices


# native=None: the C++ kernels on CPU (the default); False: the JAX path (what runs
# on GPU/TPU), which the kernel parity tests cover only against each other.
@pytest.mark.parametrize("native", [None, False])
def test_soft_rasterize_approaches_hard_and_has_gradients(native):
  points, triangles = sphere(subdivisions=2, radius=60.0)
  rng = np.random.default_rng(4)
  colors = jnp.asarray(rng.uniform(size=(1024, 3)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(48, 48, 3)), jnp.float32)
  pts, tri = padded(points, triangles)

  @jax.jit
  def loss(p, c, sigma, gamma):
    out = R.soft_rasterize(p, tri, c, WIDE, sigma=sigma, gamma=gamma, max_fragments=60000,
                           native=native)
    value = jnp.sum(out.image * weights) + jnp.sum(out.alpha * weights[..., 0])
    return value, out

  grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (_, soft), _ = grad_fn(pts, colors, 1e-3, 1e-4)
  frags = R.rasterize(pts, tri, WIDE)
  hard = R.interpolate(colors, pts, tri, frags, WIDE)
  assert int(soft.overflow) == 0
  inside = _interior_weights(np.asarray(frags.triangle_id)) > 0
  assert np.median(np.abs(np.asarray(soft.image - hard))[inside]) < 0.02
  alpha = np.asarray(soft.alpha)
  assert alpha.min() >= 0 and alpha.max() <= 1
  assert np.mean(np.abs(alpha - np.asarray(frags.mask))) < 0.05

  # With a wide blur and a mild depth temperature the image is a smooth function
  # of the vertices (small gamma makes it steep where a far triangle's tiny
  # probability outweighs the background, as in SoftRas).
  (_, out), (gp, gc) = grad_fn(pts, colors, 1.0, 1.0)
  assert int(out.overflow) == 0
  assert np.all(np.isfinite(np.asarray(gp))) and np.abs(np.asarray(gp)).max() > 0
  assert np.all(np.isfinite(np.asarray(gc)))
  dp = jnp.asarray(rng.normal(size=(1024, 3)), jnp.float32)
  h = 0.02
  fd = (grad_fn(pts + h * dp, colors, 1.0, 1.0)[0][0]
        - grad_fn(pts - h * dp, colors, 1.0, 1.0)[0][0]) / (2 * h)
  np.testing.assert_allclose(float(jnp.sum(gp * dp)), float(fd), rtol=0.05)


def test_soft_rasterize_in_groups_matches_one_batch(monkeypatch):
  """Large batches go through soft rasterization in groups of images
  (rematerialised); the result and its gradients must not depend on that. The
  JAX path only: the C++ kernels do not group."""
  points, triangles = sphere(subdivisions=2, radius=20.0)
  pts, tri = padded(points, triangles)
  rng = np.random.default_rng(5)
  batch = jnp.stack([pts + jnp.asarray([8.0 * b, -5.0 * b, 10.0 * b], jnp.float32)
                     for b in range(4)])
  colors = jnp.asarray(rng.uniform(size=(4, pts.shape[0], 3)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(4, 48, 48, 3)), jnp.float32)

  def loss(p, c):
    out = R.soft_rasterize(p, tri, c, WIDE, sigma=0.5, gamma=1e-2, native=False)
    assert out.overflow.shape == (4,)
    return jnp.sum(out.image * weights) + jnp.sum(out.alpha * weights[..., 0]), out.overflow

  grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  (value, overflow), grads = grad_fn(batch, colors)
  monkeypatch.setattr(soft, "_SOFT_GROUP_TRIANGLES", 2 * tri.shape[0])   # groups of 2
  (value2, overflow2), grads2 = grad_fn(batch, colors)
  np.testing.assert_array_equal(np.asarray(overflow), 0)
  np.testing.assert_array_equal(np.asarray(overflow2), 0)
  np.testing.assert_allclose(float(value2), float(value), rtol=1e-5)
  for g, g2 in zip(grads, grads2):
    assert np.abs(np.asarray(g)).max() > 0
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g), rtol=1e-4,
                               atol=1e-4 * np.abs(np.asarray(g)).max())


def test_pmap_in_subprocess():
  """Rasterize, interpolate (value and gradient) and antialias under pmap over two
  CPU devices equal the unmapped calls on each image (which differ)."""
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from focus_jax.render import rasterize as R
      from focus_jax.render.camera import Intrinsics
      intr = Intrinsics(focal=480.0, cx=16.0, cy=16.0, width=32, height=32)
      pts = jnp.array([[[-50, -50, 1000], [50, -50, 1000], [0, 50, 1000],
                        [-10, 0, 990]]] * 2, jnp.float32)
      pts = pts.at[1, :, 0].add(10.0)
      tri = jnp.array([[0, 1, 2], [0, 3, 1]], jnp.int32)
      colours = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 3)), jnp.float32)
      w = jnp.asarray(np.random.default_rng(1).normal(size=(32, 32, 3)), jnp.float32)
      def f(p):
        fr = R.rasterize(p, tri, intr)
        img = R.interpolate(colours, p, tri, fr, intr)
        aa = lambda q: R.antialias(R.interpolate(colours, q, tri, fr, intr), q, tri, fr, intr)
        return fr.triangle_id, img, aa(p), jax.grad(lambda q: jnp.sum(aa(q) * w))(p)
      mapped = jax.pmap(f)(pts)
      for i in range(2):
        single = f(pts[i])
        np.testing.assert_array_equal(np.asarray(mapped[0][i]), np.asarray(single[0]))
        for got, want in zip(mapped[1:], single[1:]):
          np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=1e-6,
                                     atol=1e-6 * float(jnp.abs(want).max()))
      ids, img, aa, g = (np.asarray(x) for x in mapped)
      assert (ids == 1).sum() > 10 and (ids == 0).sum() > 100
      assert not np.array_equal(ids[0], ids[1]) and np.abs(g).max() > 0
      assert np.abs(aa - img).max() > 0.05          # silhouettes blended
      print("ok", jax.device_count())
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "ok 2" in out.stdout
