"""Bit-identity check of the renderer across a code change (not a benchmark).

Renders fixed-seed faces of the built-in model (about 27k triangles, batch 2,
64 and 128 px) through every renderer op, with the C++ CPU kernels and with the
pure-JAX path, and saves the outputs and their gradients to one .npz::

  PYTHONPATH=/path/to/old/checkout python benchmarks/render_identity.py save old.npz
  python benchmarks/render_identity.py save new.npz
  python benchmarks/render_identity.py compare old.npz new.npz

``compare`` exits 1 unless both files hold the same keys and every array is
equal bit for bit (np.array_equal; NaNs would count as different). Runs on the
CPU backend (set before jax is imported).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # pylint: disable=wrong-import-position

RESOLUTION = 127          # builtin(resolution=127): 13.8k vertices, ~27k triangles.
SIZES = (64, 128)
BATCH = 2


def _scene(jnp, morphable, model, seed):
  """Model-space vertices, albedo, pose and light of BATCH random faces."""
  rng = np.random.default_rng(seed)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  shape = f32(rng.normal(size=(BATCH, model.shape_basis.shape[0])))
  expression = f32(rng.normal(size=(BATCH, model.expression_basis.shape[0])))
  albedo_coeffs = f32(rng.normal(size=(BATCH, model.albedo_basis.shape[0])))
  verts = morphable.vertices(model, shape, expression)
  albedo = morphable.albedo(model, albedo_coeffs)
  angles = f32(rng.uniform(-0.4, 0.4, size=(BATCH, 3)))
  translation = f32(rng.uniform(-20.0, 20.0, size=(BATCH, 3)))
  light = jnp.zeros((BATCH, 9, 3), jnp.float32).at[:, 0].set(4.4)
  light = light + f32(rng.normal(scale=0.3, size=(BATCH, 9, 3)))
  return dict(shape=shape, expression=expression, albedo_coeffs=albedo_coeffs, verts=verts,
              albedo=albedo, angles=angles, translation=translation, light=light)


def _vjp(jax, fn, args, seed):
  """Outputs of fn(*args) and the gradients of a random-weighted sum of them."""
  out, vjp = jax.vjp(fn, *args)
  leaves, tree = jax.tree_util.tree_flatten(out)
  rng = np.random.default_rng(seed)
  weights = [np.asarray(rng.normal(size=np.shape(x)), np.asarray(x).dtype)
             if np.issubdtype(np.asarray(x).dtype, np.floating)
             else np.zeros(np.shape(x), jax.dtypes.float0) for x in leaves]
  grads = vjp(jax.tree_util.tree_unflatten(tree, weights))
  return leaves, grads


def _record(results, prefix, leaves, grads=()):
  for i, x in enumerate(leaves):
    results[f"{prefix}/out{i}"] = np.asarray(x)
  for i, g in enumerate(grads):
    results[f"{prefix}/grad{i}"] = np.asarray(g)


def _ops(results, tag, native, scene, model, intr):
  """Every op of focus_jax.render.rasterize / shading / render at one setting."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from focus_jax.render import rasterize as R  # pylint: disable=import-outside-toplevel
  from focus_jax.render import render, shading  # pylint: disable=import-outside-toplevel
  tri = model.triangles
  s = scene
  stage_args = (s["verts"], s["albedo"], s["angles"], s["translation"], s["light"])
  stage = lambda *a: render.vertex_stage(*a, tri, native=native)
  _record(results, f"{tag}/vertex_stage", *_vjp(jax, jax.jit(stage), stage_args, 1))
  normals = lambda v: shading.vertex_normals(v, tri, native=native)
  _record(results, f"{tag}/vertex_normals", *_vjp(jax, jax.jit(normals), (s["verts"],), 2))
  cam, _, colors = render.vertex_stage(*stage_args, tri, native=False)
  frags = R.rasterize(cam, tri, intr, cull_backfaces=True, native=native)
  _record(results, f"{tag}/rasterize", jax.tree_util.tree_leaves(frags))
  depth_only = R.rasterize(cam, tri, intr, near=900.0, native=native, barycentrics=False)
  _record(results, f"{tag}/rasterize_depth", jax.tree_util.tree_leaves(depth_only))
  interp = lambda c, p: R.interpolate(c, p, tri, frags, intr, native=native)
  _record(results, f"{tag}/interpolate", *_vjp(jax, jax.jit(interp), (colors, cam), 3))
  image = R.interpolate(colors, cam, tri, frags, intr, native=False)
  mask = frags.mask.astype(jnp.float32)[..., None]
  aa_pair = lambda im, m, p: R.antialias((im, m), p, tri, frags, intr, native=native)
  _record(results, f"{tag}/antialias_tuple",
          *_vjp(jax, jax.jit(aa_pair), (image, mask, cam), 4))
  aa_one = lambda im, p: R.antialias(im, p, tri, frags, intr, native=native)
  _record(results, f"{tag}/antialias", *_vjp(jax, jax.jit(aa_one), (image, cam), 5))
  bg = jnp.full((BATCH, intr.height, intr.width, 3), 0.25, jnp.float32)
  for cull in (False, True):
    soft = lambda p, c, b, cull=cull: R.soft_rasterize(
        p, tri, c, intr, background=b, sigma=0.3, gamma=1e-3, cull_backfaces=cull,
        native=native)
    _record(results, f"{tag}/soft_cull{int(cull)}",
            *_vjp(jax, jax.jit(soft), (cam, colors, bg), 6 + cull))
  # One image without the batch axis.
  one = lambda p, c: R.antialias(
      R.interpolate(c, p, tri, R.rasterize(p, tri, intr, native=native), intr, native=native),
      p, tri, R.rasterize(p, tri, intr, native=native), intr, native=native)
  _record(results, f"{tag}/unbatched_hard", *_vjp(jax, one, (cam[0], colors[0]), 8))
  one_soft = lambda p, c: R.soft_rasterize(p, tri, c, intr, sigma=0.2, native=native).image
  _record(results, f"{tag}/unbatched_soft", *_vjp(jax, one_soft, (cam[0], colors[0]), 9))


def _render(results, tag, scene, model, intr):
  """render.render (hard and soft, default backend choice) and its gradients."""
  import jax  # pylint: disable=import-outside-toplevel
  from focus_jax.render import render  # pylint: disable=import-outside-toplevel
  s = scene
  coeffs = (s["shape"], s["expression"], s["albedo_coeffs"], s["angles"], s["translation"],
            s["light"])
  for mode in ("hard", "soft"):
    fn = lambda *a, mode=mode: (lambda o: (o.image, o.mask, o.landmarks))(
        render.render(model, *a, intr, mode=mode))
    _record(results, f"{tag}/render_{mode}", *_vjp(jax, jax.jit(fn), coeffs, 10))


def save(path):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from focus_jax import morphable  # pylint: disable=import-outside-toplevel
  from focus_jax.render import camera, cpu_kernels  # pylint: disable=import-outside-toplevel
  assert cpu_kernels.available(), "the CPU kernels must build for this check"
  model = morphable.builtin(resolution=RESOLUTION)
  print(f"mesh: {model.triangles.shape[0]} triangles, {model.mean.shape[0]} vertices")
  scene = _scene(jnp, morphable, model, 0)
  results = {}
  for size in SIZES:
    intr = camera.Intrinsics.reference(size)
    for native in (True, False):
      _ops(results, f"{size}px/native{int(native)}", native, scene, model, intr)
    _render(results, f"{size}px/default", scene, model, intr)
  np.savez(path, **results)
  print(f"saved {len(results)} arrays to {path}")


def compare(path_a, path_b) -> bool:
  a, b = np.load(path_a), np.load(path_b)
  ok = set(a.files) == set(b.files)
  if not ok:
    print("different keys:", sorted(set(a.files) ^ set(b.files)))
  for key in sorted(set(a.files) & set(b.files)):
    x, y = a[key], b[key]
    if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
      ok = False
      diff = (np.abs(x.astype(np.float64) - y.astype(np.float64)).max()
              if x.shape == y.shape else "shape")
      print(f"DIFFERENT {key}: max |diff| {diff}")
  print(f"{len(a.files)} arrays: {'all bit-identical' if ok else 'NOT identical'}")
  return ok


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "save":
    save(sys.argv[2])
  elif len(sys.argv) == 4 and sys.argv[1] == "compare":
    sys.exit(0 if compare(sys.argv[2], sys.argv[3]) else 1)
  else:
    sys.exit(__doc__)
