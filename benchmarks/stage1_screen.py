r"""Stage 1 alone, scored as the 3D column needs it (issue 22): does the encoder read identity?

Trains the stage-1 encoder (robust photometric + landmarks + coefficient prior) of the
tiny config at ``--image_size`` with config overrides, on ``--num`` synthetic occluded
faces (seed 0, as ``benchmarks/train.py``), and scores it after each of ``--steps``
(a list: later entries resume the same run) on 200 held-out unoccluded faces (seed 1,
``benchmarks/train.py --clean_faces 200``'s set) and on the first 200 test faces of the
occluded set:

* median 3D error (per image the median vertex error after similarity alignment) over
  the mean face's, and the paired difference to the mean face (mean ± s.e.);
* the encoder's median landmark error (px of the crop) on the clean faces, next to two
  references measured once: the mean face and the true coefficients, each with its
  best pose (fitted to the exact landmarks) — identity moves the landmarks by about
  the difference of the two;
* held-out R² of shape c1–c5 and its correlation with the truth.

Usage (appends one row per scored checkpoint to ``--out``'s JSON lines)::

    python benchmarks/stage1_screen.py --out /tmp/s1 --set w_reg=1 --steps 3000,6000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from focus_jax import morphable  # noqa: E402
from focus_jax.autoencoder import checkpoints as ckpt_io  # noqa: E402
from focus_jax.autoencoder import networks as networks_lib  # noqa: E402
from focus_jax.data import synthetic  # noqa: E402
from focus_jax.morphable import model as model_lib  # noqa: E402
from focus_jax.train import config as config_lib  # noqa: E402
from focus_jax.train import data as data_lib  # noqa: E402
from focus_jax.train import stages, trainer  # noqa: E402
from focus_jax.train import state as state_lib  # noqa: E402
from identity_probe import r2_scores  # noqa: E402
from objective_ceiling import masked_adam  # noqa: E402

_TYPES = {"w_reg": float, "w_landmark": float, "w_photo": float, "encoder_width": int,
          "num_shape": int, "num_expression": int, "num_albedo": int, "encoder_lr": float,
          "batch_size": int}


def parse_overrides(items) -> Dict[str, object]:
  """``['w_reg=1', 'num_shape=80']`` -> {'w_reg': 1.0, 'num_shape': 80}."""
  out = {}
  for item in items:
    name, _, value = item.partition("=")
    if name not in _TYPES or not value:
      raise ValueError(f"--set {item!r}: expected NAME=VALUE with NAME one of "
                       f"{sorted(_TYPES)}")
    try:
      out[name] = _TYPES[name](value)
    except ValueError:
      raise ValueError(f"--set {item!r}: {value!r} is not a {_TYPES[name].__name__}") from None
  return out


def make_config(image_size: int, overrides: dict):
  cfg = config_lib.tiny(progress=False, log_every=50, image_every=1000,
                        checkpoint_every=500, batch_size=16)
  cfg = cfg.replace(image_size=image_size, encoder_stages=(1, 1, 1, 1), encoder_width=16,
                    w_reg=1.0)
  return cfg.replace(**overrides)


def write_faces(path: str, num: int, size: int, seed: int, occluded: bool, fractions=None):
  if os.path.exists(os.path.join(path, "params.npz")):
    return
  gen = synthetic.SyntheticFaces(
      morphable.builtin(resolution=37),
      synthetic.SyntheticConfig(size=size, occlusion_probability=1.0 if occluded else 0.0),
      seed=seed, batch_size=16)
  kw = {} if fractions is None else dict(fractions=fractions)
  synthetic.write_dataset(path, gen, num, progress=False, save_maps=False, **kw)


def _test_faces(cfg, data: str, n: int):
  """(source, indices, true params rows) of the first n test faces of ``data``."""
  src = data_lib.AlignedSource(data_lib.open_data(data, "test"), cfg.image_size)
  with np.load(os.path.join(data, "params.npz")) as z:
    row = {str(nm): i for i, nm in enumerate(z["names"])}
    params = {k: z[k] for k in ("shape", "expression")}
  idx = list(range(min(n, len(src))))
  return src, idx, [row[src.ds[i].name] for i in idx], params


def landmark_references(cfg, data: str, n: int = 32, steps: int = 600) -> dict:
  """Median landmark error (px) of the mean face and of the true coefficients, each
  with the pose (and nothing else) fitted to the exact crop landmarks by Adam; the
  coefficients beyond the config's components are left out of 'truth'."""
  nets = state_lib.make_networks(cfg, axis_name=None)
  src, idx, rows, params = _test_faces(cfg, data, n)
  exs = [src.load(i) for i in idx]
  images = jnp.asarray(np.stack([e["image"] for e in exs]), jnp.float32)
  target = jnp.asarray(np.stack([e["landmarks"] for e in exs]), jnp.float32)
  sizes = nets.encoder.split_sizes()
  ks, ke = sizes["shape"], sizes["expression"]
  first_pose = ks + ke + sizes["albedo"]
  mask = jnp.asarray((np.arange(nets.encoder.num_outputs) >= first_pose)
                     & (np.arange(nets.encoder.num_outputs) < first_pose + 6), jnp.float32)
  valid = np.asarray(model_lib.landmark_mask(nets.model), bool)

  def landmarks(raw):
    out = nets.encoder.postprocess(raw)
    return networks_lib.render_faces(cfg, nets, nets.model, out, images).landmarks

  fit = jax.jit(lambda raw: masked_adam(
      lambda r: jnp.mean(jnp.square(landmarks(r) - target)[:, valid]), raw, mask, steps, 0.01))

  out = {}
  for name, use_truth in (("mean_face", False), ("true_coefficients", True)):
    raw = np.zeros((len(idx), nets.encoder.num_outputs), np.float32)
    if use_truth:
      raw[:, :ks] = params["shape"][rows][:, :ks]
      raw[:, ks:ks + ke] = params["expression"][rows][:, :ke]
    lm = np.asarray(landmarks(fit(jnp.asarray(raw))))
    err = np.linalg.norm(lm - np.asarray(target), axis=-1)[:, valid]
    out[name] = float(np.median(err))
  return out


def encoder_scores(cfg, run: str, data: str, n: int = 200) -> dict:
  """Landmark error and shape R² / correlation (c1–c5) of ``run``'s encoder."""
  enc, unet, _, _ = ckpt_io.load_networks(run)
  src, idx, rows, params = _test_faces(cfg, data, n)
  pred = trainer.predict_dataset(cfg, enc, unet, src, with_unet=False, indices=idx,
                                 keys=("shape", "landmarks"))
  target = np.stack([src.load(i)["landmarks"] for i in idx])
  valid = np.asarray(model_lib.landmark_mask(
      networks_lib.load_model(cfg)), bool)
  err = np.linalg.norm(pred["landmarks"] - target, axis=-1)[:, valid]
  t, p = params["shape"][rows][:, :5], pred["shape"][:, :5]
  r2 = r2_scores(p, t)
  corr = [float(np.corrcoef(p[:, j], t[:, j])[0, 1]) if p[:, j].std() > 0 else 0.0
          for j in range(t.shape[1])]
  return dict(landmark_px=float(np.median(err)), shape_r2=np.round(r2, 3).tolist(),
              shape_corr=np.round(corr, 3).tolist())


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True, help="folder: data, run, results.jsonl")
  ap.add_argument("--num", type=int, default=8000, help="occluded training faces (seed 0)")
  ap.add_argument("--clean", type=int, default=200, help="unoccluded test faces (seed 1)")
  ap.add_argument("--image_size", type=int, default=128)
  ap.add_argument("--steps", default="3000", help="comma-separated step counts to score at")
  ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                  help="config override (repeatable): " + ", ".join(sorted(_TYPES)))
  ap.add_argument("--name", default="", help="run folder name (default: from --set)")
  args = ap.parse_args(argv)
  try:
    overrides = parse_overrides(args.set)
    steps = [int(s) for s in args.steps.split(",") if s]
  except ValueError as e:
    raise SystemExit(f"stage1_screen: {e}") from e
  if not steps or min(steps) < 1 or args.num < 10 or args.clean < 2:
    raise SystemExit("stage1_screen: need --steps >= 1, --num >= 10, --clean >= 2")
  if args.name and (os.path.basename(args.name) != args.name or args.name in (".", "..")):
    raise SystemExit(f"stage1_screen: --name {args.name!r} must be a plain folder name "
                     "(it is created under OUT/runs)")
  import train as train_bench  # benchmarks/train.py: the mean-face errors
  cfg = make_config(args.image_size, overrides)
  data = os.path.join(args.out, "data")
  clean = os.path.join(args.out, f"clean_{args.clean}")
  write_faces(data, args.num, args.image_size, seed=0, occluded=True)
  write_faces(clean, args.clean, args.image_size, seed=1, occluded=False,
              fractions=(0.0, 0.0, 1.0))
  name = args.name or ("_".join(f"{k}{v}" for k, v in sorted(overrides.items())) or "tiny")
  run = os.path.join(args.out, "runs", name)
  mean_clean = np.asarray(train_bench.mean_face_errors(cfg, clean))
  mean_occ = np.asarray(train_bench.mean_face_errors(cfg, data))[:200]
  refs = landmark_references(cfg, clean)
  print(f"landmark references (px): {refs}", flush=True)
  for n in steps:
    t0 = time.perf_counter()
    trainer.train(cfg.replace(stage="pretrain", num_steps=n), run, data)
    train_s = time.perf_counter() - t0
    ec = stages.evaluate(cfg, run, clean, "test", with_unet=False)
    eo = stages.evaluate(cfg, run, data, "test", with_unet=False, max_examples=200)
    d = np.asarray(ec["per_image_3d_mm"]) - mean_clean
    row = dict(name=name, overrides=overrides, steps=n, num=args.num,
               image_size=args.image_size, train_s=round(train_s, 1),
               clean_ratio=ec["median_3d_mm"] / float(np.median(mean_clean)),
               clean_paired_mm=float(d.mean()),
               clean_paired_se=float(d.std(ddof=1) / np.sqrt(len(d))),
               occluded_ratio=eo["median_3d_mm"] / float(np.median(mean_occ)),
               occluded_f1=eo["f1"], landmark_references_px=refs,
               **encoder_scores(cfg, run, clean))
    if not all(np.isfinite(v) for v in (row["clean_ratio"], row["occluded_ratio"])):
      raise SystemExit(f"stage1_screen: non-finite scores at step {n} of {run}")
    print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "results.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
  return row


if __name__ == "__main__":
  main()
