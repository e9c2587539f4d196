"""Scores predictions (``focus-jax fit`` outputs) against a dataset's ground truth.

Ground truth (``DATA_DIR``, the layout of :func:`focus_jax.data.synthetic.write_dataset`
and of reference-layout datasets with masks):

* images in ``DATA_DIR/images/`` (or ``DATA_DIR`` itself);
* ``<stem>_visible_skin_mask.png``: 255 = visible face skin (the inlier class);
* ``<stem>_face_mask.png`` (optional): the face region the mask metrics are
  computed in; without it they cover the whole image;
* ``DATA_DIR/params.npz`` (optional, synthetic sets): ``names``, ``vertices``
  [N, V, 3] (mm) and ``triangles`` — the ground-truth meshes ("scans").

Predictions (one folder per method, the files ``focus-jax fit`` writes): for the
image ``images/000123.png``, ``000123_mask.png`` (255 = inlier) and ``000123.obj``
(the mesh; any similarity frame) — looked up as ``PRED/000123*``, then
``PRED/images/000123*``.

Metrics: per image, :func:`~focus_jax.eval.mask_metrics.mask_scores` inside the
face region and the NoW-style scan-to-mesh error
(:func:`~focus_jax.eval.mesh_metrics.now_error`; the initial similarity comes from
the morphable model's vertices of NoW's seven landmarks, so predicted and
ground-truth meshes must share the model's topology). Summaries: mask scores averaged over images (and
pooled), 3D median / mean / std of all scan points pooled, the median of the
per-image medians, and the cumulative-error curve.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

from focus_jax.errors import DataError
from focus_jax.eval import mask_metrics, mesh_metrics

MASK_KEYS = ("accuracy", "precision", "recall", "f1", "occluder_iou")
MESH_KEYS = ("median", "mean", "std")


@dataclasses.dataclass
class Sample:
  """Ground truth of one image (paths; arrays are read when scored).

  Attributes:
    name: image path relative to the image folder ('/'-separated).
    image_path: absolute path of the image.
    mask_path, face_mask_path: ground-truth masks, or None.
    vertices: [V, 3] ground-truth mesh (mm), or None.
    info: extra per-sample facts (e.g. occluder coverage of synthetic sets).
  """
  name: str
  image_path: str
  mask_path: Optional[str] = None
  face_mask_path: Optional[str] = None
  vertices: Optional[np.ndarray] = None
  info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class GroundTruth:
  """A dataset's samples and the shared mesh topology."""
  root: str
  image_dir: str
  samples: list
  triangles: Optional[np.ndarray] = None
  model_name: str = ""


def _stem(name: str) -> str:
  return os.path.splitext(name)[0]


def load_ground_truth(data_dir: str) -> GroundTruth:
  """Finds the ground truth under ``data_dir`` (see the module docstring).

  Raises:
    DataError: missing folder, unreadable params.npz, or nothing to evaluate.
  """
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  from focus_jax.data import dataset  # pylint: disable=import-outside-toplevel
  root = os.path.abspath(os.fspath(data_dir))
  if not os.path.isdir(root):
    raise DataError(f"dataset folder not found: {root}")
  image_dir = os.path.join(root, "images")
  if not os.path.isdir(image_dir):
    image_dir = root
  meshes, triangles, infos, model_name = {}, None, {}, ""
  params_path = os.path.join(root, "params.npz")
  if os.path.isfile(params_path):
    try:
      with np.load(params_path, allow_pickle=False) as p:
        names = [str(n) for n in p["names"]] if "names" in p else []
        if "vertices" in p and "triangles" in p:
          vertices = p["vertices"]
          triangles = np.asarray(p["triangles"], np.int64)
          meshes = {n: vertices[i] for i, n in enumerate(names)}
        if "coverage" in p:
          infos = {n: {"coverage": float(c)} for n, c in zip(names, p["coverage"])}
        model_name = str(p["model_name"]) if "model_name" in p else ""
    except (OSError, ValueError, KeyError) as e:
      raise DataError(f"{params_path}: cannot read the ground-truth parameters ({e})") from e
  samples = []
  for name in images.list_images(image_dir):
    path = os.path.join(image_dir, name)
    mask = dataset.mask_path_for(path)
    face = _stem(path) + "_face_mask.png"
    sample = Sample(name=name, image_path=path,
                    mask_path=mask if os.path.isfile(mask) else None,
                    face_mask_path=face if os.path.isfile(face) else None,
                    vertices=meshes.get(name), info=infos.get(name, {}))
    if sample.mask_path or sample.vertices is not None:
      samples.append(sample)
  if not samples:
    raise DataError(f"{root}: no ground truth found (no *_visible_skin_mask.png next to the "
                    "images and no meshes in params.npz)")
  return GroundTruth(root, image_dir, samples, triangles, model_name)


def prediction_files(pred_dir: str, name: str) -> dict:
  """{'mask': path or None, 'mesh': path or None} of image ``name`` in ``pred_dir``."""
  stem = _stem(name)
  out = {"mask": None, "mesh": None}
  for base in (stem, os.path.basename(stem), "images/" + stem):
    for kind, suffix in (("mask", "_mask.png"), ("mesh", ".obj")):
      path = os.path.join(pred_dir, base + suffix)
      if out[kind] is None and os.path.isfile(path):
        out[kind] = path
  return out


def _read_mask(path: str, what: str) -> np.ndarray:
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  try:
    return images.read_mask(path) > 0.5
  except DataError as e:
    raise DataError(f"{path}: cannot read the {what} ({e})") from e


def score_sample(sample: Sample, files: dict, triangles, landmark_index) -> dict:
  """Scores one image's prediction: mask metrics and/or 3D error (those both sides have).

  Returns:
    dict: name, the mask keys (when a ground-truth and a predicted mask exist),
    ``distances`` [N] and the mesh keys (when both meshes exist), info.

  Raises:
    DataError: unreadable files, or sizes / vertex counts that do not match.
  """
  row = {"name": sample.name, **sample.info}
  if sample.mask_path and files["mask"]:
    truth = _read_mask(sample.mask_path, "ground-truth mask")
    pred = _read_mask(files["mask"], "predicted mask")
    if pred.shape != truth.shape:
      raise DataError(f"{files['mask']}: predicted mask is {pred.shape[1]}x{pred.shape[0]} "
                      f"but the ground truth {sample.mask_path} is "
                      f"{truth.shape[1]}x{truth.shape[0]}")
    region = (_read_mask(sample.face_mask_path, "face mask") if sample.face_mask_path
              else np.ones_like(truth))
    scores = mask_metrics.mask_scores(pred, truth, region)
    row.update({k: scores[k] for k in MASK_KEYS})
    row["counts"] = mask_metrics.confusion_counts(pred, truth, region)
  if sample.vertices is not None and files["mesh"]:
    from focus_jax import obj_io  # pylint: disable=import-outside-toplevel
    verts, _ = obj_io.read_obj(files["mesh"])
    truth = np.asarray(sample.vertices, np.float64)
    if len(verts) != len(truth):
      raise DataError(f"{files['mesh']}: {len(verts)} vertices but the ground-truth mesh has "
                      f"{len(truth)}; the 3D metric aligns meshes of the same morphable "
                      "model (pass its file with --model)")
    lm = np.asarray(landmark_index)
    err = mesh_metrics.now_error(verts, triangles, truth, verts[lm], truth[lm])
    row.update({k: err[k] for k in MESH_KEYS})
    row["distances"] = err["distances"]
  return row


def summarize(rows: Sequence[dict], thresholds=None) -> dict:
  """Aggregates per-image rows of one method.

  Returns:
    dict: images (scored), mask (mean of per-image scores, and ``pooled``: the
    scores of all pixels together), mesh (pooled median/mean/std/count and
    ``median_of_medians``) and curve (thresholds, fractions), each only when
    present.
  """
  out = {"images": len(rows)}
  masked = [r for r in rows if "f1" in r]
  if masked:
    out["mask"] = {k: float(np.mean([r[k] for r in masked])) for k in MASK_KEYS}
    out["mask"]["images"] = len(masked)
    total = {k: sum(r["counts"][k] for r in masked) for k in ("tp", "fp", "fn", "tn")}
    out["mask"]["pooled"] = mask_metrics.scores_from_counts(**total)
  meshed = [r for r in rows if "distances" in r]
  if meshed:
    pooled = np.concatenate([r["distances"] for r in meshed])
    out["mesh"] = mesh_metrics.summary(pooled)
    out["mesh"]["median_of_medians"] = float(np.median([r["median"] for r in meshed]))
    out["mesh"]["images"] = len(meshed)
    t, f = mesh_metrics.cumulative_error(pooled, thresholds)
    out["curve"] = {"thresholds": t.tolist(), "fractions": f.tolist()}
  return out


def alignment_vertices(model, landmarks: str = "now") -> np.ndarray:
  """Vertex indices whose positions start the 3D alignment.

  ``'now'``: the seven NoW points (eye corners, nose tip, mouth corners;
  :data:`focus_jax.morphable.landmark_map.IBUG_OF_NOW`) as the model defines them; ``'all'``: every
  landmark vertex of the model.
  """
  idx = np.asarray(model.landmarks)
  if landmarks == "now":
    from focus_jax.morphable.landmark_map import (  # pylint: disable=import-outside-toplevel
        IBUG_OF_NOW)
    idx = idx[np.asarray(IBUG_OF_NOW) - 1]
  elif landmarks != "all":
    raise ValueError(f"alignment landmarks must be 'now' or 'all', got {landmarks!r}")
  idx = idx[idx >= 0]
  if len(idx) < 3:
    raise DataError(f"the model {model.name!r} defines only {len(idx)} of the {landmarks!r} "
                    "alignment landmarks (need 3)")
  return idx


def evaluate(data_dir: str, predictions: Sequence[str], *, labels: Optional[Sequence[str]] = None,
             model=None, max_error: Optional[float] = None, align_landmarks: str = "now",
             progress: bool = True) -> dict:
  """Scores every prediction folder against the dataset.

  Args:
    data_dir: the dataset (see the module docstring).
    predictions: one folder per method (``focus-jax fit --out`` folders).
    labels: a name per method (default: the folder names).
    model: the morphable model whose landmark vertices start the 3D alignment
      (needed only when meshes are scored; default the built-in model).
    max_error: end of the cumulative-error curve (mm); default from the data.
    align_landmarks: ``'now'`` or ``'all'`` (see :func:`alignment_vertices`).

  Returns:
    dict: dataset, region, methods: [{label, folder, missing, summary, rows}],
    with the per-image rows JSON-ready (no distance arrays).

  Raises:
    DataError: a missing folder, unreadable files, or a method with no prediction
      for any ground-truth image.
  """
  gt = load_ground_truth(data_dir)
  labels = list(labels) if labels else [os.path.basename(os.path.normpath(p)) for p in predictions]
  if len(labels) != len(predictions):
    raise ValueError(f"evaluate: {len(labels)} labels for {len(predictions)} prediction folders")
  plans = []
  for folder in predictions:
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
      raise DataError(f"prediction folder not found: {folder}")
    files = [prediction_files(folder, s.name) for s in gt.samples]
    usable = [(s, f) for s, f in zip(gt.samples, files)
              if (s.mask_path and f["mask"]) or (s.vertices is not None and f["mesh"])]
    if not usable:
      raise DataError(f"{folder}: no prediction matches the {len(gt.samples)} ground-truth "
                      f"images of {gt.root} (expected files like "
                      f"{_stem(gt.samples[0].name)}_mask.png or {_stem(gt.samples[0].name)}.obj)")
    plans.append((folder, usable, len(gt.samples) - len(usable)))
  landmark_index = None
  if any(s.vertices is not None and f["mesh"] for _, usable, _ in plans for s, f in usable):
    if model is None:
      from focus_jax import morphable  # pylint: disable=import-outside-toplevel
      model = morphable.builtin()
    landmark_index = alignment_vertices(model, align_landmarks)
    num_v = len(next(s.vertices for s in gt.samples if s.vertices is not None))
    if model.num_vertices != num_v:
      raise DataError(f"{gt.root}/params.npz: the ground-truth meshes have {num_v} vertices "
                      f"but the model {model.name!r} has {model.num_vertices}; pass the "
                      f"dataset's model ({gt.model_name or 'see params.npz'}) with --model")
  methods = []
  for label, (folder, usable, missing) in zip(labels, plans):
    rows = []
    items = usable
    if progress:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      items = tqdm(usable, desc=f"eval {label}", unit="img")
    for sample, files in items:
      rows.append(score_sample(sample, files, gt.triangles, landmark_index))
    methods.append(dict(label=label, folder=folder, missing=missing, rows=rows))
  # One threshold grid for every method so that the curves compare.
  meshed = [r["distances"] for m in methods for r in m["rows"] if "distances" in r]
  thresholds = None
  if meshed:
    top = max_error or mesh_metrics.nice_ceil(np.percentile(np.concatenate(meshed), 99))
    thresholds = np.linspace(0.0, top, 101)
  for m in methods:
    m["summary"] = summarize(m["rows"], thresholds)
    for r in m["rows"]:
      r.pop("distances", None)
      r.pop("counts", None)
  has_face = any(s.face_mask_path for s in gt.samples)
  return dict(dataset=gt.root, images=len(gt.samples),
              region="ground-truth face mask" if has_face else "whole image",
              align_landmarks=align_landmarks, methods=methods)


def _fmt(v, digits=3):
  return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
  """The report as markdown: a summary table (one row per method) and per-image rows."""
  lines = [f"# Evaluation of {len(report['methods'])} method(s) on {report['dataset']}", "",
           f"{report['images']} ground-truth images. Mask metrics: inlier (visible face) class, "
           f"inside the {report['region']}, averaged over images. 3D: NoW-style scan-to-mesh "
           "error (similarity alignment from the "
           f"{'7 NoW' if report.get('align_landmarks') == 'now' else 'model'} landmark "
           "vertices, ICP refinement, exact point-to-triangle distances), all scan points "
           "pooled, mm.", "",
           "| method | images | accuracy | precision | recall | F1 | occluder IoU | "
           "3D median | 3D mean | 3D std | missing |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for m in report["methods"]:
    s = m["summary"]
    mk, me = s.get("mask", {}), s.get("mesh", {})
    cells = [m["label"], str(s["images"])] + [_fmt(mk.get(k)) for k in MASK_KEYS]
    cells += [_fmt(me.get(k), 2) for k in MESH_KEYS] + [str(m["missing"])]
    lines.append("| " + " | ".join(cells) + " |")
  for m in report["methods"]:
    lines += ["", f"## {m['label']} ({m['folder']})", "",
              "| image | " + " | ".join(MASK_KEYS) + " | 3D median | 3D mean |",
              "| --- |" + " --- |" * (len(MASK_KEYS) + 2)]
    for r in m["rows"]:
      cells = [r["name"]] + [_fmt(r.get(k)) for k in MASK_KEYS]
      cells += [_fmt(r.get("median"), 2), _fmt(r.get("mean"), 2)]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str) -> dict:
  """Writes ``metrics.md``, ``metrics.json`` and (with meshes) ``cumulative_error.png``.

  Returns:
    kind -> path written.
  """
  from focus_jax.eval import plots  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  paths = {"markdown": os.path.join(out_dir, "metrics.md"),
           "json": os.path.join(out_dir, "metrics.json")}
  curves = {m["label"]: (m["summary"]["curve"]["thresholds"], m["summary"]["curve"]["fractions"])
            for m in report["methods"] if "curve" in m["summary"]}
  if curves:
    paths["curve"] = os.path.join(out_dir, "cumulative_error.png")
    plots.cumulative_error_plot(paths["curve"], curves)
  for key, text in (("markdown", markdown(report)),
                    ("json", json.dumps(report, indent=1, default=float))):
    tmp = paths[key] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, paths[key])
  return paths
