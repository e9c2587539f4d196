"""``focus-jax demo``: the main job on the built-in default, no downloads.

1. Pictures of the morphable model: mean face with landmarks, a sweep of head
   poses, random faces (:func:`render_gallery`).
2. Synthetic occluded faces of the model (:mod:`focus_jax.data.synthetic`, with
   ground-truth masks and meshes), fitted together in one batch by the robust
   per-image fit (:func:`focus_jax.fitting.fit`), and — when dlib is installed —
   scikit-image's astronaut photo with a realistic pasted surgical mask of known
   mask (:mod:`focus_jax.data.real_occluders`), fitted as ``focus-jax fit`` fits a
   photo (packaged misfit prior and real-face segmenter); scored (mask F1 /
   occluder IoU inside the true face — for the photo inside its landmark hull, as
   benchmarks/real.py scores —, NoW-style 3D error) and summarised in
   ``summary.png`` (rows: input | fit | mask | error map), ``metrics.json`` and
   ``index.html`` (:func:`fit_demo`).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import time
from typing import Optional, Sequence

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


def render_gallery(out_dir: str, model: morphable.MorphableModel, size: int = 224,
                   num_samples: int = 8, seed: int = 0) -> dict:
  """Writes ``mean_face.png``, ``poses.png``, ``samples.png``, ``overview.png`` to ``out_dir``.

  All faces (mean, pose sweep, random samples) are rendered in one batch, so the
  renderer compiles once.

  Returns:
    A dict with the written paths and the render time per image (seconds, after
    compilation).
  """
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


# ----------------------------------------------------------------------------- fits

ERROR_VMAX = 5.0     # mm at the red end of the error maps


@dataclasses.dataclass
class Case:
  """One fitted image of the demo (S = fit size).

  Attributes:
    name: what the summary calls it.
    image: [S, S, 3] the fitted input; landmarks: [68, 2] the landmarks it used.
    truth_inlier: [S, S] bool ground-truth visible face (None: unknown).
    truth_face: [S, S] bool ground-truth face region (None: use the fit's).
    occluder: [S, S] bool the pasted occluder (known for every case).
    vertices, vertices_camera: [V, 3] ground-truth mesh (model, camera space) or None.
    note: one line about where the case comes from.
    real: a real photo (fitted with the photo settings, not in the synthetic mean).
  """
  name: str
  image: np.ndarray
  landmarks: np.ndarray
  occluder: np.ndarray
  truth_inlier: Optional[np.ndarray] = None
  truth_face: Optional[np.ndarray] = None
  vertices: Optional[np.ndarray] = None
  vertices_camera: Optional[np.ndarray] = None
  note: str = ""
  real: bool = False


def synthetic_cases(model, num: int, size: int, seed: int) -> list:
  """``num`` synthetic occluded faces of ``model`` (ground-truth landmarks)."""
  from focus_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  gen = synthetic.SyntheticFaces(model, synthetic.SyntheticConfig(size=size), seed=seed,
                                 batch_size=max(num, 1))
  cases = []
  for s in gen.generate(range(num)):
    occ = ", ".join(s.info["occluders"]) or "none"
    cases.append(Case(
        name=f"synthetic {s.info['index']}", image=s.image, landmarks=s.landmarks,
        occluder=s.occluder_mask & s.face_mask, truth_inlier=s.visible_mask,
        truth_face=s.face_mask, vertices=s.vertices, vertices_camera=s.vertices_camera,
        note=f"occluders: {occ} ({100 * s.info['coverage']:.0f}% of the face)"))
  return cases


def photo_case(size: int, seed: int):
  """scikit-image's astronaut with a pasted surgical mask, aligned to a ``size``
  crop by dlib's landmarks (detected on the occluded photo); (case, None) or
  (None, the reason it is skipped). Ground truth: the mask's pixels (alpha ≥ 0.5)
  inside the landmark hull of the photo before the occluder."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from focus_jax.data import detect  # pylint: disable=import-outside-toplevel
  if not detect.available():
    return None, "dlib or face-recognition-models is not installed (pip install focus-jax[detect])"
  if importlib.util.find_spec("skimage") is None:
    return None, "scikit-image is not installed (pip install scikit-image)"
  if importlib.util.find_spec("focus_jax.app.inference") is None:
    return None, "focus_jax.app.inference is not available"
  import skimage.data  # pylint: disable=import-outside-toplevel
  from focus_jax.app import inference  # pylint: disable=import-outside-toplevel
  from focus_jax.eval import mask_metrics  # pylint: disable=import-outside-toplevel
  if not all(hasattr(inference, f) for f in ("prepare", "find_landmarks", "default_detector")):
    return None, "focus_jax.app.inference lacks prepare/find_landmarks/default_detector"
  from focus_jax.data import real_occluders  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  photo = skimage.data.astronaut().astype(np.float32) / 255.0
  detector = inference.default_detector()
  try:
    clean_lm, _ = inference.find_landmarks(photo, detector, "astronaut")
  except DataError as e:
    return None, f"no face found in the astronaut photo ({e})"
  hull = mask_metrics.landmark_hull(clean_lm, photo.shape[:2])
  occluder = real_occluders.make_occluder("surgical_mask", np.random.default_rng([seed, 2023]),
                                          photo, clean_lm)
  occluded = real_occluders.composite(photo, occluder)
  occ = occluder.mask
  note = (f"occluder: {occluder.description} ({100 * occ[hull].mean():.0f}% of the landmark "
          "hull)")
  # dlib on the occluded photo; if it misses the face (or finds another "face"),
  # the landmarks of the photo before the occluder.
  lm, how = clean_lm, "dlib on the photo before the occluder (none found after)"
  try:
    found, method = inference.find_landmarks(occluded, detector, "astronaut")
    eyes = np.linalg.norm(clean_lm[36:42].mean(0) - clean_lm[42:48].mean(0))
    if np.nanmean(np.linalg.norm(found - clean_lm, axis=1)) < 0.25 * eyes:
      lm, how = found, f"dlib ({method}) on the occluded photo"
    else:
      how = "dlib on the photo before the occluder (after it, dlib found another face)"
  except DataError:
    pass
  prep = inference.prepare(occluded, landmarks=lm, size=size, name="astronaut",
                           landmark_source=how)
  note += f"; landmarks: {how}"
  occ_crop = prep.alignment.crop(occ.astype(np.float32), order=0) > 0.5
  hull_crop = prep.alignment.crop(hull.astype(np.float32), order=0) > 0.5
  return Case(name="astronaut (real photo)", image=prep.crop, landmarks=prep.crop_landmarks,
              occluder=occ_crop & hull_crop, truth_inlier=hull_crop & ~occ_crop,
              truth_face=hull_crop, note=note, real=True), None


def fit_photo(model, case: Case, config):
  """Fits a real photo as ``focus-jax fit`` does by default: the packaged misfit prior
  and real-face segmenter when the package has them (numpy FitResult, no batch axis)."""
  from focus_jax import fitting, prior as prior_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.nets import segmenter  # pylint: disable=import-outside-toplevel
  seg = segmenter.packaged() if config.robust else None
  face_prob = None if seg is None else segmenter.face_probability(seg, case.image[None])[0]
  result = fitting.fit(model, case.image, case.landmarks, config=config,
                       prior=prior_lib.packaged_for(model), inlier_prior=face_prob)
  return jax.tree_util.tree_map(np.asarray, jax.device_get(result))


def score_case(model, case: Case, fit) -> dict:
  """Mask scores and 3D error of one fitted case (host-side).

  ``fit``: the case's :class:`~focus_jax.fitting.FitResult` (numpy, no batch axis).
  With ground truth: the mask metrics inside the true face region and the NoW-style
  error of the true mesh against the fit. Without (the photo): the share of the
  pasted occluder inside the rendered face that the fit marks as outlier.
  """
  from focus_jax.eval import mask_metrics, mesh_metrics  # pylint: disable=import-outside-toplevel
  pred = np.asarray(fit.inlier) > 0.5
  rendered = np.asarray(fit.mask) > 0.5
  out = {"name": case.name, "note": case.note}
  if case.truth_inlier is not None:
    scores = mask_metrics.mask_scores(pred, case.truth_inlier, case.truth_face)
    out.update({k: scores[k] for k in ("accuracy", "precision", "recall", "f1",
                                       "occluder_iou")})
  occ = case.occluder & rendered
  if occ.any():
    out["occluder_recall"] = float(np.mean(~pred[occ]))
  if case.vertices is not None:
    lm = np.asarray(model.landmarks)
    lm = lm[lm >= 0]
    err = mesh_metrics.now_error(np.asarray(fit.vertices), np.asarray(model.triangles),
                                 case.vertices, np.asarray(fit.vertices)[lm], case.vertices[lm])
    out.update(error_median=err["median"], error_mean=err["mean"], error_std=err["std"])
    out["_distances"] = err["distances"]
  return out


def panels(model, case: Case, fit, scores: dict) -> list:
  """[input, fit over the input, mask picture, error map], each [S, S, 3] float."""
  from focus_jax.eval import mask_metrics, visualize  # pylint: disable=import-outside-toplevel
  from focus_jax.render import camera as cam  # pylint: disable=import-outside-toplevel
  image = np.asarray(case.image, np.float32)
  cover = np.clip(np.asarray(fit.mask, np.float32), 0, 1)[..., None]
  over = cover * np.asarray(fit.image, np.float32) + (1 - cover) * image
  pred = np.asarray(fit.inlier) > 0.5
  if case.truth_inlier is not None:
    mask_pic = mask_metrics.confusion_image(pred, case.truth_inlier, case.truth_face)
  else:
    # No face ground truth: white = inlier, black = outlier, red = pasted occluder
    # taken for face; grey outside the rendered face.
    mask_pic = np.repeat(pred[..., None], 3, axis=-1).astype(np.float32)
    mask_pic[pred & case.occluder] = (0.9, 0.1, 0.1)
    mask_pic[~(np.asarray(fit.mask) > 0.5)] = 0.5
  if "_distances" in scores:
    size = image.shape[0]
    intr = cam.Intrinsics.reference(size)
    vc = np.asarray(case.vertices_camera, np.float64)
    pts = np.stack([intr.focal * vc[:, 0] / vc[:, 2] + intr.cx,
                    intr.focal * vc[:, 1] / vc[:, 2] + intr.cy], -1)
    values = visualize.vertex_value_image(pts, vc[:, 2], scores["_distances"], case.truth_face,
                                          radius=max(size // 112, 1))
    err_pic = 0.35 * image + 0.65 * visualize.heat_map(values, ERROR_VMAX,
                                                       background=(0.0, 0.0, 0.0))
    err_pic = np.where(np.isfinite(values)[..., None], err_pic, 0.35 * image)
  else:
    # No 3D ground truth: the fitted landmarks (green) against the input ones (red).
    err_pic = images.draw_points(0.6 * image, case.landmarks, color=(0.95, 0.2, 0.15))
    valid = np.asarray(morphable.landmark_mask(model))
    err_pic = images.draw_points(err_pic, np.asarray(fit.landmarks), valid=valid)
  return [image, over, mask_pic, err_pic]


def _caption(scores: dict) -> str:
  parts = [scores["name"]]
  if "f1" in scores:
    parts.append(f"F1 {scores['f1']:.2f}  IoU {scores['occluder_iou']:.2f}")
  elif "occluder_recall" in scores:
    parts.append(f"occluder found {100 * scores['occluder_recall']:.0f}%")
  if "error_median" in scores:
    parts.append(f"3D median {scores['error_median']:.2f} mm")
  return "  |  ".join(parts)


def summary_picture(rows: list, captions: list, headers: Sequence[str]) -> np.ndarray:
  """Rows of equally sized panels with a header line and one caption per row, as uint8."""
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=import-outside-toplevel
  font = ImageFont.load_default()
  s = rows[0][0].shape[0]
  cell = max(s, 112)        # small fits are shown enlarged (nearest neighbour)
  pad, header, caption = 4, 18, 16
  cols = len(rows[0])
  width = cols * (cell + pad) + pad
  height = header + len(rows) * (cell + caption + pad) + pad
  canvas = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for c, text in enumerate(headers):
    draw.text((pad + c * (cell + pad) + cell / 2, 4), text, fill=(0, 0, 0), font=font, anchor="ma")
  for r, (row, text) in enumerate(zip(rows, captions)):
    y = header + r * (cell + caption + pad)
    for c, panel in enumerate(row):
      tile_ = Image.fromarray(images.to_uint8(panel))
      if cell != s:
        tile_ = tile_.resize((cell, cell), Image.NEAREST)
      canvas.paste(tile_, (pad + c * (cell + pad), y))
    draw.text((pad, y + cell + 2), text, fill=(0, 0, 0), font=font)
  return np.asarray(canvas, np.uint8)


HEADERS = ("input", "fit", "mask vs truth", f"3D error 0-{ERROR_VMAX:g} mm")


def _html(summary: dict, paths: dict, out_dir: str) -> str:
  rel = lambda p: os.path.relpath(p, out_dir)
  rows = []
  for c in summary["cases"]:
    cell = lambda k, fmt: fmt.format(c[k]) if k in c else "–"
    rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in (
        html.escape(c["name"]), cell("f1", "{:.3f}"), cell("occluder_iou", "{:.3f}"),
        cell("precision", "{:.3f}"), cell("recall", "{:.3f}"),
        cell("occluder_recall", "{:.3f}"), cell("error_median", "{:.2f}"),
        cell("error_mean", "{:.2f}"), html.escape(c.get("note", "")))) + "</tr>")
  mean = summary.get("synthetic_mean", {})
  mean_line = ", ".join(f"{k} {v:.3f}" for k, v in mean.items())
  pictures = "".join(f'<figure><img src="{rel(p)}"><figcaption>{html.escape(k)}</figcaption>'
                     f"</figure>" for k, p in paths.items() if k not in ("summary", "metrics",
                                                                           "index"))
  skipped = (f"<p>Real photo skipped: {html.escape(summary['photo_skipped'])}</p>"
             if summary.get("photo_skipped") else "")
  return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>focus-jax demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}
figure{{display:inline-block;margin:0.5em}}img{{max-width:100%}}</style></head><body>
<h1>focus-jax demo</h1>
<p>Model: {html.escape(summary['model'])}. Robust per-image fits (<code>fj.fit</code>,
{summary['fit']['rounds']} EM rounds x {summary['fit']['steps']} steps, no misfit prior) of
{summary['fit']['size']}x{summary['fit']['size']} images, all in one compiled batch
({summary['fit']['seconds']:.1f} s including compilation).</p>
<img src="{rel(paths['summary'])}" alt="summary">
<p>Columns: the input; the fitted face rendered over it; the inlier mask against the truth
(white: face kept, black: occluder rejected, red: occluder taken for face, blue: face
rejected; grey: outside the true face; for the photo, red marks the pasted occluder kept as
face); the NoW-style scan-to-mesh error of every ground-truth vertex (blue 0 mm to red
{ERROR_VMAX:g} mm; for the photo, the fitted landmarks in green over dlib's in red).</p>
{skipped}
<table><tr><th>image</th><th>F1</th><th>occluder IoU</th><th>precision</th><th>recall</th>
<th>occluder found</th><th>3D median (mm)</th><th>3D mean (mm)</th><th>notes</th></tr>
{''.join(rows)}</table>
<p>Synthetic mean: {mean_line}</p>
<h2>The built-in model</h2>{pictures}
<p>Metrics as JSON: <a href="{rel(paths['metrics'])}">{rel(paths['metrics'])}</a></p>
</body></html>
"""


def fit_demo(out_dir: str, model: morphable.MorphableModel, num_faces: int = 3,
             size: int = 128, seed: int = 0, photo: bool = True, config=None) -> dict:
  """Fits synthetic occluded faces (and the astronaut photo) in one batch and scores them.

  Returns:
    dict: summary (JSON-ready), rows of panels, captions.
  """
  from focus_jax import fitting  # pylint: disable=import-outside-toplevel
  config = fitting.FitConfig() if config is None else config
  cases = synthetic_cases(model, num_faces, size, seed) if num_faces else []
  fits = []
  t0 = time.perf_counter()
  if cases:
    result = jax.device_get(fitting.fit(model, np.stack([c.image for c in cases]),
                                        np.stack([c.landmarks for c in cases]), config=config))
    fits = [jax.tree_util.tree_map(lambda a, i=i: np.asarray(a[i]), result)
            for i in range(len(cases))]
  skipped = None
  if photo:
    case, skipped = photo_case(size, seed)
    if case is not None:
      cases.append(case)
      fits.append(fit_photo(model, case, config))
    else:
      print(f"astronaut photo skipped: {skipped}")
  if not cases:
    return {}
  seconds = time.perf_counter() - t0
  print(f"fitted {len(cases)} images of {size}x{size} in {seconds:.1f} s (synthetic faces in "
        "one batch, the photo on its own; including compilation)")
  rows, captions, scores = [], [], []
  for case, fit in zip(cases, fits):
    s = score_case(model, case, fit)
    rows.append(panels(model, case, fit, s))
    s.pop("_distances", None)
    captions.append(_caption(s))
    scores.append(s)
    print("  " + _caption(s))
  synthetic = [s for s, c in zip(scores, cases) if "f1" in s and not c.real]
  summary = dict(model=str(model.name), cases=scores, photo_skipped=skipped,
                 fit=dict(size=size, rounds=config.rounds, steps=config.steps,
                          robust=config.robust, seconds=seconds, batch=len(cases)))
  if synthetic:
    keys = ("f1", "occluder_iou", "precision", "recall", "error_median", "error_mean")
    summary["synthetic_mean"] = {k: float(np.mean([s[k] for s in synthetic])) for k in keys}
  return dict(summary=summary, rows=rows, captions=captions)


def run_demo(out_dir: str, size: int = 224, num_samples: int = 8, seed: int = 0,
             model: morphable.MorphableModel | None = None, num_faces: int = 3,
             fit_size: int = 128, photo: bool = True, fit_config=None) -> dict:
  """The demo: pictures of the model, then robust fits of occluded faces, summarised.

  Writes to ``out_dir``: the gallery of :func:`render_gallery`, ``summary.png``
  (rows: input | fit | mask | error map), ``metrics.json`` and ``index.html``.

  Args:
    size: gallery render size; fit_size: size of the fitted images.
    num_samples: random faces in the gallery; num_faces: synthetic faces fitted.
    photo: also fit the astronaut photo with a pasted occluder (needs dlib).
    fit_config: :class:`~focus_jax.fitting.FitConfig` (default FitConfig()).

  Returns:
    dict: paths written, the gallery's render time, the fit summary.
  """
  model = morphable.builtin() if model is None else model
  print(f"model: {model}")
  os.makedirs(out_dir, exist_ok=True)
  gallery = render_gallery(out_dir, model, size=size, num_samples=num_samples, seed=seed)
  paths = dict(gallery["paths"])
  fits = fit_demo(out_dir, model, num_faces=num_faces, size=fit_size, seed=seed, photo=photo,
                  config=fit_config)
  out = {"paths": paths, "seconds_per_image": gallery["seconds_per_image"]}
  if not fits:
    return out
  summary = fits["summary"]
  summary["render_seconds_per_image"] = gallery["seconds_per_image"]
  paths["summary"] = os.path.join(out_dir, "summary.png")
  images.save_png(paths["summary"], summary_picture(fits["rows"], fits["captions"], HEADERS))
  paths["metrics"] = os.path.join(out_dir, "metrics.json")
  with open(paths["metrics"] + ".tmp", "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  os.replace(paths["metrics"] + ".tmp", paths["metrics"])
  paths["index"] = os.path.join(out_dir, "index.html")
  with open(paths["index"] + ".tmp", "w", encoding="utf-8") as f:
    f.write(_html(summary, paths, out_dir))
  os.replace(paths["index"] + ".tmp", paths["index"])
  if "synthetic_mean" in summary:
    m = summary["synthetic_mean"]
    print(f"synthetic faces, mean: mask F1 {m['f1']:.3f}, occluder IoU {m['occluder_iou']:.3f}, "
          f"3D error median {m['error_median']:.2f} mm, mean {m['error_mean']:.2f} mm")
  for key in ("summary", "metrics", "index"):
    print(f"wrote {paths[key]}")
  out["fit"] = summary
  return out
