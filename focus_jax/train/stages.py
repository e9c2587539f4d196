"""The non-training stages and the chain: pseudo masks, misfit prior, adaptation
export, evaluation, and :func:`run_pipeline` (all stages for one config).

Run directories of a pipeline under ``ROOT``::

    ROOT/prior/misfit_prior.npz     misfit prior (synthetic fits; optional)
    ROOT/pretrain/                  stage 1: encoder with the robust loss
    ROOT/pseudo/                    stage 2: pseudo masks (pseudo_masks_p<process>.npz)
    ROOT/unet/                      stage 3: UNet on the pseudo masks
    ROOT/em/                        stage 4: joint EM
    ROOT/adapt/                     optional test-time adaptation on a target set
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import numpy as np

from focus_jax import images
from focus_jax.autoencoder import checkpoints as ckpt_io
from focus_jax.autoencoder import networks as networks_lib
from focus_jax.train import data as data_lib
from focus_jax.train import logs as logs_lib
from focus_jax.train import trainer
from focus_jax.train.config import TrainConfig


def _networks(config: TrainConfig, run_dir: str):
  enc, unet, other, step = ckpt_io.load_networks(run_dir)
  trainer._check_compatible(config, other, run_dir)  # pylint: disable=protected-access
  return enc, unet, other, step


def load_prior(path: Optional[str], model):
  if not path:
    return None
  from focus_jax import prior as prior_lib  # pylint: disable=import-outside-toplevel
  return prior_lib.load(path, model)


def make_pseudo_masks(config: TrainConfig, out_dir: str, data_dir: str, init_from: str,
                      split: str = "train", prior_path: Optional[str] = None) -> dict:
  """Stage 2: robust-likelihood inlier maps of the pre-trained encoder, per example.

  Writes ``out_dir/pseudo_masks_p<process>.npz`` (this process's share) and a tile.
  Returns summary numbers (examples, mean inlier fraction of the face).
  """
  enc, unet, _, step = _networks(config, init_from)
  model = networks_lib.load_model(config)
  prior = load_prior(prior_path, model)
  source = data_lib.AlignedSource(data_lib.open_data(data_dir, split), config.image_size)
  preds = trainer.predict_dataset(config, enc, unet, source, with_unet=False, model=model,
                                  prior=prior, keys=("render", "face", "inlier"))
  path = data_lib.save_pseudo(out_dir, preds["index"], preds["inlier"], jax.process_index())
  face = preds["face"] > 0.5
  frac = float(np.sum(preds["inlier"] * face) / max(np.sum(face), 1))
  summary = dict(examples=int(len(preds["index"])), inlier_fraction_of_face=frac,
                 encoder_step=int(step), path=path, prior=prior_path or "")
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, "tile.png"), "wb") as f:
      f.write(images.encode_png(logs_lib.tile(preds["image"], preds["render"], preds["face"],
                                              preds["inlier"], max_rows=6)))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  return summary


def build_prior(config: TrainConfig, out_path: str, num_faces: int = 64, size: int = 0,
                seed: int = 1000) -> dict:
  """Misfit prior of the configured model from ``num_faces`` synthetic fits
  (:func:`focus_jax.fitting.build_prior`); writes ``out_path`` (.npz)."""
  from focus_jax import fitting, prior as prior_lib  # pylint: disable=import-outside-toplevel
  model = networks_lib.load_model(config)
  p = fitting.build_prior(model, num_faces=num_faces, size=size or config.image_size, seed=seed)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  if jax.process_index() == 0:
    prior_lib.save(out_path, p)
  return dict(path=out_path, vertices=int(p.sigma_scale.size),
              mean_scale=float(np.mean(p.sigma_scale)),
              max_scale=float(np.max(p.sigma_scale)),
              frac_above_1_5=float(np.mean(p.sigma_scale > 1.5)))


def export_predictions(config: TrainConfig, run_dir: str, data_dir: str, out_dir: str,
                       split: str = "train", max_tile: int = 8) -> dict:
  """Fits and masks of a trained run on a dataset: ``predictions.npz`` (names,
  coefficients, masks) and ``tile.png`` (rows: input | fit overlay | mask | masked input)."""
  enc, unet, _, step = _networks(config, run_dir)
  source = data_lib.AlignedSource(data_lib.open_data(data_dir, split), config.image_size)
  preds = trainer.predict_dataset(config, enc, unet, source, with_unet=True,
                                  keys=("render", "face", "mask", "landmarks"))
  os.makedirs(out_dir, exist_ok=True)
  names = np.asarray([source.ds[int(i)].name for i in preds["index"]])
  np.savez_compressed(os.path.join(out_dir, "predictions.npz"), names=names,
                      mask=(preds["mask"] > 0.5).astype(np.uint8), face=preds["face"] > 0.5,
                      landmarks=preds["landmarks"])
  tile_path = os.path.join(out_dir, "tile.png")
  with open(tile_path, "wb") as f:
    f.write(images.encode_png(logs_lib.tile(preds["image"], preds["render"], preds["face"],
                                            preds["mask"], max_rows=max_tile)))
  return dict(examples=int(len(names)), tile=tile_path, step=int(step))


def evaluate(config: TrainConfig, run_dir: str, data_dir: str, split: str = "test",
             with_unet: bool = True, max_examples: Optional[int] = None) -> dict:
  """Mask F1 and 3D error of a run on a synthetic dataset (``params.npz`` present).

  Mask scores (:func:`focus_jax.eval.mask_metrics.mask_scores`) compare the predicted
  inlier mask (UNet, or the robust-likelihood inliers with ``with_unet=False``) with
  the ground-truth visible skin inside the rendered face region. 3D error: per image,
  the median vertex distance (mm) between the predicted and the true mesh after a
  similarity alignment (same topology); reported as the median over images
  (``median_3d_mm``) and per image (``per_image_3d_mm``, in dataset order; empty
  without ground-truth meshes), so runs can be compared image by image.
  """
  from focus_jax.eval import mask_metrics  # pylint: disable=import-outside-toplevel
  from focus_jax.eval import mesh_metrics  # pylint: disable=import-outside-toplevel
  enc, unet, _, _ = _networks(config, run_dir)
  source = data_lib.AlignedSource(data_lib.open_data(data_dir, split), config.image_size)
  n = len(source) if max_examples is None else min(len(source), max_examples)
  preds = trainer.predict_dataset(config, enc, unet, source, with_unet=with_unet,
                                  indices=list(range(n)),
                                  keys=("face", "mask", "vertices"))
  truth = [source.load(i)["mask"] > 0.5 for i in preds["index"]]
  region = preds["face"] > 0.5
  scores = mask_metrics.mask_scores(preds["mask"] > 0.5, np.stack(truth), region)
  params_path = os.path.join(data_dir, "params.npz")
  err, errors = float("nan"), []
  if os.path.exists(params_path):
    with np.load(params_path) as z:
      row = {str(nm): i for i, nm in enumerate(z["names"])}
      gt = z["vertices"] if "vertices" in z else None
    if gt is not None:
      for i, v in zip(preds["index"], preds["vertices"]):
        g = gt[row[source.ds[int(i)].name]]
        if g.shape != v.shape:
          raise ValueError(f"{params_path}: ground-truth meshes have {g.shape[0]} vertices, "
                           f"the model {v.shape[0]}: evaluate with the model the data was "
                           "made with")
        errors.append(mesh_metrics.aligned_median_error(v, g))
      err = float(np.median(errors))
  return dict(f1=scores["f1"], precision=scores["precision"], recall=scores["recall"],
              accuracy=scores["accuracy"], median_3d_mm=err, per_image_3d_mm=errors,
              examples=int(n))


def run_pipeline(config: TrainConfig, root: str, data_dir: str, *,
                 steps: Optional[dict] = None, target_dir: Optional[str] = None,
                 prior_faces: int = 0, split: str = "train") -> dict:
  """Chains every stage for one config: [prior] → pretrain → pseudo → unet → em →
  [adapt on ``target_dir``]. ``steps``: {stage: num_steps}; a stage missing there (or
  None) runs the config's ``<stage>_num_steps`` (``num_steps`` is not used). Each stage
  resumes if its run directory already has checkpoints. Returns {stage: summary}."""
  steps = {s: (steps or {}).get(s) or getattr(config, f"{s}_num_steps")
           for s in ("pretrain", "unet", "em", "adapt")}
  out = {}
  d = lambda name: os.path.join(root, name)
  prior_path = None
  if prior_faces > 0:
    prior_path = os.path.join(d("prior"), "misfit_prior.npz")
    if not os.path.exists(prior_path):
      out["prior"] = build_prior(config, prior_path, num_faces=prior_faces)
  run = lambda stage, **kw: trainer.train(config.replace(stage=stage, num_steps=steps[stage]),
                                          d(stage), data_dir, split=split, **kw)
  out["pretrain"] = run("pretrain").step
  out["pseudo"] = make_pseudo_masks(config.replace(stage="pretrain"), d("pseudo"), data_dir,
                                    d("pretrain"), split=split, prior_path=prior_path)
  out["unet"] = run("unet", init_from=d("pretrain"), pseudo_dir=d("pseudo")).step
  em_config = config.replace(unet_prior=prior_path) if prior_path else config
  out["em"] = trainer.train(em_config.replace(stage="em", num_steps=steps["em"]), d("em"),
                            data_dir, split=split, init_from=d("unet")).step
  if target_dir:
    out["adapt"] = trainer.train(em_config.replace(stage="adapt", num_steps=steps["adapt"]),
                                 d("adapt"), target_dir, split=split, init_from=d("em")).step
    out["adapt_export"] = export_predictions(config, d("adapt"), target_dir,
                                             os.path.join(d("adapt"), "export"), split=split)
  return out
