r"""Identity observability probe (issue 22): can an encoder read shape from the images?

Supervised regression of the *true* shape coefficients of synthetic faces
(:mod:`focus_jax.data.synthetic`, default pose/light/expression/albedo ranges, no
occluders unless ``--occluded``) by the encoder family the pipeline trains
(:class:`focus_jax.nets.encoder.ResNet`, ResNet-18 blocks), with an MSE loss on
standardised targets. Scored on held-out faces: R² per shape component
(1 − SSE / SST around the held-out mean; 0 = no better than predicting the mean,
which is what the trained pipeline's 3D column amounts to). Two controls ride along:

* the Euler angles are regressed by the same network (their R² shows the network
  learns what the images show, so a shape R² ≈ 0 is about the world, not the training);
* a ridge regression from the *exact* 2-D landmarks (centred, scale-normalised, plus
  the true angles) — a *linear* reader of the 68 landmark positions;
* the landmarks' ideal observer (:func:`ideal_observer_r2`): the Bayesian estimate of
  every coefficient from the exact landmarks plus Gaussian noise, linearised at the
  mean face, with the pose unknown (a broad prior) — how much of each component the
  landmarks carry at all, for a reader that knows the model and the camera.

Usage (writes benchmarks/results/identity_probe.json, keyed by ``--label``, and renders
every stored label into benchmarks/results/identity_probe.md)::

    python benchmarks/identity_probe.py --label "built-in model" [--sizes 64,128]
        [--train 3000 --test 500 --steps 1500 --width 16 --stages 1,1,1,1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from focus_jax import morphable  # noqa: E402
from focus_jax.data import synthetic  # noqa: E402
from focus_jax.nets.encoder import ResNet  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results")
ANGLE_NAMES = ("pitch", "yaw", "roll")


def r2_scores(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
  """Coefficient of determination per column: pred, true [N, K] -> [K]
  (1 − Σ(true − pred)² / Σ(true − mean(true))²; 0 for the mean, < 0 worse)."""
  pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
  if pred.shape != true.shape or pred.ndim != 2 or len(true) < 2:
    raise ValueError(f"r2_scores: need two [N>=2, K] arrays of one shape, got {pred.shape} "
                     f"and {true.shape}")
  sst = np.sum((true - true.mean(0)) ** 2, axis=0)
  return 1.0 - np.sum((true - pred) ** 2, axis=0) / np.maximum(sst, 1e-300)


def make_faces(model, size: int, indices: Sequence[int], seed: int, occluded: bool):
  """(images [N, size, size, 3] float16, shape [N, Ks], angles [N, 3] rad,
  landmarks [N, 68, 2] px) of synthetic faces ``indices`` of ``seed``."""
  cfg = synthetic.SyntheticConfig(size=size, occlusion_probability=1.0 if occluded else 0.0)
  gen = synthetic.SyntheticFaces(model, cfg, seed=seed, batch_size=32)
  images, shape, angles, lms = [], [], [], []
  for start in range(0, len(indices), 256):
    for s in gen.generate(indices[start:start + 256]):
      images.append(s.image.astype(np.float16))
      shape.append(s.params["shape"])
      angles.append(s.params["angles"])
      lms.append(s.landmarks)
  return (np.stack(images), np.stack(shape).astype(np.float32),
          np.stack(angles).astype(np.float32), np.stack(lms).astype(np.float32))


def landmark_features(landmarks: np.ndarray, angles: np.ndarray) -> np.ndarray:
  """[N, 68, 2] px, [N, 3] rad -> [N, 139]: centred landmarks divided by their rms
  radius (size and position removed), and the angles."""
  lm = np.nan_to_num(np.asarray(landmarks, np.float64))
  lm = lm - lm.mean(1, keepdims=True)
  lm /= np.sqrt((lm ** 2).sum((1, 2)) / lm.shape[1])[:, None, None]
  return np.concatenate([lm.reshape(len(lm), -1), angles], 1)


def ridge_r2(x_train, y_train, x_test, y_test, alpha: float = 1e-3) -> np.ndarray:
  """Held-out R² [K] of a ridge regression (standardised features, bias)."""
  mu, sd = x_train.mean(0), x_train.std(0) + 1e-12
  a = np.concatenate([(x_train - mu) / sd, np.ones((len(x_train), 1))], 1)
  b = np.concatenate([(x_test - mu) / sd, np.ones((len(x_test), 1))], 1)
  reg = alpha * len(a) * np.eye(a.shape[1])
  reg[-1, -1] = 0.0
  w = np.linalg.solve(a.T @ a + reg, a.T @ y_train)
  return r2_scores(b @ w, y_test)


def ideal_observer_r2(model, params: Sequence[dict], size: int, noise_px: float = 0.5,
                      known_pose: bool = False, components: int = 10,
                      config: synthetic.SyntheticConfig = synthetic.SyntheticConfig(),
                      seed: int = 0) -> np.ndarray:
  """R² [components] of the landmarks' ideal observer of the shape coefficients.

  For each face (``params``: :meth:`SyntheticFaces.params` dicts of ``model``), the
  exact projected landmarks y (px, ``size``² reference camera, the model's valid
  landmarks) plus N(0, ``noise_px``²) per coordinate are read by the posterior mean of
  a linear-Gaussian model around the mean face at the true pose: y − f(0) ≈ J·θ + ε,
  θ = every shape and expression coefficient (prior std ``config.shape_std`` /
  ``expression_std``) and, unless ``known_pose``, the 6 pose parameters (prior std of
  the generator's uniform ranges). Components beyond ``components`` are estimated too,
  so their landmark motion is discounted, not mistaken for the leading ones'.
  An upper bound for any reader of the landmarks (the linearisation is exact to first
  order; the true pose enters only as the expansion point)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from focus_jax.morphable import model as model_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.render import camera as camera_lib  # pylint: disable=import-outside-toplevel
  ks, ke = model.num_shape, model.num_expression
  intr = camera_lib.Intrinsics.reference(size)
  valid = np.repeat(np.asarray(model_lib.landmark_mask(model), bool), 2)

  def project(coef, pose):
    v = model_lib.vertices(model, coef[None, :ks], coef[None, ks:])
    cam = camera_lib.to_camera(v, pose[None, :3], pose[None, 3:])
    return camera_lib.project(model_lib.landmark_positions(model, cam), intr)[0].reshape(-1)

  f = jax.jit(project)
  jac = jax.jit(jax.jacfwd(project, argnums=(0, 1)))
  deg = np.pi / 180.0
  pose_sd = np.array([config.pitch * deg, config.yaw * deg, config.roll * deg,
                      config.translation_xy, config.translation_xy,
                      (config.translation_z[1] - config.translation_z[0]) / 2]) / np.sqrt(3.0)
  prior = np.r_[np.full(ks, config.shape_std), np.full(ke, config.expression_std)]
  if not known_pose:
    prior = np.r_[prior, pose_sd]
  rng = np.random.default_rng(seed)
  estimates, truth = [], []
  for p in params:
    coef = jnp.asarray(np.r_[p["shape"], p["expression"]], jnp.float32)
    pose = jnp.asarray(np.r_[p["angles"], p["translation"]], jnp.float32)
    y = np.asarray(f(coef, pose), np.float64)[valid]
    y = y + rng.normal(0.0, noise_px, y.shape)
    zero = jnp.zeros_like(coef)
    jc, jp = (np.asarray(a, np.float64)[valid] for a in jac(zero, pose))
    j = jc if known_pose else np.concatenate([jc, jp], 1)
    r = y - np.asarray(f(zero, pose), np.float64)[valid]
    cov = j * prior ** 2 @ j.T + max(noise_px, 1e-3) ** 2 * np.eye(len(y))
    est = prior ** 2 * (j.T @ np.linalg.solve(cov, r))
    estimates.append(est[:components])
    truth.append(np.asarray(p["shape"][:components], np.float64))
  return r2_scores(np.stack(estimates), np.stack(truth))


def train_probe(train_x, train_y, test_x, *, width: int, stages: Sequence[int], steps: int,
                batch: int, lr: float, seed: int = 0, log=print):
  """Trains a ResNet regressor on standardised targets; returns held-out predictions
  [N_test, K] in target units, and the last training losses."""
  mu, sd = train_y.mean(0), train_y.std(0) + 1e-6
  yz = (train_y - mu) / sd
  net = ResNet(depth=18, width=width, stage_sizes=tuple(stages), num_outputs=train_y.shape[1],
               head_init=jax.nn.initializers.zeros)
  variables = net.init(jax.random.key(seed), jnp.zeros((1,) + train_x.shape[1:]))
  schedule = optax.cosine_decay_schedule(lr, steps)
  opt = optax.adamw(schedule, weight_decay=1e-4)
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = opt.init(params)

  @jax.jit
  def step(params, stats, opt_state, x, y):
    def loss_fn(p):
      out, new = net.apply({"params": p, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"])
      return jnp.mean((out - y) ** 2), new["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  predict = jax.jit(lambda p, s, x: net.apply({"params": p, "batch_stats": s}, x))
  rng = np.random.default_rng(seed)
  losses = []
  for i in range(steps):
    idx = rng.integers(0, len(train_x), batch)
    params, stats, opt_state, loss = step(params, stats, opt_state,
                                          jnp.asarray(train_x[idx], jnp.float32),
                                          jnp.asarray(yz[idx]))
    losses.append(float(loss))
    if (i + 1) % max(1, steps // 10) == 0:
      log(f"  step {i + 1}/{steps} loss {np.mean(losses[-20:]):.4f}")
  preds = [np.asarray(predict(params, stats, jnp.asarray(test_x[i:i + 128], jnp.float32)))
           for i in range(0, len(test_x), 128)]
  return np.concatenate(preds) * sd + mu, float(np.mean(losses[-50:]))


def shape_spectrum(model, components: int) -> Dict[str, list]:
  """rms vertex displacement (mm) of each std-scaled shape component, and the share of
  the model's shape variance in the first five (of its num_shape)."""
  b = np.asarray(model.shape_basis, np.float64)
  var = (b ** 2).sum((1, 2))
  return dict(rms_mm=np.sqrt(var / b.shape[1])[:components].round(3).tolist(),
              first5_share=float(var[:5].sum() / var.sum()))


def run(args, log=print) -> dict:
  model = morphable.builtin(resolution=args.resolution, num_shape=args.num_shape,
                            num_expression=args.num_expression, num_albedo=args.num_albedo)
  k = min(args.components, model.num_shape)
  out = dict(label=args.label, model=model.name, num_shape=model.num_shape, seed=args.seed,
             spectrum=shape_spectrum(model, k), train=args.train, test=args.test,
             steps=args.steps, batch=args.batch, width=args.width,
             stages=list(args.stages), lr=args.lr, occluded=bool(args.occluded),
             ideal_only=bool(args.ideal_only), sizes={})
  for size in args.sizes:
    if args.ideal_only:
      gen = synthetic.SyntheticFaces(model, synthetic.SyntheticConfig(size=size),
                                     seed=args.seed)
      params = [gen.params(i) for i in range(args.train, args.train + args.test)]
      ideal = ideal_observer_r2(model, params, size, noise_px=args.ideal_noise, components=k)
      out["sizes"][str(size)] = dict(ideal_observer_r2=ideal.round(4).tolist(),
                                     ideal_noise_px=args.ideal_noise)
      log(f"{size}²: ideal observer R² {np.round(ideal, 3)}")
      continue
    t0 = time.perf_counter()
    x, shape, angles, lms = make_faces(model, size, list(range(args.train + args.test)),
                                       args.seed, args.occluded)
    gen_s = time.perf_counter() - t0
    tr, te = slice(0, args.train), slice(args.train, None)
    y = np.concatenate([shape[:, :k], angles], 1)
    log(f"{size}²: {len(x)} faces in {gen_s:.0f} s; training")
    t0 = time.perf_counter()
    pred, last_loss = train_probe(x[tr], y[tr], x[te], width=args.width, stages=args.stages,
                                  steps=args.steps, batch=args.batch, lr=args.lr,
                                  seed=args.seed, log=log)
    train_s = time.perf_counter() - t0
    r2 = r2_scores(pred, y[te])
    feats = landmark_features(lms, angles)
    lm_r2 = ridge_r2(feats[tr], shape[tr, :k], feats[te], shape[te, :k])
    gen = synthetic.SyntheticFaces(model, synthetic.SyntheticConfig(size=size), seed=args.seed)
    params = [gen.params(i) for i in range(args.train, args.train + args.test)]
    ideal = ideal_observer_r2(model, params, size, noise_px=args.ideal_noise, components=k)
    out["sizes"][str(size)] = dict(
        shape_r2=r2[:k].round(4).tolist(), angle_r2=r2[k:].round(4).tolist(),
        landmark_ridge_r2=lm_r2.round(4).tolist(), ideal_observer_r2=ideal.round(4).tolist(),
        ideal_noise_px=args.ideal_noise, final_train_loss=last_loss,
        generate_s=round(gen_s, 1), train_s=round(train_s, 1))
    log(f"{size}²: shape R² {np.round(r2[:k], 3)}; angles {np.round(r2[k:], 3)}; "
        f"landmark ridge {np.round(lm_r2, 3)}")
  out["when"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  return out


def render_markdown(entries: Dict[str, dict]) -> str:
  """The results page for every stored probe run."""
  lines = [
      "# Identity observability probe (benchmarks/identity_probe.py)", "",
      "Supervised regression of the true shape coefficients from rendered synthetic faces "
      "(built-in model, default `SyntheticConfig` pose/light/expression/albedo ranges, "
      "no occluders unless stated) by a ResNet-18-block encoder (the pipeline's encoder "
      "family), MSE on standardised targets, AdamW with cosine decay. Held-out R² per "
      "shape component (0 = the mean face, 1 = exact). Controls: the Euler angles, "
      "regressed by the same network; a ridge regression from the exact 2-D "
      "landmarks (centred, scale-normalised) plus the true angles (a linear reader); and, "
      "in runs that have it, the landmarks' ideal observer: the Bayesian posterior mean "
      "of every shape and expression coefficient from the exact landmarks plus Gaussian "
      "noise, linearised at the mean face, pose unknown (`ideal_observer_r2`).", ""]
  for label, e in entries.items():
    spec = e["spectrum"]
    lines += [f"## {label}", "",
              f"`{e['command']}` — {e['when']}, {e['machine']}.", "",
              f"Model {e['model']}, {e['num_shape']} shape components; rms vertex "
              f"displacement of the first ones (mm): "
              + ", ".join(f"{v:.2f}" for v in spec["rms_mm"][:6])
              + f"; the first five hold {100 * spec['first5_share']:.1f} % of these {e['num_shape']} components' variance. "
              + (f"{e['test']} faces (seed {e.get('seed', 0)}, after the first "
                 f"{e['train']}); ideal-observer control only, no images, no training."
                 if e.get("ideal_only") else
                 f"{e['train']} training / {e['test']} held-out faces"
                 + (" with occluders" if e["occluded"] else "")
                 + f", {e['steps']} steps of batch {e['batch']}, width {e['width']}, "
                 f"stages {tuple(e['stages'])}, lr {e['lr']}."), ""]
    k = len(spec["rms_mm"])
    head = "| size | what | " + " | ".join(f"c{i + 1}" for i in range(k)) + " |"
    lines += [head, "|" + " --- |" * (k + 2)]
    for size, r in e["sizes"].items():
      if "shape_r2" in r:
        lines.append(f"| {size}² | encoder: shape R² | "
                     + " | ".join(f"{v:.2f}" for v in r["shape_r2"]) + " |")
        lines.append(f"| {size}² | exact landmarks, ridge: shape R² | "
                     + " | ".join(f"{v:.2f}" for v in r["landmark_ridge_r2"]) + " |")
      if "ideal_observer_r2" in r:
        lines.append(f"| {size}² | landmarks ± {r['ideal_noise_px']:g} px, ideal observer, "
                     "pose unknown: shape R² | "
                     + " | ".join(f"{v:.2f}" for v in r["ideal_observer_r2"]) + " |")
    lines.append("")
    for size, r in e["sizes"].items():
      if "angle_r2" not in r:
        continue
      lines.append(f"- {size}²: angle R² (pitch, yaw, roll) "
                   + ", ".join(f"{v:.3f}" for v in r["angle_r2"])
                   + f"; final training loss {r['final_train_loss']:.3f} (standardised MSE); "
                   f"faces generated in {r['generate_s']:.0f} s, trained in "
                   f"{r['train_s']:.0f} s.")
    if e.get("note"):
      lines += ["", e["note"]]
    lines.append("")
  return "\n".join(lines)


def save_labelled(result: dict, args, script: str, render, argv=None) -> None:
  """Stamps ``result`` with its command line and machine (and ``args.note``), merges it
  under ``args.label`` into the JSON file ``args.json`` and rewrites ``args.out`` from
  every stored entry with ``render``; both files are replaced atomically."""
  result["command"] = f"python benchmarks/{script} " + " ".join(
      a if " " not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:]))
  result["machine"] = (f"{os.cpu_count()} CPU cores, JAX {jax.__version__} on "
                       f"{jax.default_backend()}, {platform.machine()}")
  if args.note:
    result["note"] = args.note
  entries = {}
  if os.path.exists(args.json):
    with open(args.json) as f:
      entries = json.load(f)
  entries[args.label] = result
  for path, text in ((args.json, json.dumps(entries, indent=1)), (args.out, render(entries))):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--label", default="built-in model")
  ap.add_argument("--sizes", default="64,128")
  ap.add_argument("--train", type=int, default=3000)
  ap.add_argument("--test", type=int, default=500)
  ap.add_argument("--steps", type=int, default=1500)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=2e-3)
  ap.add_argument("--width", type=int, default=16)
  ap.add_argument("--stages", default="1,1,1,1")
  ap.add_argument("--resolution", type=int, default=37, help="built-in model resolution")
  ap.add_argument("--num_shape", type=int, default=20)
  ap.add_argument("--num_expression", type=int, default=10)
  ap.add_argument("--num_albedo", type=int, default=20)
  ap.add_argument("--components", type=int, default=10, help="shape components scored")
  ap.add_argument("--occluded", action="store_true", help="faces with occluders")
  ap.add_argument("--ideal_only", action="store_true",
                  help="only the ideal-observer control (no images, no training); --test "
                       "faces after the first --train")
  ap.add_argument("--ideal_noise", type=float, default=0.5,
                  help="landmark noise (px per coordinate) of the ideal-observer control")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--note", default="", help="text added under this label's table")
  ap.add_argument("--json", default=os.path.join(RESULTS, "identity_probe.json"))
  ap.add_argument("--out", default=os.path.join(RESULTS, "identity_probe.md"))
  args = ap.parse_args(argv)
  args.sizes = [int(s) for s in args.sizes.split(",") if s]
  args.stages = [int(s) for s in args.stages.split(",") if s]
  if not args.sizes or min(args.sizes) < 16 or args.train < 2 or args.test < 2:
    raise SystemExit("identity_probe: need --sizes >= 16, --train >= 2 and --test >= 2")
  result = run(args)
  save_labelled(result, args, "identity_probe.py", render_markdown, argv)
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
