r"""Parity with the FOCUS reference's own code: losses, landmark weights, camera, SH
shading and learning-rate schedules, run with PyTorch on the same random inputs as
focus-jax; prints the largest absolute difference per element.

  python benchmarks/reference_parity.py REF_CHECKOUT [--out benchmarks/results/reference_parity.md]

REF_CHECKOUT: a local checkout of unibas-gravis/Occlusion-Robust-MoFA (never committed
here), e.g. ``git -C <mirror> worktree add /tmp/ref HEAD``. Without it, or without
torch, the script prints ``SKIPPED: <reason>`` and exits 0.

What runs from the reference, and how:

* imported as modules: ``renderer/geometry.py`` (perspective_projection),
  ``renderer/shading.py`` (calc_sh_basis), ``encoder/camera_matrix.py``
  (calc_extrinxic_camera_matrix), ``util/advanced_losses.py`` (neighbor_unet_loss);
* the Step scripts train when imported, so the needed statements are taken from their
  source with ``ast`` and executed on our inputs, unchanged: Step 1's
  ``occlusionPhotometricLossWithoutBackground``; the loss statements of Step 4's
  ``proc_mofaunet`` (masked reconstruction, area, binary, perceptual, landmark,
  regulariser, preserve, dist); Step 3's ``proc_unet`` (its UNet replaced by the fixed
  output being compared); the learning-rate set-up of Steps 1, 3 and 4 (their
  Adadelta optimisers and StepLR schedulers on a dummy parameter, stepped once per
  global step as their loops do); the landmark-weight statements of
  ``util/load_object.py`` (its class needs BFM 2017 and torchvision to be built);
* ``torch.Tensor.cuda`` is made a no-op (Step 1's loss moves its mask to a GPU): a
  device move, no numeric change. Nothing else is stubbed.

Not run here: the ArcFace identity network (focus-jax uses dlib's: deliberate, the
ArcFace weights are not obtainable; the perceptual / preserve / dist formulas are
compared on random unit features), the rasteriser (focus-jax's renderer has its own
tests), the encoder / UNet architectures (tests/test_nets_*.py compare them with
torch re-implementations).
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import textwrap

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

NEEDED = ("Step1_Pretrain_MoFA.py", "Step3_Pretrain_Unet.py", "Step4_UNet_MoFA_EM.py",
          "util/advanced_losses.py", "util/load_object.py", "renderer/shading.py",
          "renderer/geometry.py", "encoder/camera_matrix.py")
B, S = 3, 32          # batch, image side of the loss inputs
LR_STEPS = (0, 1, 4999, 5000, 5001, 29999, 30000, 64999, 65000, 119999, 120000, 299999,
            300000)


# ------------------------------------------------------------------ reading the reference


def _source(checkout, rel):
  with open(os.path.join(checkout, rel), encoding="utf-8") as f:
    return f.read()


def _function(checkout, rel, name):
  """The source of top-level function ``name`` of a reference file."""
  src = _source(checkout, rel)
  for node in ast.parse(src).body:
    if isinstance(node, ast.FunctionDef) and node.name == name:
      return ast.get_source_segment(src, node)
  raise LookupError(f"{rel}: no function {name}")


def _assignments(checkout, rel, targets, within=None):
  """Source of the assignment statements to ``targets`` (in order of appearance), at
  any depth of function ``within`` (or of the module): the first assignment per target
  that is not a ``torch.zeros(...)`` placeholder."""
  src = _source(checkout, rel)
  root = ast.parse(src)
  if within is not None:
    root = next(n for n in ast.walk(root) if isinstance(n, ast.FunctionDef)
                and n.name == within)
  found = {}
  for node in ast.walk(root):
    if isinstance(node, (ast.Assign, ast.AugAssign)):
      tgts = node.targets if isinstance(node, ast.Assign) else [node.target]
      for t in tgts:
        text = ast.get_source_segment(src, t)
        value = ast.get_source_segment(src, node.value)
        if value.replace(" ", "").startswith("torch.zeros("):
          continue            # the placeholders of proc_mofaunet (0 unless a branch sets it)
        if text in targets and text not in found:
          found[text] = (node.lineno, textwrap.dedent(ast.get_source_segment(src, node)))
  missing = [t for t in targets if t not in found]
  if missing:
    raise LookupError(f"{rel}: no assignment to {missing}")
  return [found[t][1] for t in sorted(found, key=lambda k: found[k][0])]


def _weight_statements(checkout):
  """The landmark-weight lines of Object3DMM.__init__ (util/load_object.py)."""
  src = _source(checkout, "util/load_object.py")
  lines = [ln.strip() for ln in src.splitlines() if ln.strip().startswith("weight")]
  return [ln for ln in lines if "=" in ln and "self." not in ln]


# ------------------------------------------------------------------------- comparisons


def _max_diff(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size == b.size:      # e.g. a torch scalar kept as [1]
    b = b.reshape(a.shape)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  return float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))


def compare_losses(checkout, torch, rng):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from focus_jax import losses  # pylint: disable=import-outside-toplevel
  t = lambda x: torch.tensor(np.asarray(x, np.float32))
  nhwc = lambda x: np.transpose(x, (0, 2, 3, 1))
  images = rng.uniform(0, 1, (B, 3, S, S)).astype(np.float32)
  raster = np.clip(images + rng.normal(0, 0.08, images.shape), 0, 1).astype(np.float32)
  yy, xx = np.mgrid[:S, :S]
  face = ((yy - S / 2) ** 2 + (xx - S / 2) ** 2 < (0.4 * S) ** 2).astype(np.float32)
  face = np.broadcast_to(face, (B, S, S)).copy()
  raster = raster * face[:, None]                 # the reference's black background
  unet = rng.uniform(0, 1, (B, 1, S, S)).astype(np.float32)
  lms = rng.uniform(0, S, (B, 2, 68)).astype(np.float32)
  lm68 = (lms + rng.normal(0, 2, lms.shape)).astype(np.float32)
  shape_p, exp_p, color_p = (rng.normal(0, 1, (B, k)).astype(np.float32) for k in (80, 64, 80))
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  pred_feat, gt_feat = (unit(rng.normal(0, 1, (B, 512))).astype(np.float32) for _ in range(2))
  shallow = [rng.normal(0, 1, (B, 16, 8, 8)).astype(np.float32) for _ in range(3)]

  # Reference: Step 1's robust loss, Step 4's statements, util's neighbour loss.
  torch.Tensor.cuda = lambda self, *a, **k: self   # device move only
  ns = dict(torch=torch, math=math, F=torch.nn.functional, GPU_no=0,
            util=type("u", (), {"device_ids": [0]}),
            cos=torch.nn.CosineSimilarity(dim=1, eps=1e-6), batch=B)
  exec(_function(checkout, "Step1_Pretrain_MoFA.py",  # pylint: disable=exec-used
                 "occlusionPhotometricLossWithoutBackground"), ns)
  weight_ns = dict(np=np)
  for line in _weight_statements(checkout):
    exec(line, weight_ns)  # pylint: disable=exec-used
  ns["obj"] = type("obj", (), {"weight_lm": torch.tensor(weight_ns["weight"])})
  ns.update(images=t(images), raster_image=t(raster), raster_mask=t(face),
            unet_est_mask=t(unet), landmarks=t(lms), lm68=t(lm68), shape_param=t(shape_p),
            exp_param=t(exp_p), color_param=t(color_p), pred_feat=t(pred_feat),
            gt_feat=t(gt_feat), id_target=t(shallow[0]), id_target_masked=t(shallow[1]),
            id_reconstruct_masked=t(shallow[2]))
  stmts = _assignments(checkout, "Step4_UNet_MoFA_EM.py",
                       ["valid_loss_mask", "masked_rec_loss", "bg_unet_loss",
                        "mask_binary_loss", "cosine_d", "perceptual_loss", "land_loss",
                        "stat_reg", "I_IM_Per_loss", "IRM_IM_Per_loss"], within="proc_mofaunet")
  for s in stmts:
    exec(s, ns)  # pylint: disable=exec-used
  ref_photo, _ = ns["occlusionPhotometricLossWithoutBackground"](ns["images"],
                                                                 ns["raster_image"],
                                                                 ns["raster_mask"])
  sys.path.insert(0, checkout)
  from util import advanced_losses  # pylint: disable=import-outside-toplevel,import-error
  ref_nb = advanced_losses.neighbor_unet_loss(ns["images"], ns["valid_loss_mask"],
                                              ns["raster_image"])
  exec(_function(checkout, "Step3_Pretrain_Unet.py", "proc_unet"), ns)  # pylint: disable=exec-used
  logits = rng.normal(0, 2, (B, 1, S, S)).astype(np.float32)
  pseudo = (rng.uniform(0, 1, (B, 1, S, S)) < 0.6).astype(np.float32) * face[:, None]
  ns["unet_mask"] = lambda _: torch.sigmoid(t(logits))
  ref_bce, _ = ns["proc_unet"](None, t(pseudo))

  # focus-jax on the same inputs (NHWC; landmarks [B, 68, 2]).
  I, R, F, M = nhwc(images), nhwc(raster), face, unet[:, 0]
  lm_t, lm_p = np.swapaxes(lms, 1, 2), np.swapaxes(lm68, 1, 2)
  import optax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  ours = {
      "photometric (S1 robust likelihood)": losses.robust_photometric(R, I, F)[0],
      "masked reconstruction (S4)": losses.masked_reconstruction(R, I, F, M),
      "area (S4 bg_unet_loss)": losses.area_loss(F, M),
      "binary (S4)": losses.binary_loss(F, M),
      "perceptual (S1/S4, unit features)": losses.perceptual_loss(pred_feat, gt_feat),
      "landmark (S1/S4, reference weights)": losses.landmark_loss(lm_p, lm_t),
      "regulariser (S1/S4)": losses.coefficient_regularization(shape_p, exp_p, color_p),
      "preserve (S4, shallow features)": losses.preserve_loss(nhwc(shallow[0]),
                                                              nhwc(shallow[1])),
      "dist (S4, shallow features)": losses.dist_loss(nhwc(shallow[2]), nhwc(shallow[1])),
      "neighbour (S4, 5x5)": losses.neighbour_loss(R, I, M * F),
      "stage-3 BCE (--unet_bce=reference formula of train/steps.py)": jnp.mean(optax.sigmoid_binary_cross_entropy(
          jax.nn.sigmoid(logits[:, 0]), pseudo[:, 0])),
  }
  refs = {
      "photometric (S1 robust likelihood)": ref_photo,
      "masked reconstruction (S4)": ns["masked_rec_loss"],
      "area (S4 bg_unet_loss)": ns["bg_unet_loss"],
      "binary (S4)": ns["mask_binary_loss"],
      "perceptual (S1/S4, unit features)": ns["perceptual_loss"],
      "landmark (S1/S4, reference weights)": ns["land_loss"],
      "regulariser (S1/S4)": ns["stat_reg"],
      "preserve (S4, shallow features)": ns["I_IM_Per_loss"],
      "dist (S4, shallow features)": ns["IRM_IM_Per_loss"],
      "neighbour (S4, 5x5)": ref_nb,
      "stage-3 BCE (--unet_bce=reference formula of train/steps.py)": ref_bce,
  }
  rows = [(k, *_max_diff(np.asarray(ours[k]), refs[k].detach().numpy())) for k in ours]
  rows.append(("landmark weights [68]", *_max_diff(losses.landmark_weights(),
                                                   weight_ns["weight"][0])))
  return rows


def compare_camera_and_shading(checkout, torch, rng):
  from focus_jax.render import camera, shading  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, checkout)
  from encoder import camera_matrix  # pylint: disable=import-outside-toplevel,import-error
  from renderer import geometry  # pylint: disable=import-outside-toplevel,import-error
  from renderer import shading as ref_shading  # pylint: disable=import-outside-toplevel,import-error
  n = 200
  angles = rng.uniform(-0.5, 0.5, (B, 3)).astype(np.float32)
  trans = np.concatenate([rng.uniform(-20, 20, (B, 2)), rng.uniform(-60, 60, (B, 1))],
                         -1).astype(np.float32)
  verts = rng.normal(0, 60, (B, n, 3)).astype(np.float32)
  param = torch.tensor(np.concatenate([angles, trans], -1))
  R, T = camera_matrix.calc_extrinxic_camera_matrix(param, torch.tensor([0.0, 0.0, 1000.0]),
                                                    False)
  A = torch.Tensor([[9.06 * 224 / 2, 0, (224 - 1) / 2.0, 0, 9.06 * 224 / 2, (224 - 1) / 2.0,
                     0, 0, 1]]).view(-1, 3, 3)
  proj = geometry.perspective_projection(A, R, T, torch.tensor(verts).transpose(1, 2))
  px, depth = camera.model_to_image(verts, angles, trans, camera.Intrinsics.reference(224))
  rows = [("camera rotation F·Rx·Ry·Rz", *_max_diff(camera.camera_rotation(angles), R.numpy())),
          # focus-jax puts pixel centres at +0.5 (principal point W/2 = reference (W-1)/2 + 0.5)
          ("projection [px] (ours − 0.5)", *_max_diff(np.asarray(px) - 0.5,
                                                      proj[:, :2].transpose(1, 2).numpy())),
          ("depth [mm]", *_max_diff(depth, proj[:, 2].numpy()))]
  normals = rng.normal(0, 1, (B, n, 3))
  normals = (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32)
  basis = ref_shading.calc_sh_basis(torch.tensor(normals).transpose(1, 2))   # [B, 27, 3, n]
  sh27 = rng.normal(0, 1, (B, 27)).astype(np.float32)
  sh27[:, [0, 9, 18]] += 0.7 * 2 * math.pi
  ref_light = torch.sum(basis * torch.tensor(sh27)[:, :, None, None], dim=1)   # [B, 3, n]
  # The reference's basis carries the Condon–Shortley phase: odd-m functions flip sign.
  cs = np.array([1, -1, 1, -1, 1, -1, 1, -1, 1], np.float32)
  ours_basis = np.asarray(shading.sh_basis(normals)) * cs
  light = np.asarray(shading.light_from_vector(sh27)) * cs[:, None]
  ours_light = shading.irradiance(normals, light)
  rows += [("SH basis (9 functions, phase-converted)",
            *_max_diff(ours_basis, basis[:, :9, 0].transpose(1, 2).numpy())),
           ("SH irradiance [B, n, 3]", *_max_diff(ours_light,
                                                  ref_light.transpose(1, 2).numpy()))]
  return rows


def _torch_rates(torch, ns_src, opt_names, steps_to_read, ct0=0):
  """lr of each optimiser in ``opt_names`` at the global steps ``steps_to_read``, after
  executing the reference's optimiser/scheduler statements and stepping the schedulers
  once per step as its loop does."""
  ns = dict(torch=torch, optim=torch.optim, math=math, ct=ct0)
  dummy = torch.nn.Linear(1, 1)
  ns.update(enc_net=dummy, unet_for_mask=dummy, unet_mask=dummy)
  for s in ns_src:
    exec(s, ns)  # pylint: disable=exec-used
  scheds = [ns[n] for n in opt_names]
  out, want = {n: [] for n in opt_names}, sorted(steps_to_read)
  k = 0
  for step in range(ct0, want[-1] + 1):
    while k < len(want) and want[k] == step:
      for n, s in zip(opt_names, scheds):
        out[n].append(s.optimizer.param_groups[0]["lr"])
      k += 1
    for s in scheds:
      s.step()
  return out


def compare_schedules(checkout, torch):
  import optax  # pylint: disable=import-outside-toplevel
  from focus_jax.train import config as config_lib, schedules  # pylint: disable=import-outside-toplevel
  import warnings  # pylint: disable=import-outside-toplevel
  warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
  paper = config_lib.paper()
  rows = []
  s1 = ["begin_learning_rate = 0.1"] + _assignments(
      checkout, "Step1_Pretrain_MoFA.py",
      ["decay_step_size", "decay_rate_gamma", "learning_rate_begin", "optimizer", "scheduler"])
  # (its first learning_rate_begin is the resume branch's: at ct = 0 it is the plain 0.1)
  got = _torch_rates(torch, s1, ["scheduler"], LR_STEPS)["scheduler"]
  sched = optax.exponential_decay(paper.encoder_lr, paper.lr_decay_steps, paper.lr_decay,
                                  staircase=True)
  rows.append(("S1 encoder lr at steps " + _steps(), *_max_diff([sched(s) for s in LR_STEPS],
                                                                got)))
  s3 = _assignments(checkout, "Step3_Pretrain_Unet.py", ["optimizer", "scheduler"])
  got = _torch_rates(torch, s3, ["scheduler"], LR_STEPS)["scheduler"]
  sched = optax.exponential_decay(paper.unet_lr, paper.lr_decay_steps, paper.lr_decay,
                                  staircase=True)
  rows.append(("S3 UNet lr", *_max_diff([sched(s) for s in LR_STEPS], got)))
  s4 = ["begin_learning_rate = 0.1"] + _assignments(
      checkout, "Step4_UNet_MoFA_EM.py",
      ["decay_step_size", "decay_rate_gamma", "decay_rate_unet", "learning_rate_begin",
       "mofa_lr_begin", "unet_lr_begin", "optimizer_mofa", "optimizer_unet",
       "scheduler_mofa", "scheduler_unet"])
  for ct0, label in ((0, "S4 EM"), (65000, "S4 adaptation resumed at ct 65000")):
    steps_ = [ct0 + s for s in LR_STEPS if ct0 + s <= 300000 + ct0]
    got = _torch_rates(torch, s4, ["scheduler_mofa", "scheduler_unet"], steps_, ct0=ct0)
    cfg = paper.replace(stage="em" if ct0 == 0 else "adapt", em_step_offset=ct0)
    for net, name in (("encoder", "scheduler_mofa"), ("unet", "scheduler_unet")):
      ours = [float(schedules.em_rate(cfg, net, s - ct0)) for s in steps_]
      rows.append((f"{label} {net} lr", *_max_diff(ours, got[name])))
  return rows


def _steps():
  return "0 … 300000"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("checkout", help="local checkout of unibas-gravis/Occlusion-Robust-MoFA")
  p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                               "reference_parity.md"))
  args = p.parse_args(argv)
  missing = [f for f in NEEDED if not os.path.isfile(os.path.join(args.checkout, f))]
  if missing:
    print(f"SKIPPED: {args.checkout} is not a checkout of the reference "
          f"(missing {', '.join(missing[:3])})")
    return 0
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("SKIPPED: torch is not installed (pip install -e '.[test]')")
    return 0
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  sections = [("Losses and landmark weights", compare_losses(args.checkout, torch, rng)),
              ("Camera and SH shading", compare_camera_and_shading(args.checkout, torch, rng)),
              ("Learning-rate schedules (paper config)", compare_schedules(args.checkout,
                                                                           torch))]
  lines = ["# Parity with the FOCUS reference's code", "",
           "`python benchmarks/reference_parity.py REF_CHECKOUT` (torch "
           f"{torch.__version__}, float32, CPU). Largest absolute difference between the "
           "reference's own functions / statements and focus-jax on the same random "
           "inputs (batch 3, 32² images for the losses; 200 vertices for camera and "
           "shading; the schedules at global steps "
           f"{', '.join(map(str, LR_STEPS))}). See the script's docstring for what runs "
           "from the reference and what could not.", ""]
  for title, rows in sections:
    lines += [f"## {title}", "", "| Element | max abs diff | max abs value |", "|---|---|---|"]
    lines += [f"| {k} | {d:.3g} | {v:.4g} |" for k, d, v in rows]
    lines.append("")
  text = "\n".join(lines)
  print(text)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
