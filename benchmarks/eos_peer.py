"""Peer comparison: landmark-only fitting of the Surrey Face Model, focus-jax vs eos.

Synthetic landmarks (issue 6): random SFM faces (63 shape coefficients ~ N(0, 1),
non-negative expression blendshape weights), random head poses (yaw ±45°, pitch
±20°, roll ±10°), projected to a 224² image with the reference camera (focal
1015 px, 1 m away: nearly orthographic, eos's intended camera), plus Gaussian pixel
noise. Both methods get the same landmarks and the same landmark-to-vertex table
(../shared/models/sfm/ibug_to_sfm.txt: 50 fixed points; the jaw contour is left
out, since eos would need image contour points that a vertex table cannot give):

* eos ``fit_shape_and_pose`` (scaled-orthographic camera, linear shape fit,
  non-negative blendshapes; its overload without contour fitting). Landmarks are
  given in eos's integer-pixel-centre convention (ours minus 0.5).
* focus-jax :func:`focus_jax.fitting.fit_landmarks` (perspective camera,
  Levenberg–Marquardt MAP fit, non-negative expressions).

Each method's regulariser (eos ``lambda_identity`` = ``lambda_expressions``; ours
``landmark_sigma``) is chosen on separate validation faces (another seed), per noise
level. 3D error: every ground-truth vertex against the fitted mesh after similarity
alignment (same topology: per-vertex distance) and NoW-style (landmark similarity
alignment + ICP, scan-to-mesh), in mm pooled over faces.

  python benchmarks/eos_peer.py --num_faces 100
writes benchmarks/results/eos_peer.md (linked from fit.md).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SFM_DIR = os.path.join(HERE, "..", "..", "shared", "models", "sfm")


def make_faces(model, intr, num, seed, noise):
  """Random SFM faces and their noisy projected landmarks (ours: centres at +0.5)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import focus_jax as fj  # pylint: disable=import-outside-toplevel
  from focus_jax.render import camera  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  shape = rng.normal(0.0, 1.0, (num, model.num_shape)).astype(np.float32)
  active = rng.random((num, model.num_expression)) < 0.35
  expr = (active * rng.uniform(0.0, 0.8, (num, model.num_expression))).astype(np.float32)
  deg = np.pi / 180.0
  angles = np.stack([rng.uniform(-20, 20, num) * deg, rng.uniform(-45, 45, num) * deg,
                     rng.uniform(-10, 10, num) * deg], 1).astype(np.float32)
  trans = np.stack([rng.uniform(-10, 10, num), rng.uniform(-10, 10, num),
                    rng.uniform(-100, 100, num)], 1).astype(np.float32)
  verts = np.asarray(fj.morphable.vertices(model, jnp.asarray(shape), jnp.asarray(expr)))
  lm3 = np.asarray(fj.morphable.landmark_positions(model, jnp.asarray(verts)))
  lm2 = np.asarray(camera.model_to_image(jnp.asarray(lm3), jnp.asarray(angles),
                                         jnp.asarray(trans), intr)[0])
  lm2 = lm2 + rng.normal(0.0, noise, lm2.shape)
  lm2[:, ~np.asarray(fj.morphable.landmark_mask(model))] = np.nan
  return verts, lm2.astype(np.float32)


def load_eos(sfm_dir):
  import eos  # pylint: disable=import-outside-toplevel
  shape_model = eos.morphablemodel.load_model(os.path.join(sfm_dir, "sfm_shape_3448.bin"))
  blendshapes = eos.morphablemodel.load_blendshapes(
      os.path.join(sfm_dir, "expression_blendshapes_3448.bin"))
  mm = eos.morphablemodel.MorphableModel(
      shape_model.get_shape_model(), blendshapes, color_model=eos.morphablemodel.PcaModel(),
      vertex_definitions=None, texture_coordinates=shape_model.get_texture_coordinates())
  mapper = eos.core.LandmarkMapper(os.path.join(sfm_dir, "ibug_to_sfm.txt"))
  return eos, mm, mapper


def fit_eos(eos_mod, mm, mapper, landmarks, size, lam, iterations):
  """eos fits: landmarks [N, 68, 2] (ours, +0.5 centres) -> (verts [N, V, 3], s/fit)."""
  out, times = [], []
  for lm in landmarks:
    pts = [eos_mod.core.Landmark(str(i + 1), [float(x) - 0.5, float(y) - 0.5])
           for i, (x, y) in enumerate(lm) if np.isfinite(x)]
    t = time.perf_counter()
    mesh, _, _, _ = eos_mod.fitting.fit_shape_and_pose(
        mm, pts, mapper, size, size, num_iterations=iterations, lambda_identity=lam,
        lambda_expressions=lam)
    times.append(time.perf_counter() - t)
    out.append(np.asarray(mesh.vertices, np.float64))
  return np.stack(out), float(np.median(times))


def fit_ours(model, landmarks, intr, sigma, batch, timing=True):
  """focus-jax fits: -> (verts [N, V, 3], s per fit single, s per fit in batch)."""
  import jax  # pylint: disable=import-outside-toplevel
  from focus_jax import fitting  # pylint: disable=import-outside-toplevel
  cfg = fitting.LandmarkFitConfig(landmark_sigma=sigma, expression_nonnegative=True)
  run = lambda lm: jax.block_until_ready(fitting.fit_landmarks(model, lm, intrinsics=intr,
                                                               config=cfg))
  n = len(landmarks) // batch * batch
  run(landmarks[:batch])
  if timing:
    run(landmarks[0])
  t = time.perf_counter()
  verts = [np.asarray(run(landmarks[i:i + batch]).vertices) for i in range(0, n, batch)]
  t_batch = (time.perf_counter() - t) / max(n, 1)
  verts += [np.asarray(run(landmarks[i]).vertices)[None] for i in range(n, len(landmarks))]
  singles = []
  for i in range(min(10, len(landmarks)) if timing else 0):
    t = time.perf_counter()
    run(landmarks[i])
    singles.append(time.perf_counter() - t)
  return (np.concatenate(verts), float(np.median(singles)) if singles else float("nan"),
          t_batch)


def errors(model, pred, truth, now=True):
  """Pooled per-vertex (after similarity alignment) and NoW-style distances (mm)."""
  from focus_jax.eval import mesh_metrics  # pylint: disable=import-outside-toplevel
  tri = np.asarray(model.triangles)
  lm = np.asarray(model.landmarks)
  lm = lm[lm >= 0]
  per_vertex, scan = [], []
  for p, g in zip(pred, truth):
    t = mesh_metrics.similarity_transform(p, g)
    per_vertex.append(np.linalg.norm(mesh_metrics.apply_transform(p, t) - g, axis=1))
    if now:
      scan.append(mesh_metrics.now_error(p, tri, g, p[lm], g[lm])["distances"])
  stats = lambda d: (float(np.median(d)), float(np.mean(d)), float(np.std(d)))
  per_vertex = np.concatenate(per_vertex)
  return stats(per_vertex), (stats(np.concatenate(scan)) if now else None)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--num_faces", type=int, default=100)
  ap.add_argument("--val_faces", type=int, default=50)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--val_seed", type=int, default=100)
  ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 2.0])
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--eos_iterations", type=int, default=5)
  ap.add_argument("--batch", type=int, default=50)
  ap.add_argument("--sfm_dir", default=SFM_DIR)
  ap.add_argument("--out", default=os.path.join(HERE, "results", "eos_peer.md"))
  args = ap.parse_args()

  from focus_jax.morphable import eos_bin  # pylint: disable=import-outside-toplevel
  from focus_jax.render import camera  # pylint: disable=import-outside-toplevel
  model = eos_bin.load_eos_model(os.path.join(args.sfm_dir, "sfm_shape_3448.bin"))
  eos_mod, mm, mapper = load_eos(args.sfm_dir)
  intr = camera.Intrinsics.reference(args.size)
  lambdas = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
  sigmas = (0.25, 0.5, 1.0, 2.0)
  rows = []
  for noise in args.noise:
    # Regularisers chosen on validation faces (median per-vertex error).
    val_v, val_lm = make_faces(model, intr, args.val_faces, args.val_seed, noise)
    lam = min(lambdas, key=lambda l: errors(
        model, fit_eos(eos_mod, mm, mapper, val_lm, args.size, l, args.eos_iterations)[0],
        val_v, now=False)[0][0])
    sig = min(sigmas, key=lambda s: errors(
        model, fit_ours(model, val_lm, intr, s, args.val_faces, timing=False)[0], val_v,
        now=False)[0][0])
    print(f"noise {noise}: eos lambda {lam}, ours sigma {sig}", flush=True)
    truth, lms = make_faces(model, intr, args.num_faces, args.seed, noise)
    mean_err = errors(model, np.broadcast_to(np.asarray(model.mean), truth.shape), truth)
    ev, t_eos = fit_eos(eos_mod, mm, mapper, lms, args.size, lam, args.eos_iterations)
    ov, t_single, t_batch = fit_ours(model, lms, intr, sig, args.batch)
    e_eos, e_ours = errors(model, ev, truth), errors(model, ov, truth)
    rows.append((noise, f"eos fit_shape_and_pose (λ={lam:g}, {args.eos_iterations} it.)",
                 e_eos, f"{t_eos * 1e3:.1f}"))
    rows.append((noise, f"focus-jax fit_landmarks (σ={sig:g} px)", e_ours,
                 f"{t_single * 1e3:.1f} single / {t_batch * 1e3:.2f} in batches of {args.batch}"))
    rows.append((noise, "mean face (no fit)", mean_err, "–"))
    for r in rows[-3:]:
      print(r, flush=True)
    write_report(args, rows, lambdas, sigmas)
  print("wrote", args.out)


def write_report(args, rows, lambdas, sigmas):
  """Writes the markdown table (after every noise level)."""
  lines = [
      "# Peer comparison: landmark-only SFM fitting, focus-jax vs eos",
      "",
      f"`python benchmarks/eos_peer.py --num_faces {args.num_faces} --seed {args.seed}` — "
      f"{args.num_faces} random Surrey Face Model faces (3448 vertices, 63 shape "
      "coefficients ~ N(0,1), 6 expression blendshapes with non-negative weights), yaw "
      f"±45°, pitch ±20°, roll ±10°, projected to {args.size}² with the reference camera "
      "(focal 1015 px at 1 m: nearly orthographic), Gaussian landmark noise σ per "
      "coordinate (px). Both methods get the same 50 fixed-vertex iBUG landmarks "
      "(ibug_to_sfm.txt; no jaw contour). Regularisers chosen per noise level on "
      f"{args.val_faces} validation faces (seed {args.val_seed}): eos λ ∈ {lambdas}, ours "
      f"σ ∈ {sigmas} px.",
      "",
      "3D error in mm, pooled over all vertices of all faces: *per-vertex* after a "
      "similarity alignment of the whole mesh (same topology); *NoW-style*: landmark "
      "similarity alignment + ICP, then ground-truth vertex to fitted surface.",
      "",
      "| noise (px) | method | per-vertex median | mean | std | NoW median | NoW mean | "
      "NoW std | time per fit (ms) |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for noise, name, (pv, now), t in rows:
    lines.append(f"| {noise:g} | {name} | {pv[0]:.2f} | {pv[1]:.2f} | {pv[2]:.2f} | "
                 f"{now[0]:.2f} | {now[1]:.2f} | {now[2]:.2f} | {t} |")
  lines += ["", "Times: wall clock on the shared 2-core CPU (eos: C++, one fit per call; "
            "focus-jax: jitted, after compilation).", ""]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
