r"""Benchmark of the FOCUS training pipeline (run by hand; writes benchmarks/results/train.md).

1. Writes a synthetic occluded-face dataset (64², the tiny config's model) with
   ground truth (visible-skin masks, meshes).
2. Runs the tiny pipeline: stage 1 encoder → stage 2 pseudo masks → stage 3 UNet →
   stage 4 EM, and after each stage evaluates on the test split: mask F1 of the
   inlier mask inside the rendered face (stage 1/2: the robust-likelihood inliers
   of the encoder's fit; stage 3/4: the UNet's mask) and the median 3D vertex
   error (mm, after similarity alignment). With ``--prior_faces`` > 0 it also builds
   a misfit prior from that many unoccluded synthetic fits and runs stage 4 again
   with the prior in the EM UNet losses (``TrainConfig.unet_prior``).
   With ``--test_adapt_steps`` > 0, test-time adaptation on the synthetic *test*
   images (unsupervised: images and landmarks, never the ground truth; DESIGN.md
   step 6): the same number of steps from (a) the stage-4 EM networks (stage
   'adapt'), (b) the stage-1 encoder with the stage-3 UNet (stage 'adapt', no EM on
   the training split), (c) the stage-1 encoder alone (its robust loss), each scored
   on the same test images, with per-image 3D differences to stage 1.
   With ``--anchor_l2``, a second stage-1 encoder trained with the plain-L2 photometric
   term (``photo_loss='l2'``: no robust term, MoFA-style) as the lower anchor, and
   every row's paired 3D difference to it. With ``--clean_faces N`` > 0, N held-out
   *unoccluded* faces (another seed) score the stage-1, anchor and EM encoders and the
   mean face (ratio of medians and paired difference to the mean face).
3. Test-time adaptation of the EM networks on the real unlabelled faces of
   ../shared/data/occluded_faces (landmarks detected with dlib, cached) and a
   tile of inputs, fits and masks.
4. Seconds per step of the tiny and paper configurations on this machine.

Usage::

    python benchmarks/train.py [--out /tmp/focus_bench] [--no_paper] [--keep_runs]
        [--test_adapt_steps 120] [--anchor_l2] [--clean_faces 100]
        [--image_size 128] [--encoder_stages 1,1,1,1] [--encoder_width 16] [--w_reg 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from focus_jax import morphable  # noqa: E402
from focus_jax.data import synthetic  # noqa: E402
from focus_jax.train import config as config_lib  # noqa: E402
from focus_jax.train import plot, stages, trainer  # noqa: E402

REAL = os.path.join(os.path.dirname(REPO), "shared", "data", "occluded_faces")


def _stages(text: str) -> tuple:
  """'1,1,1,1' → (1, 1, 1, 1): ResNet blocks per encoder stage."""
  return tuple(int(n) for n in text.split(","))


# TrainConfig fields settable from the command line: name → (parser, help).
CONFIG_OVERRIDES = {
    "image_size": (int, "side of the training crops and synthetic images in px, tiny 64"),
    "encoder_width": (int, "ResNet width of the encoder's first stage, tiny 8"),
    "encoder_stages": (_stages, "comma-separated ResNet blocks per stage, tiny 1,1; e.g. "
                                "1,1,1,1 pools 64 features instead of 16"),
    "w_reg": (float, "weight of the coefficient regularisation of every stage, tiny 3"),
    "w_landmark": (float, "weight of the landmark term, tiny 5e-4"),
    "num_shape": (int, "shape components the encoder regresses, tiny 20 (the faces have 80)"),
    "num_expression": (int, "expression components, tiny 10 (the faces have 64)"),
    "num_albedo": (int, "albedo components, tiny 20 (the faces have 80)"),
}


def step_inputs(cfg, seed: int = 5):
  """(networks, identity net, replicated state, sharded batch of ``cfg.batch_size``
  synthetic faces) for :func:`step_seconds`."""
  from focus_jax.train import parallel, state as state_lib
  nets = state_lib.make_networks(cfg)
  identity = trainer.load_identity(cfg)
  st = parallel.replicate(state_lib.to_host(state_lib.init_state(cfg, nets)))
  gen = synthetic.SyntheticFaces(nets.model, synthetic.SyntheticConfig(size=cfg.image_size),
                                 seed=seed, batch_size=cfg.batch_size)
  samples = gen.generate(range(cfg.batch_size))
  batch = parallel.put_sharded(parallel.shard(dict(
      image=np.stack([s.image for s in samples]).astype(np.float32),
      landmarks=np.stack([s.landmarks for s in samples]).astype(np.float32))))
  return nets, identity, st, batch


def step_seconds(cfg, phase: str, steps: int = 2, inputs=None, before_timing=None) -> dict:
  """Compile time (first call) and seconds/step of one pmapped training step of ``cfg``
  (``phase``: pretrain, unet, em_encoder or em_unet) on :func:`step_inputs` (built
  here unless given); ``before_timing()`` (if given) runs after the first call."""
  from focus_jax.train import parallel, steps as steps_lib
  nets, identity, st, batch = step_inputs(cfg) if inputs is None else inputs
  fn = parallel.pmap_step(steps_lib.make_step(cfg, nets, phase))
  t = time.perf_counter()
  s2, m = fn(st, batch, nets.model, identity)
  jax.block_until_ready(m)
  first = time.perf_counter() - t
  if before_timing is not None:
    before_timing()
  t = time.perf_counter()
  for _ in range(steps):
    s2, m = fn(s2, batch, nets.model, identity)
  jax.block_until_ready(m)
  return dict(first_call_s=first, seconds_per_step=(time.perf_counter() - t) / steps)


def paper_seconds_per_step(steps: int = 2) -> dict:
  """Compile time and seconds/step of the paper config's stage-1 and EM steps."""
  cfg = config_lib.paper(identity="dlib")
  inputs = step_inputs(cfg)
  out = {}
  for phase in ("pretrain", "em_encoder", "em_unet"):
    out[phase] = step_seconds(cfg, phase, steps, inputs=inputs)
    print(phase, out[phase], flush=True)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default="/tmp/focus_bench")
  ap.add_argument("--num", type=int, default=300, help="synthetic faces (10%% test split)")
  ap.add_argument("--pretrain_steps", type=int, default=300)
  ap.add_argument("--unet_steps", type=int, default=100)
  ap.add_argument("--em_steps", type=int, default=240)
  ap.add_argument("--adapt_steps", type=int, default=24,
                  help="test-time adaptation steps on the real unlabelled faces")
  ap.add_argument("--test_adapt_steps", type=int, default=120,
                  help="test-time adaptation steps on the synthetic test split (its images "
                       "and landmarks only; 0: skip those rows)")
  ap.add_argument("--test_adapt_lr", type=float, default=0.0,
                  help="encoder learning rate of the test-time adaptation rows (0: the "
                       "config's, EM encoder lr for the EM rows and the stage-1 lr for the "
                       "robust-loss row)")
  ap.add_argument("--prior_faces", type=int, default=16,
                  help="unoccluded synthetic fits for the misfit prior of a second EM run "
                       "(0: no prior, one EM run)")
  for name, (parse, what) in CONFIG_OVERRIDES.items():
    ap.add_argument("--" + name, type=parse, default=None,
                    help=what + "; unset: the tiny config's")
  ap.add_argument("--batch_size", type=int, default=8, help="global batch of every stage")
  ap.add_argument("--anchor_l2", action="store_true",
                  help="also train a stage-1 encoder with the plain-L2 photometric term "
                       "(photo_loss=l2, no robust term) as the lower anchor")
  ap.add_argument("--clean_faces", type=int, default=0,
                  help="held-out unoccluded synthetic faces (seed 1) scoring the encoders "
                       "against the mean face (0: skip)")
  ap.add_argument("--no_real", action="store_true",
                  help="skip the adaptation on the real unlabelled faces (no tile)")
  ap.add_argument("--no_paper", action="store_true",
                  help="skip the paper-config timing (the report keeps an earlier run's)")
  ap.add_argument("--keep_runs", action="store_true",
                  help="keep OUT/runs: finished stages are resumed (not retrained)")
  ap.add_argument("--report", default=os.path.join(REPO, "benchmarks", "results", "train.md"))
  args = ap.parse_args()
  args.command = "python " + " ".join(sys.argv)
  args.load = [os.getloadavg()]
  args.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.out, "jax_cache"))

  cfg = config_lib.tiny(progress=False, log_every=10, image_every=100, checkpoint_every=100,
                        batch_size=args.batch_size, em_unet_steps=20, em_encoder_steps=40)
  cfg = cfg.replace(**{name: getattr(args, name) for name in CONFIG_OVERRIDES
                       if getattr(args, name) is not None})
  data = os.path.join(args.out, "data")
  t0 = time.perf_counter()
  if not os.path.exists(os.path.join(data, "params.npz")):
    gen = synthetic.SyntheticFaces(morphable.builtin(resolution=cfg.model_resolution),
                                   synthetic.SyntheticConfig(size=cfg.image_size), seed=0,
                                   batch_size=16)
    synthetic.write_dataset(data, gen, args.num, progress=False, save_maps=False)
  print(f"data {time.perf_counter() - t0:.0f} s", flush=True)
  root = os.path.join(args.out, "runs")
  if not args.keep_runs:
    shutil.rmtree(root, ignore_errors=True)
  d = lambda name: os.path.join(root, name)
  rows, timing = _Rows(), {}

  def run(stage, steps, name=None, config=None, **kw):
    name = name or stage
    t = time.perf_counter()
    r = trainer.train((config or cfg).replace(stage=stage, num_steps=steps), d(name), data,
                      **kw)
    timing[name] = dict(total_s=time.perf_counter() - t, steps=steps,
                        seconds_per_step=r.seconds_per_step,
                        first_loss=float(np.nanmean(r.history["loss"][:3])),
                        last_loss=float(np.nanmean(r.history["loss"][-3:])))
    print(name, timing[name], flush=True)
    return r

  run("pretrain", args.pretrain_steps)
  ev = stages.evaluate(cfg, d("pretrain"), data, "test", with_unet=False)
  rows.append(("1: encoder (robust loss), robust-likelihood mask", ev))
  mean_face = mean_face_errors(cfg, data)
  rows.append((MEAN_FACE,
               dict(all_inlier_scores(cfg, d("pretrain"), data),
                    median_3d_mm=float(np.median(mean_face)), per_image_3d_mm=mean_face)))
  if args.anchor_l2:
    cfg_l2 = cfg.replace(photo_loss="l2")
    run("pretrain", args.pretrain_steps, name="pretrain_l2", config=cfg_l2)
    rows.append((ANCHOR, stages.evaluate(cfg_l2, d("pretrain_l2"), data, "test",
                                         with_unet=False)))
  t = time.perf_counter()
  stages.make_pseudo_masks(cfg.replace(stage="pretrain"), d("pseudo"), data, d("pretrain"))
  timing["pseudo"] = dict(total_s=time.perf_counter() - t)
  # The pseudo masks are the stage-1 robust-likelihood inliers on the *train* split.
  rows.append(("2: pseudo masks (train split, what stage 3 learns from)",
               stages.evaluate(cfg, d("pretrain"), data, "train", with_unet=False)))
  run("unet", args.unet_steps, init_from=d("pretrain"), pseudo_dir=d("pseudo"))
  rows.append(("3: + UNet on pseudo masks", stages.evaluate(cfg, d("unet"), data, "test")))
  run("em", args.em_steps, init_from=d("unet"))
  rows.append(("4: joint EM", stages.evaluate(cfg, d("em"), data, "test")))
  rows.append(("4: joint EM, robust-likelihood mask of its encoder",
               stages.evaluate(cfg, d("em"), data, "test", with_unet=False)))
  if args.prior_faces > 0:
    prior_path = os.path.join(d("prior"), "misfit_prior.npz")
    t = time.perf_counter()
    summary = (stages.build_prior(cfg, prior_path, num_faces=args.prior_faces)
               if not os.path.exists(prior_path) else {})
    timing["prior"] = dict(total_s=time.perf_counter() - t, summary=summary)
    cfg_prior = cfg.replace(unet_prior=prior_path)
    run("em", args.em_steps, name="em_prior", config=cfg_prior, init_from=d("unet"))
    rows.append(("4: joint EM with the misfit prior in the UNet losses",
                 stages.evaluate(cfg_prior, d("em_prior"), data, "test")))
  if args.test_adapt_steps > 0:
    rows += test_time_adaptation(args, cfg, data, run, d)
  clean = clean_rows(args, cfg, d) if args.clean_faces > 0 else []
  args.load.append(os.getloadavg())

  real = None
  if os.path.isdir(REAL) and not args.no_real:
    t = time.perf_counter()
    r = trainer.train(cfg.replace(stage="adapt", num_steps=args.adapt_steps), d("adapt"), REAL,
                      init_from=d("em"))
    exp = stages.export_predictions(cfg, d("adapt"), REAL, os.path.join(d("adapt"), "export"),
                                    max_tile=8)
    os.makedirs(os.path.dirname(args.report), exist_ok=True)
    tile_dst = os.path.join(os.path.dirname(args.report), "train_real_tile.png")
    shutil.copy(exp["tile"], tile_dst)
    real = dict(examples=exp["examples"], seconds=time.perf_counter() - t, tile=tile_dst,
                first_loss=float(np.nanmean(r.history["loss"][:3])),
                last_loss=float(np.nanmean(r.history["loss"][-3:])))
    print("real", real, flush=True)
  curves = os.path.join(os.path.dirname(args.report), "train_curves.png")
  plot.plot_runs([d(s) for s in ("pretrain", "unet", "em")
                  + (("pretrain_l2",) if args.anchor_l2 else ())], curves)

  paper = previous_paper(args.report) if args.no_paper else paper_seconds_per_step()
  write_report(args, cfg, rows, timing, real, paper, curves, clean)


ANCHOR = "anchor: plain-L2 stage-1 encoder (no robust term), robust-likelihood mask"
MEAN_FACE = "(baselines: every face pixel inlier; 3D: the mean face)"


def clean_rows(args, cfg, d) -> list:
  """Rows ``(name, evaluation)`` on ``args.clean_faces`` held-out unoccluded faces (seed
  1, all in the test split): the mean face first, then the trained encoders."""
  data = os.path.join(args.out, f"data_clean_{args.clean_faces}")
  if not os.path.exists(os.path.join(data, "params.npz")):
    gen = synthetic.SyntheticFaces(
        morphable.builtin(resolution=cfg.model_resolution),
        synthetic.SyntheticConfig(size=cfg.image_size, occlusion_probability=0.0), seed=1,
        batch_size=16)
    synthetic.write_dataset(data, gen, args.clean_faces, fractions=(0.0, 0.0, 1.0),
                            progress=False, save_maps=False)
  mean_face = mean_face_errors(cfg, data)
  out = [("mean face (all coefficients 0)",
          dict(f1=float("nan"), precision=float("nan"), recall=float("nan"),
               accuracy=float("nan"), median_3d_mm=float(np.median(mean_face)),
               per_image_3d_mm=mean_face, examples=len(mean_face)))]
  runs = [("1: encoder (robust loss), robust-likelihood mask", "pretrain", cfg, False)]
  if args.anchor_l2:
    runs.append((ANCHOR, "pretrain_l2", cfg.replace(photo_loss="l2"), False))
  runs.append(("4: joint EM (encoder; UNet mask)", "em", cfg, True))
  for name, run_dir, c, with_unet in runs:
    ev = stages.evaluate(c, d(run_dir), data, "test", with_unet=with_unet)
    print("clean:", name, {k: v for k, v in ev.items() if k != "per_image_3d_mm"},
          "vs mean face:", paired_3d(ev, out[0][1]), flush=True)
    out.append((name, ev))
  return out


class _Rows(list):
  """Report rows ``(name, evaluation)``, each printed when added: a run cut short
  (e.g. by a device time limit) still shows the stages it finished."""

  def append(self, row):
    super().append(row)
    name, ev = row
    print(name, {k: v for k, v in ev.items() if k != "per_image_3d_mm"},
          "d3D vs stage 1:", paired_3d(ev, self[0][1]), flush=True)

  def __iadd__(self, rows):
    for row in rows:
      self.append(row)
    return self


def test_time_adaptation(args, cfg, data, run, d) -> list:
  """Rows of test-time adaptation on the synthetic test split (no labels).

  Three starting points, the same number of steps on the test images (their images
  and landmarks, the same inputs as the training split's; the ground-truth masks and
  meshes are only read by the evaluation afterwards): the EM networks (the full
  pipeline), the stage-1 encoder with the stage-3 UNet (adaptation without EM on the
  training split), and the stage-1 encoder with its own robust loss (no UNet at all).
  """
  n, lr = args.test_adapt_steps, args.test_adapt_lr
  tcfg, tag, at = cfg, "", ""
  if lr > 0:   # other run directories than the default's: a checkpoint's lr is fixed
    tcfg = cfg.replace(encoder_lr=lr, em_encoder_lr=lr)
    tag, at = f"_s{n}_lr{lr:g}", f", encoder lr {lr:g}"
  run("adapt", n, name="tta_em" + tag, config=tcfg, init_from=d("em"), split="test")
  run("adapt", n, name="tta_unet" + tag, config=tcfg, init_from=d("unet"), split="test")
  run("pretrain", n, name="tta_pretrain" + tag, config=tcfg, init_from=d("pretrain"),
      split="test")
  return [
      (f"5: joint EM + test-time adaptation ({n} EM steps on the test images{at})",
       stages.evaluate(cfg, d("tta_em" + tag), data, "test")),
      (f"5: no EM: stage 1 + stage-3 UNet + the same {n}-step test-time adaptation",
       stages.evaluate(cfg, d("tta_unet" + tag), data, "test")),
      (f"5: no UNet: stage 1 + {n} stage-1 (robust loss) steps on the test images{at}, "
       "robust-likelihood mask",
       stages.evaluate(cfg, d("tta_pretrain" + tag), data, "test", with_unet=False)),
  ]


def paired_3d(ev: dict, reference: dict) -> str:
  """Mean ± standard error of the per-image 3D difference (mm) of a row minus the
  reference row on the same test images, and the share of images it improves."""
  a = np.asarray(ev.get("per_image_3d_mm") or [], np.float64)
  b = np.asarray(reference.get("per_image_3d_mm") or [], np.float64)
  if a.size < 2 or a.shape != b.shape:
    return "–"
  diff = a - b
  se = diff.std(ddof=1) / np.sqrt(diff.size)
  return f"{diff.mean():+.3f} ± {se:.3f} ({np.mean(diff < 0):.0%})"


def all_inlier_scores(cfg, run_dir, data) -> dict:
  """Scores of the trivial mask (all inlier) inside a run's rendered face, test split."""
  from focus_jax.eval import mask_metrics
  from focus_jax.autoencoder import checkpoints as ckpt_io
  from focus_jax.train import data as data_lib
  enc, unet, _, _ = ckpt_io.load_networks(run_dir)
  source = data_lib.AlignedSource(data_lib.open_data(data, "test"), cfg.image_size)
  p = trainer.predict_dataset(cfg, enc, unet, source, with_unet=False, keys=("face",),
                              indices=list(range(len(source))))
  truth = np.stack([source.load(i)["mask"] > 0.5 for i in p["index"]])
  region = p["face"] > 0.5
  s = mask_metrics.mask_scores(np.ones_like(truth), truth, region)
  return dict(s, median_3d_mm=float("nan"), examples=len(truth))


def mean_face_errors(cfg, data) -> list:
  """Per-image 3D errors (mm) of the model's mean face (all coefficients 0), test split
  in dataset order: the 3D error a shape regressor must beat."""
  import jax.numpy as jnp
  from focus_jax.eval import mesh_metrics
  from focus_jax.morphable import model as model_lib
  from focus_jax.autoencoder import networks as networks_lib
  from focus_jax.train import data as data_lib
  m = networks_lib.load_model(cfg)
  v = np.asarray(model_lib.vertices(m, jnp.zeros((m.num_shape,)),
                                    jnp.zeros((m.num_expression,))))
  with np.load(os.path.join(data, "params.npz")) as z:
    row = {str(n): i for i, n in enumerate(z["names"])}
    gt = z["vertices"]
  ds = data_lib.open_data(data, "test")
  errors = []
  for i in range(len(ds)):
    g = gt[row[ds[i].name]]
    errors.append(mesh_metrics.aligned_median_error(v, g))
  return errors


def previous_paper(report: str):
  """The paper-config timings of an earlier report's JSON (kept with --no_paper)."""
  path = report.replace(".md", ".json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f).get("paper")
  return None


def write_report(args, cfg, rows, timing, real, paper, curves, clean=()):
  load = " → ".join("/".join(f"{x:.1f}" for x in la) for la in args.load)
  lines = ["# Training benchmark (benchmarks/train.py)", "",
           f"Machine: {os.cpu_count()} CPU cores (shared, timings noisy), JAX "
           f"{jax.__version__} on {jax.default_backend()}. Generated by "
           f"`{args.command}`, started {args.started}; load average (1/5/15 min) at "
           f"start → end: {load}.", "",
           "## Synthetic occluded faces: each stage", "",
           f"Tiny configuration ({cfg.image_size}², ResNet-18 width {cfg.encoder_width} with "
           f"{len(cfg.encoder_stages)} stages of {'/'.join(map(str, cfg.encoder_stages))} "
           f"blocks ({cfg.encoder_width * 2 ** (len(cfg.encoder_stages) - 1)} pooled "
           f"features), UNet width "
           f"{cfg.unet_width}, built-in model resolution {cfg.model_resolution} with "
           f"{cfg.num_shape}/{cfg.num_expression}/{cfg.num_albedo} components, no identity "
           f"net, encoder translation units {cfg.translation_scale:g} mm (x/y) / "
           f"{cfg.depth_scale:g} mm (z), Adam lr {cfg.encoder_lr:g} (EM encoder "
           f"{cfg.replace(stage='em').encoder_lr_of_stage():g}), batch {cfg.batch_size}, "
           f"coefficient regularisation {cfg.w_reg:g}, EM UNet weights area "
           f"{cfg.w_area:g} / binary {cfg.w_binary:g} / neighbour {cfg.w_neighbour:g}); "
           f"{args.num} synthetic faces (80/10/10 split), test split "
           f"evaluated. Steps: pretrain {args.pretrain_steps}, UNet {args.unet_steps}, EM "
           f"{args.em_steps} (cycles of {cfg.em_unet_steps} UNet + {cfg.em_encoder_steps} "
           "encoder steps)." + (f" Misfit prior: {args.prior_faces} unoccluded synthetic "
                                "fits (focus_jax.fitting.build_prior)." if args.prior_faces > 0
                                else ""), "",
           "Mask F1: inlier (visible skin) class inside the rendered face region vs the "
           "ground-truth visible-skin mask. 3D: median over test images of the per-image "
           "median vertex error after similarity alignment (mm); Δ3D vs stage 1: mean ± "
           "standard error over the test images of the per-image error minus stage 1's "
           "(negative = better; in brackets the share of images it improves); Δ3D vs "
           "plain L2: the same against the plain-L2 anchor (``--anchor_l2``: the stage-1 "
           "encoder trained with photo_loss=l2, no robust term); / mean face: the row's "
           "median 3D error over the mean face's (test split rows)."
           + (f" Rows 5 adapt on the {rows[0][1]['examples']} *test* images for "
              f"{args.test_adapt_steps} steps (batch {cfg.batch_size}; the EM rows in "
              "cycles as above, starting with a UNet block): unsupervised, as the paper's "
              "test-time adaptation — the steps see the test images and their landmarks, "
              "never the ground-truth masks or meshes, which only the scoring reads."
              if args.test_adapt_steps > 0 else ""), "",
           "| after stage | mask F1 | precision | recall | accuracy | median 3D error (mm) | "
           "/ mean face | Δ3D vs stage 1 (mm) | Δ3D vs plain L2 (mm) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  by_name = dict(rows)
  mean_3d = by_name[MEAN_FACE]["median_3d_mm"] if MEAN_FACE in by_name else float("nan")
  anchor = by_name.get(ANCHOR)
  for name, ev in rows:
    err = "–" if not np.isfinite(ev["median_3d_mm"]) else f"{ev['median_3d_mm']:.2f}"
    train_split = name.startswith("2:")
    ratio = ("–" if train_split or not np.isfinite(ev["median_3d_mm"] / mean_3d)
             else f"{ev['median_3d_mm'] / mean_3d:.3f}")
    paired = "–" if name.startswith("1:") or train_split else paired_3d(ev, rows[0][1])
    vs_l2 = ("–" if anchor is None or name == ANCHOR or train_split
             else paired_3d(ev, anchor))
    lines.append(f"| {name} | {ev['f1']:.3f} | {ev['precision']:.3f} | {ev['recall']:.3f} | "
                 f"{ev['accuracy']:.3f} | {err} | {ratio} | {paired} | {vs_l2} |")
  if clean:
    mean = clean[0][1]
    lines += ["", f"### Held-out unoccluded faces ({mean['examples']} faces, seed 1, no "
              "occluders; the encoders above, no further training)", "",
              "Mask F1 here: every face pixel is visible skin, so it measures how much skin a "
              "mask wrongly rejects (the mean face has no mask).", "",
              "| encoder | median 3D error (mm) | / mean face | Δ3D vs mean face (mm) | "
              "mask F1 |", "| --- | --- | --- | --- | --- |"]
    for name, ev in clean:
      ratio = ev["median_3d_mm"] / mean["median_3d_mm"]
      f1 = "–" if not np.isfinite(ev["f1"]) else f"{ev['f1']:.3f}"
      paired = "–" if ev is mean else paired_3d(ev, mean)
      lines.append(f"| {name} | {ev['median_3d_mm']:.2f} | {ratio:.3f} | {paired} | {f1} |")
  lines += ["", "Losses and time per stage (loss = mean of the first / last three logged "
            "values; seconds/step excludes the first log interval, which holds the "
            "compilation):", "", "| stage | steps | first loss | last loss | s/step | "
            "total s |", "| --- | --- | --- | --- | --- | --- |"]
  for k, v in timing.items():
    if "steps" in v:
      lines.append(f"| {k} | {v['steps']} | {v['first_loss']:.4g} | {v['last_loss']:.4g} | "
                   f"{v['seconds_per_step']:.3f} | {v['total_s']:.0f} |")
    else:
      lines.append(f"| {k} | – | – | – | – | {v['total_s']:.0f} |")
  lines += ["", f"![loss curves]({os.path.basename(curves)})", ""]
  if real:
    lines += ["## Real unlabelled faces (../shared/data/occluded_faces)", "",
              f"Test-time adaptation of the EM networks: {args.adapt_steps} EM steps on the "
              f"{real['examples']} photos (landmarks detected by dlib, 112² crops aligned "
              f"to 64²), loss {real['first_loss']:.4g} → {real['last_loss']:.4g}, "
              f"{real['seconds']:.0f} s. Rows: input | fit overlay | predicted mask (white "
              "= face inlier, red = face labelled outlier) | input × mask.", "",
              f"![real faces]({os.path.basename(real['tile'])})", ""]
  if paper:
    lines += ["## Paper configuration on this CPU", "",
              *(["(Timings of an earlier run, kept: this run had --no_paper.)", ""]
                if args.no_paper else []),
              "224², ResNet-50, UNet width 64, batch 12, dlib identity features, "
              "antialiased hard renders; one device. First call includes XLA "
              "compilation.", "", "| step | first call (s) | seconds/step |",
              "| --- | --- | --- |"]
    for k, v in paper.items():
      lines.append(f"| {k} | {v['first_call_s']:.0f} | {v['seconds_per_step']:.1f} |")
    lines.append("")
  with open(args.report, "w") as f:
    f.write("\n".join(lines))
  with open(args.report.replace(".md", ".json"), "w") as f:
    json.dump(dict(rows=rows, clean=list(clean), timing=timing, real=real, paper=paper,
                   command=args.command, load=args.load), f, indent=1, default=str)
  print("wrote", args.report)


if __name__ == "__main__":
  main()
