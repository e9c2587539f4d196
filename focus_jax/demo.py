"""``focus-jax demo``: the main job on the built-in default.

For now it renders the morphable model — mean face with landmarks, a sweep of head
poses, random faces — to PNGs. Fitting and training stages extend it as they land.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax import images, morphable
from focus_jax.render import camera, render as render_lib, shading

# Head poses of the sweep: (pitch, yaw) in degrees.
POSES = ((0, -45), (0, -20), (0, 0), (0, 20), (0, 45), (-20, 0), (20, 0))
BACKGROUND = (0.82, 0.84, 0.88)


def studio_light(batch: int, ambient: float = 0.85, directional: float = 0.55,
                 direction=(-0.35, -0.55, -1.0)) -> jnp.ndarray:
  """Ambient light plus a soft key light, [batch, 9, 3].

  Args:
    batch: number of faces.
    ambient: uniform irradiance.
    directional: strength of the key light (irradiance gained on a surface facing it).
    direction: camera-space direction *towards* the light (x right, y down, z
      forward): the default comes from the upper left, in front of the face.
  """
  d = np.asarray(direction, np.float64)
  d = d / np.linalg.norm(d)
  c0 = 0.5 * math.sqrt(1.0 / math.pi)
  c1 = math.sqrt(3.0 / (4.0 * math.pi))
  light = np.zeros((shading.NUM_SH, 3), np.float32)
  light[0] = ambient / c0
  light[1], light[2], light[3] = (directional * d[1] / c1, directional * d[2] / c1,
                                  directional * d[0] / c1)  # basis order y, z, x
  return jnp.broadcast_to(jnp.asarray(light), (batch, shading.NUM_SH, 3))


def _render(model, shape, expression, albedo, angles, size):
  batch = shape.shape[0]
  out = render_lib.render(model, shape, expression, albedo, angles,
                          jnp.zeros((batch, 3)), studio_light(batch),
                          camera.Intrinsics.reference(size),
                          background=jnp.asarray(BACKGROUND), buffers=False)
  return out.image, out.landmarks


def run_demo(out_dir: str, size: int = 224, num_samples: int = 8, seed: int = 0,
             model: morphable.MorphableModel | None = None) -> dict:
  """Writes ``mean_face.png``, ``poses.png``, ``samples.png``, ``overview.png`` to ``out_dir``.

  All faces (mean, pose sweep, random samples) are rendered in one batch, so the
  renderer compiles once.

  Returns:
    A dict with the written paths and the render time per image (seconds, after
    compilation).
  """
  model = morphable.builtin() if model is None else model
  print(f"model: {model}")
  num_poses = len(POSES)
  batch = 1 + num_poses + num_samples
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)

  def coefficients(key, k):  # mean face and poses: zeros; samples: standard normal.
    return jnp.concatenate([jnp.zeros((1 + num_poses, k)),
                            jax.random.normal(key, (num_samples, k))])

  shape = coefficients(keys[0], model.num_shape)
  expression = coefficients(keys[1], model.num_expression)
  albedo = coefficients(keys[2], model.num_albedo)
  sample_angles = jax.random.uniform(keys[3], (num_samples, 3), minval=-0.35,
                                     maxval=0.35) * jnp.array([0.5, 1.0, 0.3])
  pose_angles = [[math.radians(p), math.radians(y), 0.0] for p, y in POSES]
  angles = jnp.concatenate([jnp.zeros((1, 3)), jnp.asarray(pose_angles), sample_angles])

  args = (model, shape, expression, albedo, angles)
  compiled = jax.jit(_render, static_argnums=(5,)).lower(*args, size).compile()
  t0 = time.perf_counter()
  rendered, landmarks = jax.device_get(jax.block_until_ready(compiled(*args)))
  seconds = (time.perf_counter() - t0) / batch

  os.makedirs(out_dir, exist_ok=True)
  valid = np.asarray(morphable.landmark_mask(model))
  paths = {"mean_face": os.path.join(out_dir, "mean_face.png"),
           "poses": os.path.join(out_dir, "poses.png")}
  mean_face = images.draw_points(rendered[0], landmarks[0], valid=valid,
                                 radius=max(size // 160, 0))
  images.save_png(paths["mean_face"], mean_face)
  images.save_png(paths["poses"], images.tile(list(rendered[1:1 + num_poses]), cols=num_poses))
  if num_samples:
    paths["samples"] = os.path.join(out_dir, "samples.png")
    images.save_png(paths["samples"], images.tile(list(rendered[1 + num_poses:]),
                                                  cols=min(num_samples, 4)))
  # One picture for a README: mean face, four poses, random faces.
  overview = [mean_face] + [rendered[1 + i] for i in (0, 1, 3, 4)]
  overview += list(rendered[1 + num_poses:1 + num_poses + 3])
  paths["overview"] = os.path.join(out_dir, "overview.png")
  images.save_png(paths["overview"], images.tile(overview, cols=4))
  for path in paths.values():
    print(f"wrote {path}")
  print(f"render time: {1e3 * seconds:.1f} ms per {size}x{size} image (batch {batch}, after "
        f"compilation, {jax.devices()[0].platform})")
  return {"paths": paths, "seconds_per_image": seconds}
