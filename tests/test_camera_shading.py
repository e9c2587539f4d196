"""Camera conventions, projection, normals and SH shading."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from focus_jax.render import camera, shading
from tests.helpers import finite_difference, tiny_model


def _to64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64)
                      if np.asarray(a).dtype == np.float32 else a, tree)


def test_euler_rotation_matches_scipy_intrinsic_xyz():
  angles = np.array([[0.3, -0.7, 1.1], [0.0, 0.0, 0.0], [-2.0, 0.4, 0.2]])
  ours = np.asarray(camera.euler_rotation(angles))
  ref = Rotation.from_euler("XYZ", angles).as_matrix()
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_zero_pose_looks_at_the_face_upright():
  intr = camera.Intrinsics.reference(224)
  assert np.isclose(intr.focal, 9.06 * 112) and (intr.cx, intr.cy) == (112.0, 112.0)
  pts = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 100.0]])
  uv, depth = camera.model_to_image(pts, np.zeros(3), np.zeros(3), intr)
  uv, depth = np.asarray(uv), np.asarray(depth)
  # Origin on the optical axis, 1 m away; the principal point is the centre of the
  # image: the border between pixels 111 and 112, i.e. the reference's 111.5.
  np.testing.assert_allclose(uv[0], [112.0, 112.0])
  np.testing.assert_allclose(depth, [1000, 1000, 1000, 900])
  assert uv[1, 0] > 112 and np.isclose(uv[1, 1], 112)    # +x (viewer's right) -> right
  assert uv[2, 1] < 112 and np.isclose(uv[2, 0], 112)    # +y (up) -> up in the image
  np.testing.assert_allclose(uv[1, 0] - 112, intr.focal * 10 / 1000, rtol=1e-6)


def test_intrinsics_scale_with_image_size():
  small, big = camera.Intrinsics.reference(64), camera.Intrinsics.reference(224)
  pts = np.array([[30.0, -20.0, 50.0]])
  a = np.asarray(camera.model_to_image(pts, np.zeros(3), np.zeros(3), small)[0])
  b = np.asarray(camera.model_to_image(pts, np.zeros(3), np.zeros(3), big)[0])
  np.testing.assert_allclose(a * 224 / 64, b, rtol=1e-5, atol=1e-6)


def test_pose_follows_the_reference_convention():
  intr = camera.Intrinsics.reference()
  # Translation is in camera axes: +x moves the face right, +z moves it away.
  pts = np.zeros((1, 3))
  uv, depth = camera.model_to_image(pts, np.zeros(3), np.array([10.0, 0, 50.0]), intr)
  assert float(uv[0, 0]) > 112 and np.isclose(float(depth[0]), 1050)
  # p = F Rx Ry Rz v + t + (0, 0, 1000), F = diag(1, -1, -1).
  angles, t = np.array([0.1, -0.2, 0.3]), np.array([5.0, -3.0, 20.0])
  v = np.random.default_rng(0).normal(size=(5, 3)) * 50
  rc = np.diag([1.0, -1.0, -1.0]) @ Rotation.from_euler("XYZ", angles).as_matrix()
  expected = v @ rc.T + t + [0, 0, 1000]
  np.testing.assert_allclose(camera.to_camera(v, angles, t), expected, rtol=1e-5, atol=1e-3)
  # The face turns about its own origin: a yawed face stays centred in the image.
  uv = camera.model_to_image(np.zeros((1, 3)), np.array([0.0, 0.7, 0.0]), np.zeros(3), intr)[0]
  np.testing.assert_allclose(uv[0], [112.0, 112.0], atol=1e-4)
  # Ry(b) sends the nose direction +z to (sin b, 0, cos b): positive yaw moves the nose
  # towards +x, i.e. to the right in the image.
  nose = np.array([[0.0, 0.0, 100.0]])
  uv = camera.model_to_image(nose, np.array([0.0, 0.3, 0.0]), np.zeros(3), intr)[0]
  assert float(uv[0, 0]) > 112


def test_projection_gradients_match_finite_differences():
  pts = np.random.default_rng(1).normal(size=(6, 3)) * 40
  intr = camera.Intrinsics.reference(64)

  def f(pose, points):
    uv, depth = camera.model_to_image(points, pose[:3], pose[3:], intr)
    return jnp.sum(jnp.sin(0.1 * uv)) + jnp.sum(1e-3 * depth ** 2)

  pose = np.array([0.1, 0.2, -0.1, 3.0, -2.0, 10.0])
  g_pose, g_pts = jax.grad(f, argnums=(0, 1))(jnp.asarray(pose, jnp.float32),
                                              jnp.asarray(pts, jnp.float32))
  with jax.enable_x64():
    f64 = jax.jit(lambda *a: f(*a))  # fresh function: no float32 cache entries
    fd_pose = finite_difference(lambda p: float(f64(p, pts)), pose, eps=1e-5)
    fd_pts = finite_difference(lambda x: float(f64(pose, x)), pts, eps=1e-4)
  np.testing.assert_allclose(g_pose, fd_pose, rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(g_pts, fd_pts, rtol=2e-3, atol=2e-3)


def _numpy_vertex_normals(verts, tris):
  out = np.zeros_like(verts)
  for a, b, c in tris:  # independent, deliberately naive
    n = np.cross(verts[b] - verts[a], verts[c] - verts[a])
    out[a] += n
    out[b] += n
    out[c] += n
  return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_vertex_normals_match_numpy_and_point_outwards():
  m = tiny_model(num_vertices=64)
  verts = np.asarray(m.mean, np.float64)
  tris = np.asarray(m.triangles)
  ours = np.asarray(shading.vertex_normals(jnp.asarray(verts, jnp.float32), m.triangles))
  np.testing.assert_allclose(ours, _numpy_vertex_normals(verts, tris), atol=1e-5)
  assert (ours[:, 2] > 0).all()  # the test patch bulges towards +z: CCW = outwards
  # Area weighting: a vertex shared by a big and a small triangle leans to the big one.
  v = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 1.0], [0, 1.0, 0]], np.float32)
  t = np.array([[0, 1, 2], [0, 3, 4]])
  n0 = np.asarray(shading.vertex_normals(v, t))[0]
  assert n0[2] > 0.9  # dominated by the 50 mm² triangle in the xy-plane


def test_vertex_normals_batched_and_gradient():
  m = tiny_model(num_vertices=25)
  rng = np.random.default_rng(2)
  verts = np.asarray(m.mean) + rng.normal(size=(3, m.num_vertices, 3))
  batched = shading.vertex_normals(jnp.asarray(verts, jnp.float32), m.triangles)
  for b in range(3):
    np.testing.assert_allclose(batched[b], _numpy_vertex_normals(verts[b], np.asarray(m.triangles)),
                               atol=1e-5)
  w = rng.normal(size=(m.num_vertices, 3))

  def f(v):
    return jnp.sum(shading.vertex_normals(v, m.triangles) * w)
  g = jax.grad(f)(jnp.asarray(verts[0], jnp.float32))
  with jax.enable_x64():
    f64 = jax.jit(lambda *a: f(*a))  # fresh function: no float32 cache entries
    fd = finite_difference(lambda v: float(f64(v)), verts[0], eps=1e-5)
  np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-4)


def test_sh_basis_is_orthonormal_on_the_sphere():
  # Gauss-Legendre in cos(theta) x uniform phi integrates these polynomials exactly.
  x, w = np.polynomial.legendre.leggauss(16)
  phi = np.linspace(0, 2 * np.pi, 32, endpoint=False)
  ct, ph = np.meshgrid(x, phi, indexing="ij")
  st = np.sqrt(1 - ct ** 2)
  dirs = np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1)
  weights = (w[:, None] * np.full_like(ph, 2 * np.pi / phi.size))
  with jax.enable_x64():
    y = np.asarray(shading.sh_basis(jnp.asarray(dirs)))
  gram = np.einsum("ijk,ijl,ij->kl", y, y, weights)
  np.testing.assert_allclose(gram, np.eye(9), atol=1e-10)


def test_default_light_and_layout():
  light = shading.default_light((2,))
  assert light.shape == (2, 9, 3)
  normals = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 3)))
  normals = normals / jnp.linalg.norm(normals, axis=-1, keepdims=True)
  irr = shading.irradiance(normals, light)
  np.testing.assert_allclose(irr, 0.7 * 2 * np.pi / (2 * np.sqrt(np.pi)), rtol=1e-5, atol=1e-6)
  vec = jnp.arange(27.0)
  lv = shading.light_from_vector(vec)
  assert lv.shape == (9, 3) and float(lv[0, 1]) == 9.0 and float(lv[8, 2]) == 26.0


def test_shading_gradients_and_transforms():
  rng = np.random.default_rng(4)
  albedo = rng.uniform(0.2, 0.8, size=(7, 3))
  normals = rng.normal(size=(7, 3))
  normals /= np.linalg.norm(normals, axis=1, keepdims=True)
  light = rng.normal(size=(9, 3))

  def f(light, normals):
    return jnp.sum(shading.shade(albedo, normals, light) ** 2)
  g_l, g_n = jax.grad(f, argnums=(0, 1))(jnp.asarray(light, jnp.float32),
                                         jnp.asarray(normals, jnp.float32))
  with jax.enable_x64():
    f64 = jax.jit(lambda *a: f(*a))  # fresh function: no float32 cache entries
    fd_l = finite_difference(lambda x: float(f64(x, normals)), light, eps=1e-6)
    fd_n = finite_difference(lambda x: float(f64(light, x)), normals, eps=1e-6)
  np.testing.assert_allclose(g_l, fd_l, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(g_n, fd_n, rtol=1e-3, atol=1e-4)
  # jit / vmap / pmap give the same colours. (float32 inputs: jax's enable_x64 context
  # leaves float64 executables cached that float64 numpy inputs would hit.)
  albedo, normals, light = (np.float32(a) for a in (albedo, normals, light))
  shaded = shading.shade(albedo, normals, light)
  np.testing.assert_allclose(jax.jit(shading.shade)(albedo, normals, light), shaded, rtol=1e-5, atol=1e-6)
  stacked = [np.stack([a, a]) for a in (albedo, normals, light)]
  np.testing.assert_allclose(jax.vmap(shading.shade)(*stacked)[1], shaded, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.pmap(shading.shade)(*[s[:1] for s in stacked])[0], shaded,
                             rtol=1e-5, atol=1e-6)


def test_pose_and_shade_is_the_vertex_stage_and_projection_guards_the_near_plane():
  from focus_jax.render import render   # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(4)
  model = tiny_model()
  verts = jnp.asarray(model.mean)[None] + jnp.asarray(rng.normal(0, 2, (2,) + model.mean.shape),
                                                      jnp.float32)
  albedo = jnp.asarray(rng.random((2,) + model.mean.shape), jnp.float32)
  angles = jnp.array([[0.2, -0.3, 0.1], [0.0, 0.5, 0.0]])
  trans = jnp.array([[3.0, -2.0, 10.0], [0.0, 0.0, -20.0]])
  light = shading.default_light((2,)) * 0.9
  normals = shading.vertex_normals(verts, model.triangles, native=False)
  got = render.pose_and_shade(verts, normals, albedo, angles, trans, light)
  want = render.vertex_stage(verts, albedo, angles, trans, light, model.triangles, native=False)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  intr = camera.Intrinsics.reference(64)
  pts = jnp.array([[10.0, -5.0, 400.0], [3.0, 2.0, 0.0], [1.0, 1.0, -50.0]])
  proj = np.asarray(render.project_vertices(pts, intr))
  np.testing.assert_array_equal(proj[0], np.asarray(camera.project(pts[:1], intr))[0])
  # At or behind the camera plane: as if at depth 1 mm (finite, gradients too).
  np.testing.assert_allclose(proj[1:], np.asarray(camera.project(
      pts[1:].at[:, 2].set(1.0), intr)), rtol=1e-6)
  grad = jax.grad(lambda p: render.project_vertices(p, intr).sum())(pts)
  assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad[1:, 2]).max()) == 0.0
