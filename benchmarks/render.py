"""Renderer benchmark: forward+backward time of a photometric loss, and peak memory.

Run by hand (not part of the tests)::

  python benchmarks/render.py                       # all configurations
  python benchmarks/render.py --meshes 27k --batches 12 --modes hard

Meshes: the Surrey Face Model (../shared/models/sfm/sfm_shape_3448.bin, 6736
triangles) and its 1x and 2x midpoint subdivisions (26944 and 107776 triangles),
bases subdivided linearly. Without the SFM file a generated grid face of the same
sizes is used (stated in the output). Each configuration runs in a fresh
subprocess so that its peak resident memory (ru_maxrss) is its own; the timing is
the median of ``--repeats`` jitted calls after ``--warmup`` untimed ones (the first
compiles; the next let the heap settle, see focus_jax.host_memory), with
``block_until_ready``. Results go to benchmarks/results/render.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFM = os.path.join(ROOT, "..", "shared", "models", "sfm", "sfm_shape_3448.bin")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "render.md")
MESHES = {"6.7k": 0, "27k": 1, "108k": 2}


def subdivide(mean, bases, triangles):
  """One midpoint subdivision: each triangle -> 4; new vertices average their edge's
  endpoints in the mean and in every basis ([K, V, 3] arrays)."""
  edges = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]],
                                  triangles[:, [2, 0]]]), axis=1)
  unique, inverse = np.unique(edges, axis=0, return_inverse=True)
  inverse = inverse.reshape(3, -1)
  num_v = mean.shape[0]
  mid = num_v + inverse                                  # [3, F]: ab, bc, ca
  a, b, c = triangles.T
  ab, bc, ca = mid
  new_tri = np.concatenate([np.stack([a, ab, ca], 1), np.stack([b, bc, ab], 1),
                            np.stack([c, ca, bc], 1), np.stack([ab, bc, ca], 1)])
  avg = lambda x: np.concatenate([x, 0.5 * (x[..., unique[:, 0], :] + x[..., unique[:, 1], :])],
                                 axis=-2)
  return avg(mean), [avg(bb) for bb in bases], new_tri.astype(np.int32)


def build_model(level: int):
  from focus_jax.morphable import model as model_lib  # pylint: disable=import-outside-toplevel
  if os.path.exists(SFM):
    from focus_jax.morphable import eos_bin  # pylint: disable=import-outside-toplevel
    m = eos_bin.load_eos_model(SFM)
    source = "SFM sfm_shape_3448.bin"
  else:
    raise SystemExit(f"{SFM} not found: this benchmark needs the SFM model from ../shared")
  mean = np.asarray(m.mean)
  bases = [np.asarray(m.shape_basis), np.asarray(m.expression_basis),
           np.asarray(m.albedo_basis)]
  albedo_mean = np.asarray(m.albedo_mean)
  tri = np.asarray(m.triangles)
  for _ in range(level):
    (mean_alb, bases_alb, _) = subdivide(albedo_mean, [], tri)
    mean, bases, tri = subdivide(mean, bases, tri)
    albedo_mean = mean_alb
  if level:
    source += f" + {level}x midpoint subdivision"
  model = model_lib.make_model(mean, bases[0], bases[1], albedo_mean, bases[2], tri,
                               name=source)
  return model, source


def face_params(model, batch: int) -> dict:
  """The benchmark's render(...) coefficients for ``batch`` faces (fixed seed)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from focus_jax.render import shading  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  return dict(
      shape=jnp.asarray(rng.normal(size=(batch, model.num_shape)) * 0.5, jnp.float32),
      expression=jnp.zeros((batch, model.num_expression), jnp.float32),
      albedo_coeffs=jnp.zeros((batch, model.num_albedo), jnp.float32),
      angles=jnp.asarray(rng.normal(size=(batch, 3)) * 0.01, jnp.float32),
      translation=jnp.asarray(rng.normal(size=(batch, 3)) * 5.0, jnp.float32),
      # A non-ambient light, so that the colours vary over the mesh and the
      # geometry gets meaningful gradients (the SFM shape model has a constant
      # albedo); the cost does not depend on it.
      light=shading.default_light((batch,)) + jnp.asarray(
          rng.normal(size=(batch, 9, 3)) * 0.3, jnp.float32))


def device_peak_mib():
  """Peak accelerator memory of this process in MiB (None where the backend has no
  allocator statistics, e.g. CPU)."""
  import jax  # pylint: disable=import-outside-toplevel
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def run_one(mesh: str, batch: int, mode: str, repeats: int, before_timing=None,
            warmup: int = 1):
  """Times one configuration after ``warmup`` untimed calls; ``before_timing()``
  (if given) runs after them, e.g. to wait for a turn on a shared accelerator
  (benchmarks/gpu.py)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from focus_jax.render import camera, cpu_kernels, render  # pylint: disable=import-outside-toplevel
  model, source = build_model(MESHES[mesh])
  intr = camera.Intrinsics.reference(224)
  params = face_params(model, batch)
  target = jnp.full((batch, 224, 224, 3), 0.5, jnp.float32)

  def loss(p):
    out = render.render(model, intrinsics=intr, mode=mode, buffers=False, **p)
    return render.photometric_loss(out.image, target, out.mask)

  fn = jax.jit(jax.value_and_grad(loss))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(params))
  compile_s = time.perf_counter() - t0
  for _ in range(warmup - 1):
    jax.block_until_ready(fn(params))
  if before_timing is not None:
    before_timing()
  times, cpu = [], []
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(params))
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / repeats
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # MiB (Linux: KiB)
  return dict(mesh=mesh, triangles=model.num_triangles, vertices=model.num_vertices,
              source=source, batch=batch, mode=mode, ms=1000 * float(np.median(times)),
              ms_min=1000 * float(np.min(times)), cpu_ms=1000 * float(np.median(cpu)),
              compile_s=compile_s, peak_mib=peak, faults=faults, warmup=warmup,
              device_peak_mib=device_peak_mib(),
              kernels="C++" if cpu_kernels.use_for_default_backend() else "JAX",
              jax=jax.__version__, device=str(jax.devices()[0]))


def breakdown(mesh: str, batch: int, repeats: int):
  """CPU time of each stage of the hard-mode step, forward + backward, each jitted
  alone on the same inputs (the full step is not their sum: XLA fuses across the
  stages of the composed function, and the stages' inputs are fixed here). Each
  stage's loss weights its outputs with fixed random arrays passed as arguments,
  so that XLA cannot fold its backward pass into constants (a plain sum would
  let it, e.g. for the linear basis products)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from focus_jax.morphable import model as model_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.render import camera, rasterize, render  # pylint: disable=import-outside-toplevel
  model, _ = build_model(MESHES[mesh])
  intr = camera.Intrinsics.reference(224)
  p = face_params(model, batch)
  tri = model.triangles
  target = jnp.full((batch, 224, 224, 3), 0.5, jnp.float32)
  rng = np.random.default_rng(1)
  weight = lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def basis(q):
    return (model_lib.vertices(model, q["shape"], q["expression"]),
            model_lib.albedo(model, q["albedo_coeffs"]))

  verts, albedo = jax.jit(basis)(p)
  stage_args = (verts, albedo, p["angles"], p["translation"], p["light"])
  cam, _, colors = jax.jit(lambda a: render.vertex_stage(*a, tri))(stage_args)
  frags = jax.jit(lambda c: rasterize.rasterize(c, tri, intr, cull_backfaces=True))(cam)
  image = jax.jit(lambda c, a: rasterize.interpolate(a, c, tri, frags, intr))(cam, colors)
  rgb_mask = (image, frags.mask[..., None].astype(jnp.float32))
  stages = {
      "basis (vertices + albedo)": (basis, p),
      "vertex stage (pose, normals, shading)": (
          lambda a: render.vertex_stage(*a, tri), stage_args),
      "rasterize (no gradient)": (lambda c: (rasterize.rasterize(
          c, tri, intr, cull_backfaces=True).depth * 0.0, c * 0.0), cam),
      "interpolate": (lambda ca: rasterize.interpolate(ca[1], ca[0], tri, frags, intr),
                      (cam, colors)),
      "antialias": (lambda cr: rasterize.antialias(cr[1], cr[0], tri, frags, intr),
                    (cam, rgb_mask)),
      "full step (render + loss)": (lambda q: render.photometric_loss(
          *(lambda o: (o.image, target, o.mask))(render.render(
              model, intrinsics=intr, mode="hard", buffers=False, **q))), p),
  }
  print(f"{mesh} x {batch}: CPU ms per forward + backward (median of {repeats})")
  for name, (fn, arg) in stages.items():
    weights = jax.tree_util.tree_map(weight, jax.eval_shape(fn, arg))
    loss = lambda a, w, fn=fn: sum(jnp.sum(x * y) for x, y in zip(
        jax.tree_util.tree_leaves(fn(a)), jax.tree_util.tree_leaves(w)))
    step = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready(step(arg, weights))
    cpu = []
    for _ in range(repeats):
      c0 = time.process_time()
      jax.block_until_ready(step(arg, weights))
      cpu.append(time.process_time() - c0)
    print(f"  {name:38s} {1000 * float(np.median(cpu)):8.1f}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--meshes", nargs="+", default=list(MESHES), choices=list(MESHES))
  parser.add_argument("--batches", nargs="+", type=int, default=[1, 12])
  parser.add_argument("--modes", nargs="+", default=["hard", "soft"], choices=["hard", "soft"])
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed calls first (the first compiles); steady-state step times")
  parser.add_argument("--output", default=RESULTS)
  parser.add_argument("--breakdown", metavar="MESH,BATCH",
                      help="print the CPU time of each hard-mode stage (e.g. 27k,12) instead")
  parser.add_argument("--single", help=argparse.SUPPRESS)
  args = parser.parse_args()
  from focus_jax import host_memory  # pylint: disable=import-outside-toplevel
  kept = host_memory.keep_freed_memory()   # as the focus-jax entry points do
  if args.breakdown:
    mesh, batch = args.breakdown.split(",")
    breakdown(mesh, int(batch), args.repeats)
    return
  if args.single:
    mesh, batch, mode = args.single.split(",")
    print(json.dumps(dict(run_one(mesh, int(batch), mode, args.repeats, warmup=args.warmup),
                          kept_freed_memory=kept)))
    return
  rows = []
  load_start = os.getloadavg()
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for mesh in args.meshes:
    for batch in args.batches:
      for mode in args.modes:
        cmd = [sys.executable, __file__, "--single", f"{mesh},{batch},{mode}",
               "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
          print(f"{mesh} b={batch} {mode}: FAILED\n{out.stderr[-2000:]}", file=sys.stderr)
          continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['triangles']:>7} tri  batch {batch:>2}  {mode:4}  {row['kernels']:3}  "
              f"{row['ms']:9.1f} ms  "
              f"(CPU {row['cpu_ms']:9.1f} ms)  "
              f"peak {row['peak_mib']:7.0f} MiB  faults {row['faults']:7.0f}  "
              f"(compile {row['compile_s']:.0f} s)", flush=True)
  write_report(rows, args.output, load_start)


def write_report(rows, path, load_start):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  load = os.getloadavg()
  lines = [
      "# Renderer benchmark",
      "",
      f"Generated by `benchmarks/render.py` on {datetime.date.today()}: "
      f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
      f"Python {platform.python_version()}, jax {rows[0]['jax'] if rows else '?'} "
      f"({rows[0]['device'] if rows else '?'}). Load average (1, 5, 15 min) at the start: "
      f"{', '.join(f'{x:.1f}' for x in load_start)}, at the end: "
      f"{', '.join(f'{x:.1f}' for x in load)}.",
      "",
      "Forward + backward (`jax.value_and_grad`, jitted, median of repeats after "
      f"{rows[0]['warmup'] if rows else '?'} untimed calls, the first of which compiles) of a "
      "masked photometric loss of `render(...)` at 224 x 224 w.r.t. shape, expression, "
      "albedo, pose and light, with `buffers=False`; hard mode with silhouette "
      "antialiasing, soft mode with the defaults (sigma 0.1 px², gamma 1e-4). Peak = "
      "the process's maximum resident memory (includes Python, jax and XLA). CPU ms = "
      "process CPU time per call (all threads; on a loaded machine the wall time is "
      "inflated, the CPU time much less so). Faults = minor page faults per call. Host "
      "memory: `kept` = focus_jax.host_memory.keep_freed_memory() applied (what the "
      "focus-jax entry points do), `default` = glibc's defaults "
      "(`FOCUS_JAX_KEEP_FREED_MEMORY=0`).",
      "",
      "Targets (issue 3): 27k triangles, batch 12, <= 120 ms; 108k, batch 1, <= 40 ms; soft "
      "<= 3x hard; peak memory at 108k, batch 12 < 4 GiB. Compare on an idle machine (see "
      "the load average above).",
      "",
      "Kernels: `C++` = the CPU kernels of focus_jax/render/cpu_kernels/ (the default on "
      "CPU), `JAX` = the pure-JAX path (`FOCUS_JAX_NATIVE=0`, what runs on GPU/TPU).",
      "",
      "| triangles | mesh | batch | mode | kernels | fwd+bwd ms / batch | ms / image "
      "| CPU ms / batch | faults / call | host memory | peak MiB | compile s |",
      "| ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
  ]
  for r in rows:
    lines.append(f"| {r['triangles']} | {r['source']} | {r['batch']} | {r['mode']} | "
                 f"{r.get('kernels', '?')} | "
                 f"{r['ms']:.1f} | {r['ms'] / r['batch']:.1f} | {r['cpu_ms']:.1f} | "
                 f"{r['faults']:.0f} | {'kept' if r['kept_freed_memory'] else 'default'} | "
                 f"{r['peak_mib']:.0f} | "
                 f"{r['compile_s']:.0f} |")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
