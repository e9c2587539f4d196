r"""What the stage-1 objective can recover in 3D, with no encoder in the way (issue 22).

For each loss-weight setting, the stage-1 objective
(:func:`focus_jax.train.steps.pretrain_objective`: robust photometric + landmarks +
coefficient regularisation, the weights of ``TrainConfig``) is minimised *per image*
over free encoder outputs (``out = encoder.postprocess(raw)``, every coefficient, pose
and light; Adam from the mean face, ``raw = 0``, pose and light first) on aligned synthetic crops — the
encoder's own inputs. The per-image optimum is the best any encoder trained on that
objective could predict for that image (an encoder amortises it, and is worse by its
amortisation gap). Scored like ``benchmarks/train.py``: per image the median vertex
error (mm) after similarity alignment to the true mesh, its median over images, the
ratio to the mean face's, the paired difference to the mean face, and held-out R² of
the leading shape and expression coefficients.

The faces are split in two halves by index: the setting with the lowest median ratio
on the *tune* half is the one reported on the *report* half (both halves' numbers
are printed for every setting).

Usage (writes benchmarks/results/objective_ceiling.json keyed by ``--label`` and
renders every stored label into benchmarks/results/objective_ceiling.md)::

    python benchmarks/objective_ceiling.py --label "clean 128²" [--size 128 --faces 96
        --settings 0.5:5e-4:3,0.5:5e-4:1 --steps 600 --occluded]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from focus_jax import morphable  # noqa: E402
from focus_jax.data import synthetic  # noqa: E402
from focus_jax.eval import mesh_metrics  # noqa: E402
from focus_jax.morphable import model as model_lib  # noqa: E402
from focus_jax.train import config as config_lib  # noqa: E402
from focus_jax.train import data as data_lib  # noqa: E402
from focus_jax.train import state as state_lib  # noqa: E402
from focus_jax.train import steps as steps_lib  # noqa: E402
from identity_probe import r2_scores, save_labelled  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results")
Setting = Tuple[float, float, float]   # (w_photo, w_landmark, w_reg)


def parse_settings(text: str) -> List[Setting]:
  """``'0.5:5e-4:3,0.5:0:1'`` -> [(w_photo, w_landmark, w_reg), ...] (finite, ≥ 0)."""
  out = []
  for item in text.split(","):
    parts = item.strip().split(":")
    if len(parts) != 3:
      raise ValueError(f"--settings: {item!r} is not w_photo:w_landmark:w_reg")
    try:
      vals = tuple(float(p) for p in parts)
    except ValueError:
      raise ValueError(f"--settings: {item!r} holds a non-number") from None
    if not all(np.isfinite(v) and v >= 0 for v in vals):
      raise ValueError(f"--settings: {item!r} needs finite weights >= 0")
    out.append(vals)
  if not out:
    raise ValueError("--settings: no setting given")
  return out


def vertex_errors(pred_vertices, true_vertices) -> np.ndarray:
  """Per face, the median vertex distance (mm) after similarity alignment:
  [N, V, 3] × [N, V, 3] -> [N] (the metric of ``stages.evaluate``)."""
  return np.asarray([mesh_metrics.aligned_median_error(v, g)
                     for v, g in zip(np.asarray(pred_vertices), np.asarray(true_vertices))])


def masked_adam(loss, raw, mask, steps: int, lr: float):
  """``steps`` Adam steps on ``loss(raw)`` that move only where ``mask`` [D] is 1
  (traceable: call it inside ``jax.jit``); returns the final ``raw``."""
  opt = optax.adam(lr)

  def body(carry, _):
    raw, st = carry
    upd, st = opt.update(jax.grad(loss)(raw) * mask, st)
    return (optax.apply_updates(raw, upd), st), None

  (raw, _), _ = jax.lax.scan(body, (raw, opt.init(raw)), None, length=steps)
  return raw


def make_optimizer_fn(config, nets, steps: int, lr: float, pose_steps: int = 200):
  """jitted ``(raw [b, D], images, landmarks) -> raw``: ``pose_steps`` Adam steps on
  pose and light only (the coefficients held at their start), then ``steps`` on every
  output, minimising ``pretrain_objective`` (a batch mean; each face's terms depend on
  its own row only, so these are b independent per-image minimisations, up to Adam's
  per-coordinate scale). The pose phase matters: from the mean face's default pose, a
  joint start lets shape absorb the misplacement and stalls in a worse minimum."""
  model = nets.model
  sizes = nets.encoder.split_sizes()
  first_pose = sizes["shape"] + sizes["expression"] + sizes["albedo"]
  pose_light = jnp.asarray(np.arange(nets.encoder.num_outputs) >= first_pose, jnp.float32)

  @jax.jit
  def run(raw, images, landmarks):
    def loss(raw):
      out = nets.encoder.postprocess(raw)
      total, _ = steps_lib.pretrain_objective(config, nets, model, out, images, landmarks,
                                              axis_name=None)
      return total
    if pose_steps:
      raw = masked_adam(loss, raw, pose_light, pose_steps, lr)
    return masked_adam(loss, raw, jnp.ones_like(pose_light), steps, lr)

  return run


def load_faces(config, data_dir: str, n: int):
  """Aligned crops of the first ``n`` test faces: images [n, S, S, 3], landmarks
  [n, 68, 2], true vertices [n, V, 3], true shape [n, Ks], expression [n, Ke]."""
  src = data_lib.AlignedSource(data_lib.open_data(data_dir, "test"), config.image_size)
  n = min(n, len(src))
  with np.load(os.path.join(data_dir, "params.npz")) as z:
    row = {str(nm): i for i, nm in enumerate(z["names"])}
    rows = [row[src.ds[i].name] for i in range(n)]
    truth = {k: z[k][rows] for k in ("vertices", "shape", "expression")}
  exs = [src.load(i) for i in range(n)]
  return (np.stack([e["image"] for e in exs]).astype(np.float32),
          np.stack([e["landmarks"] for e in exs]).astype(np.float32),
          truth["vertices"], truth["shape"], truth["expression"])


def run(args, log=print) -> dict:
  config = config_lib.tiny(batch_size=args.batch).replace(
      image_size=args.size, num_shape=args.components[0],
      num_expression=args.components[1], num_albedo=args.components[2])
  nets = state_lib.make_networks(config, axis_name=None)
  model = nets.model
  with tempfile.TemporaryDirectory() as tmp:
    data = args.data or os.path.join(tmp, "faces")
    if not os.path.exists(os.path.join(data, "params.npz")):
      gen = synthetic.SyntheticFaces(
          morphable.builtin(resolution=config.model_resolution),
          synthetic.SyntheticConfig(size=args.size,
                                    occlusion_probability=1.0 if args.occluded else 0.0),
          seed=args.seed, batch_size=16)
      synthetic.write_dataset(data, gen, args.faces, fractions=(0.0, 0.0, 1.0),
                              progress=False, save_maps=False)
    images, lms, true_v, true_s, true_e = load_faces(config, data, args.faces)
  n = len(images)
  if n < 4:
    raise SystemExit(f"objective_ceiling: need at least 4 faces, got {n}")
  halves = {"tune": np.arange(n) < n // 2, "report": np.arange(n) >= n // 2}
  zero = nets.encoder.postprocess(jnp.zeros((1, nets.encoder.num_outputs)))
  mean_v = np.asarray(model_lib.vertices(model, zero.shape, zero.expression))[0]
  mean_err = vertex_errors(np.broadcast_to(mean_v, true_v.shape), true_v)
  ks = min(5, model.num_shape, true_s.shape[1])
  ke = min(3, model.num_expression, true_e.shape[1])
  out = dict(label=args.label, size=args.size, faces=n, seed=args.seed,
             occluded=bool(args.occluded), components=list(args.components),
             steps=args.steps, pose_steps=args.pose_steps, lr=args.lr, model=model.name,
             mean_face={h: float(np.median(mean_err[m])) for h, m in halves.items()},
             settings=[])
  log(f"{n} faces; mean face median 3D tune {out['mean_face']['tune']:.3f} / report "
      f"{out['mean_face']['report']:.3f} mm")
  for w_photo, w_lm, w_reg in args.settings:
    t0 = time.perf_counter()
    c = config.replace(w_photo=w_photo, w_landmark=w_lm, w_reg=w_reg)
    fn = make_optimizer_fn(c, nets, args.steps, args.lr, args.pose_steps)
    raws = []
    for lo in range(0, n, args.batch):
      hi = min(n, lo + args.batch)
      pad = args.batch - (hi - lo)
      img = np.concatenate([images[lo:hi], np.repeat(images[hi - 1:hi], pad, 0)])
      lm = np.concatenate([lms[lo:hi], np.repeat(lms[hi - 1:hi], pad, 0)])
      raw0 = jnp.zeros((args.batch, nets.encoder.num_outputs))
      raws.append(np.asarray(fn(raw0, jnp.asarray(img), jnp.asarray(lm)))[:hi - lo])
    raw = jnp.asarray(np.concatenate(raws))
    if not np.isfinite(np.asarray(raw)).all():
      raise SystemExit(f"objective_ceiling: setting {w_photo}:{w_lm}:{w_reg} diverged "
                       "(non-finite outputs); lower --lr")
    pred = nets.encoder.postprocess(raw)
    verts = np.asarray(model_lib.vertices(model, pred.shape, pred.expression))
    err = vertex_errors(verts, true_v)
    row = dict(w_photo=w_photo, w_landmark=w_lm, w_reg=w_reg,
               seconds=round(time.perf_counter() - t0, 1))
    for h, m in halves.items():
      d = err[m] - mean_err[m]
      row[h] = dict(
          median_3d_mm=float(np.median(err[m])),
          ratio=float(np.median(err[m]) / np.median(mean_err[m])),
          paired_mm=float(d.mean()), paired_se=float(d.std(ddof=1) / np.sqrt(m.sum())),
          shape_r2=r2_scores(np.asarray(pred.shape)[m, :ks], true_s[m, :ks]).round(3).tolist(),
          expression_r2=r2_scores(np.asarray(pred.expression)[m, :ke],
                                  true_e[m, :ke]).round(3).tolist())
    out["settings"].append(row)
    log(f"{w_photo}:{w_lm}:{w_reg}: tune ratio {row['tune']['ratio']:.3f}, report ratio "
        f"{row['report']['ratio']:.3f} (shape R² {row['report']['shape_r2']}) "
        f"[{row['seconds']:.0f} s]")
  best = min(range(len(out["settings"])), key=lambda i: out["settings"][i]["tune"]["ratio"])
  out["chosen"] = best
  out["when"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  return out


def _fmt(v) -> str:
  return f"{v:g}"


def render_markdown(entries: Dict[str, dict]) -> str:
  """The results page for every stored run."""
  lines = ["# What the stage-1 objective can recover (benchmarks/objective_ceiling.py)", "",
           __doc__.split("Usage")[0].split("\n\n", 1)[1].strip(), ""]
  for label, e in entries.items():
    lines += [f"## {label}", "", f"`{e['command']}` — {e['when']}, {e['machine']}.", "",
              f"{e['faces']} {'occluded' if e['occluded'] else 'unoccluded'} synthetic faces "
              f"(seed {e['seed']}), {e['size']}² aligned crops, model {e['model']} with "
              f"{'/'.join(map(str, e['components']))} shape/expression/albedo components; "
              f"{e.get('pose_steps', 0)} Adam steps on pose and light, then {e['steps']} on everything, at lr {e['lr']}, per image. Mean face: median 3D "
              f"{e['mean_face']['tune']:.2f} mm (tune half), {e['mean_face']['report']:.2f} "
              "mm (report half).", "",
              "| w_photo | w_landmark | w_reg | tune: 3D / mean face | report: median 3D (mm) "
              "| report: / mean face | report: Δ vs mean face (mm) | report: shape R² c1–c5 "
              "| report: expression R² e1–e3 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, s in enumerate(e["settings"]):
      r = s["report"]
      mark = " **(chosen on tune)**" if i == e["chosen"] else ""
      lines.append(
          f"| {_fmt(s['w_photo'])} | {_fmt(s['w_landmark'])} | {_fmt(s['w_reg'])}{mark} | "
          f"{s['tune']['ratio']:.3f} | {r['median_3d_mm']:.2f} | {r['ratio']:.3f} | "
          f"{r['paired_mm']:+.2f} ± {r['paired_se']:.2f} | "
          + ", ".join(f"{v:.2f}" for v in r["shape_r2"]) + " | "
          + ", ".join(f"{v:.2f}" for v in r["expression_r2"]) + " |")
    if e.get("note"):
      lines += ["", e["note"]]
    lines.append("")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--label", default="unoccluded 128²")
  ap.add_argument("--size", type=int, default=128, help="crop side in px")
  ap.add_argument("--faces", type=int, default=96, help="faces (halves: tune / report)")
  ap.add_argument("--seed", type=int, default=2,
                  help="synthetic seed (0 and 1 are benchmarks/train.py's training and "
                       "clean test faces)")
  ap.add_argument("--occluded", action="store_true", help="faces with occluders")
  ap.add_argument("--components", default="20,10,20",
                  help="shape,expression,albedo components of the fitted model (the tiny "
                       "config's 20,10,20; the faces use the built-in model's 80/64/80)")
  ap.add_argument("--settings", default="0.5:5e-4:3,0.5:5e-4:1,0.5:5e-4:0.3,0.5:5e-4:0.1,0.5:0:0.3,0.5:2e-3:0.3",
                  help="comma-separated w_photo:w_landmark:w_reg")
  ap.add_argument("--steps", type=int, default=600, help="Adam steps per image")
  ap.add_argument("--pose_steps", type=int, default=200,
                  help="Adam steps on pose and light alone before the joint steps")
  ap.add_argument("--lr", type=float, default=0.02, help="Adam learning rate on raw outputs")
  ap.add_argument("--batch", type=int, default=16, help="faces optimised together")
  ap.add_argument("--data", default="",
                  help="existing synthetic dataset folder (its test split); default: "
                       "generate --faces faces in a temporary folder")
  ap.add_argument("--note", default="", help="text added under this label's table")
  ap.add_argument("--json", default=os.path.join(RESULTS, "objective_ceiling.json"))
  ap.add_argument("--out", default=os.path.join(RESULTS, "objective_ceiling.md"))
  args = ap.parse_args(argv)
  try:
    args.settings = parse_settings(args.settings)
    args.components = [int(c) for c in args.components.split(",")]
  except ValueError as e:
    raise SystemExit(f"objective_ceiling: {e}") from e
  if len(args.components) != 3 or min(args.components) < 1:
    raise SystemExit("objective_ceiling: --components needs three positive counts")
  if args.size < 16 or args.faces < 4 or args.steps < 1 or args.batch < 1:
    raise SystemExit("objective_ceiling: need --size >= 16, --faces >= 4, --steps >= 1, "
                     "--batch >= 1")
  result = run(args)
  save_labelled(result, args, "objective_ceiling.py", render_markdown, argv)
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
