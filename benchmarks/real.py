"""Semi-real benchmark of the robust per-image fit's inlier masks on real faces (issue 20).

Real skin, exact masks: the 60 unoccluded photos of ../shared/data/real_faces (read in
place) get realistic occluders pasted over them (focus_jax.data.real_occluders:
synthetic shapes, surgical and cloth masks, sunglasses, hands, scarves, hair, microphones,
skin-coloured and saturated objects), placed from the dlib landmarks of the unoccluded
photo. Ground truth: a pixel is occluded where the occluder's alpha >= 0.5. Every photo
gets ``--per_photo`` occluders whose families cycle with the photo's position and whose
random streams are seeded by (``--seed``, file name, slot): the same occluders every run.

Each occluded photo is fitted as ``focus-jax fit`` fits it (inference.prepare -> the
224-px aligned crop -> Reconstructor, batched, the fit command's default settings; every
``focus-jax fit`` flag such as --iterations, --outlier_model, --fit_batch,
--initial_tint_ridge, --misfit_prior, --segmenter or --checkpoint is accepted and used as the command
uses it), and the mask the command writes as NAME_mask.png (``Reconstruction.inlier_mask``,
photo pixels) is scored inside the convex hull of the 68 landmarks of the *unoccluded*
photo (focus_jax.eval.mask_metrics.hull_mask_scores): inlier-class F1 / precision /
recall, occluder IoU, the all-inlier baseline's F1, and the photos with F1 < 0.5 (label
swaps). Two landmark modes:

* ``unoccluded``: the dlib landmarks of the photo before the occluder (an oracle);
* ``dlib``: dlib on the occluded photo, as ``focus-jax fit --crop_fallback`` finds them
  (HOG, then CNN, then the predictor on the whole crop).

People, not photos, are split (benchmarks/real_split.txt, rebuilt by
benchmarks/real_split.py): choose settings on ``tune``, report ``heldout``. Also: the
share of the landmark hull labelled outlier on the 60 unoccluded photos (false outliers),
and a tile of a sample of the 598 real occluded 112-px crops of
../shared/data/occluded_faces fitted with --crop_fallback (no masks there: a picture only).

  python benchmarks/real.py                       # everything -> benchmarks/results/real.*
  python benchmarks/real.py --limit 2 --out /tmp/real     # quick: 2 photos per half
  python benchmarks/real.py --half tune --landmarks unoccluded --iterations 100 --out DIR

Writes real.md, real.json and PNG tiles (real_worst.png, real_examples.png,
real_unoccluded.png, real_occluded_faces.png) into --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import real_split  # noqa: E402  pylint: disable=wrong-import-position

SHARED = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
DEFAULT_REAL = os.path.join(SHARED, "real_faces")
DEFAULT_OCCLUDED = os.path.join(SHARED, "occluded_faces")
MODES = ("unoccluded", "dlib")
SWAP_F1 = 0.5
# Targets of issue 20 (held-out people).
TARGETS = {"unoccluded": dict(f1=0.90, iou=0.70), "dlib": dict(f1=0.88, iou=0.65)}
TARGET_GAIN = 0.1
TARGET_FALSE_OUTLIERS = 0.05


# ----------------------------------------------------------------------------- arguments


def parse_args(argv):
  """(benchmark args, the rest) — the rest are ``focus-jax fit`` flags (absl)."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True,
                               epilog="Any other --flag is a focus-jax fit flag "
                               "(focus-jax fit --help).")
  ap.add_argument("--half", choices=("tune", "heldout", "both"), default="both")
  ap.add_argument("--landmarks", choices=MODES + ("both",), default="both",
                  help="landmark mode(s): of the unoccluded photo, or dlib on the occluded one")
  ap.add_argument("--people", default="",
                  help="only these people of the split (comma-separated ids, e.g. a validation "
                  "subset of the tune half); default all")
  ap.add_argument("--limit", type=int, default=0,
                  help="only the first N photos (file-name order) of each half; 0 = all")
  ap.add_argument("--out", default=None, help="results folder (default benchmarks/results; "
                  "with --limit, out/real_limit)")
  ap.add_argument("--data", default=DEFAULT_REAL, help="the real_faces folder")
  ap.add_argument("--occluded_dir", default=DEFAULT_OCCLUDED,
                  help="real occluded photos to fit for a tile (skipped when missing)")
  ap.add_argument("--occluded_sample", type=int, default=24,
                  help="how many of them (evenly over the sorted list); 0 = none")
  ap.add_argument("--split", default=real_split.SPLIT_FILE)
  ap.add_argument("--per_photo", type=int, default=4, help="occluders per photo")
  ap.add_argument("--seed", type=int, default=0, help="occluder seed (keep 0 to compare runs)")
  ap.add_argument("--worst", type=int, default=12, help="cases in the worst-case tile")
  args, rest = ap.parse_known_args(argv[1:])
  if args.limit < 0 or args.per_photo < 1 or args.occluded_sample < 0:
    ap.error("--limit and --occluded_sample must be >= 0, --per_photo >= 1")
  if args.out is None:
    args.out = os.path.join(REPO, "out", "real_limit") if args.limit else os.path.join(
        HERE, "results")
  return args, rest


def parse_fit_flags(argv0, rest):
  """Parses the focus-jax fit flags (defined by importing its command module)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  # importing the command modules defines their flags (--iterations, --size, ...)
  from focus_jax.commands import common, fit  # noqa: F401  pylint: disable=unused-import
  try:
    leftover = flags.FLAGS([argv0] + list(rest))
  except flags.Error as e:
    raise SystemExit(f"benchmarks/real.py: {e}") from e
  if len(leftover) > 1:
    raise SystemExit(f"benchmarks/real.py: unexpected arguments {leftover[1:]}")


def fit_flag_values() -> dict:
  from absl import flags  # pylint: disable=import-outside-toplevel
  names = ("iterations", "fit_batch", "outlier_model", "initial_tint_ridge", "non_robust",
           "misfit_prior", "segmenter", "segmenter_weight", "checkpoint", "model", "size")
  return {n: flags.FLAGS[n].value for n in names if n in flags.FLAGS}


# ----------------------------------------------------------------------------- data


def load_photos(args):
  """[(index in the full sorted list, name, person, half)] of the selected photos."""
  names = real_split.list_photos(args.data)
  if not names:
    raise SystemExit(f"{args.data}: no photos")
  try:
    split = {n: (p, h) for n, p, h in real_split.read_split(args.split)}
  except (OSError, ValueError) as e:
    raise SystemExit(f"cannot read the people split {args.split}: {e}") from e
  missing = [n for n in names if n not in split]
  if missing:
    raise SystemExit(f"{args.split} lacks {len(missing)} photos of {args.data} (e.g. "
                     f"{missing[0]}): rebuild it with python benchmarks/real_split.py")
  halves = ("tune", "heldout") if args.half == "both" else (args.half,)
  out = []
  for half in halves:
    chosen = [(i, n) for i, n in enumerate(names) if split[n][1] == half
              and (not args.people or split[n][0] in args.people.split(","))]
    if args.limit:
      chosen = chosen[:args.limit]
    out += [(i, n, split[n][0], half) for i, n in chosen]
  return out


def eye_distance(lm) -> float:
  lm = np.asarray(lm, np.float64)
  return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


def landmark_error(found, clean) -> float:
  """Mean landmark distance in eye distances of the clean landmarks."""
  return float(np.mean(np.linalg.norm(np.asarray(found, np.float64) - clean, axis=1))
               / max(eye_distance(clean), 1e-6))


# ----------------------------------------------------------------------------- fitting


class Runner:
  """Batches prepared photos through a Reconstructor; keeps only what is scored."""

  def __init__(self, rec):
    self.rec = rec
    self.pending = []         # (prep, callback)
    self.batch_times = []     # (seconds, photos)

  def add(self, prep, callback):
    self.pending.append((prep, callback))
    if len(self.pending) == self.rec.batch_size:
      self.flush()

  def flush(self):
    if not self.pending:
      return
    t = time.perf_counter()
    results = self.rec.run([p for p, _ in self.pending])
    self.batch_times.append((time.perf_counter() - t, len(self.pending)))
    for (_, callback), r in zip(self.pending, results):
      callback(r)
    self.pending = []

  def timing(self) -> dict:
    """First batch (with compilation) and the others' seconds per photo."""
    if not self.batch_times:
      return {}
    first, n_first = self.batch_times[0]
    rest = self.batch_times[1:]
    per = (sum(t for t, _ in rest) / max(sum(n for _, n in rest), 1)) if rest else None
    return dict(first_batch_s=first, first_batch_photos=n_first, s_per_photo=per,
                batches=len(self.batch_times), photos=sum(n for _, n in self.batch_times))


def score_row(rec, occluder_mask, clean_lm):
  """Scores of a Reconstruction's photo-space inlier mask (what NAME_mask.png holds)."""
  return score_row_mask(rec.inlier_mask, occluder_mask, clean_lm)


def score_row_mask(pred_inlier, occluder_mask, clean_lm):
  from focus_jax.eval import mask_metrics  # pylint: disable=import-outside-toplevel
  s = mask_metrics.hull_mask_scores(pred_inlier, occluder_mask, clean_lm)
  keys = ("f1", "precision", "recall", "occluder_iou", "all_inlier_f1", "outlier_share",
          "false_outlier_share", "occluded_share")
  return {k: float(s[k]) for k in keys}


# ----------------------------------------------------------------------------- summaries


def summarise(rows) -> dict:
  if not rows:
    return dict(n=0)
  f1 = np.array([r["f1"] for r in rows])
  base = np.array([r["all_inlier_f1"] for r in rows])
  out = dict(n=len(rows), f1=float(f1.mean()), f1_median=float(np.median(f1)),
             precision=float(np.mean([r["precision"] for r in rows])),
             recall=float(np.mean([r["recall"] for r in rows])),
             occluder_iou=float(np.mean([r["occluder_iou"] for r in rows])),
             all_inlier_f1=float(base.mean()), gain=float((f1 - base).mean()),
             swaps=int(np.sum(f1 < SWAP_F1)),
             below_baseline=int(np.sum(f1 < base)),
             occluded_share=float(np.mean([r["occluded_share"] for r in rows])))
  errs = [r["landmark_error"] for r in rows if r.get("landmark_error") is not None]
  if errs:
    out["landmark_error_mean"] = float(np.mean(errs))
    out["landmark_error_median"] = float(np.median(errs))
  return out


def group(rows, *keys):
  out = {}
  for r in rows:
    out.setdefault(tuple(r[k] for k in keys), []).append(r)
  return out


# ----------------------------------------------------------------------------- pictures


def _crop_box(lm, shape, margin=0.35):
  lo, hi = np.min(lm, 0), np.max(lm, 0)
  size = float(np.max(hi - lo)) * (1 + 2 * margin)
  c = 0.5 * (lo + hi)
  x0 = int(np.clip(round(c[0] - size / 2), 0, max(shape[1] - 1, 0)))
  y0 = int(np.clip(round(c[1] - size / 2), 0, max(shape[0] - 1, 0)))
  side = int(min(round(size), shape[0] - y0, shape[1] - x0))
  return y0, x0, max(side, 1)


def _cell(image, box, size):
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  y0, x0, side = box
  im = np.asarray(image, np.float32)[y0:y0 + side, x0:x0 + side]
  z = size / im.shape[0]
  order = 0 if im.dtype == bool else 1
  return np.clip(ndimage.zoom(im, (z, z, 1) if im.ndim == 3 else (z, z), order=order),
                 0, 1)[:size, :size]


def label(cell, text):
  """The cell [S, S, 3] with ``text`` written in its top-left corner."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  img = Image.fromarray(images.to_uint8(cell))
  draw = ImageDraw.Draw(img)
  for k, line in enumerate(text.split("\n")):
    box = draw.textbbox((2, 1 + 11 * k), line)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((2, 1 + 11 * k), line, fill=(255, 255, 255))
  return np.asarray(img, np.float32) / 255.0


def case_cells(r, keep, size, extra=""):
  """[occluded photo, mask confusion] tile cells of one scored case ``r``."""
  from focus_jax.eval import mask_metrics  # pylint: disable=import-outside-toplevel
  occluded, pred, truth, lm = keep[(r["mode"], r["photo"], r["slot"])]
  box = _crop_box(lm, pred.shape)
  hull = mask_metrics.landmark_hull(lm, pred.shape)
  return [label(_cell(occluded / 255.0, box, size),
                f"{r['photo']} {r['half']}\n{r['description'][:26]}"),
          label(_cell(mask_metrics.confusion_image(pred, ~truth, hull), box, size),
                f"F1 {r['f1']:.2f} IoU {r['occluder_iou']:.2f}{extra}")]


def overlay(photo, pred_inlier, region, tint=(0.15, 0.35, 1.0)):
  """The photo with predicted outliers inside ``region`` tinted, outside it dimmed."""
  out = np.asarray(photo, np.float32).copy()
  out[~region] *= 0.45
  bad = region & ~pred_inlier
  out[bad] = 0.35 * out[bad] + 0.65 * np.asarray(tint, np.float32)
  return out


def save_tile(path, cells, cols, max_bytes=1_000_000):
  """Writes a tile as PNG; palette-quantised when the RGB file would exceed max_bytes."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  canvas = images.to_uint8(images.tile(cells, cols))
  img = Image.fromarray(canvas)
  img.save(path, optimize=True)
  if os.path.getsize(path) > max_bytes:
    img.quantize(colors=256, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
  return os.path.getsize(path)


# ----------------------------------------------------------------------------- report


def _f(x, digits=3):
  return "–" if x is None else f"{x:.{digits}f}"


def markdown(report) -> str:
  L = []
  meta = report["meta"]
  L.append("# Semi-real benchmark: inlier masks on real faces with pasted occluders\n")
  L.append(f"`{meta['command']}` — {meta['date']}, commit `{meta['commit']}`; "
           f"{meta['machine']}; load average {meta['load_before']} before, "
           f"{meta['load_after']} after. Fit: {meta['method']}, flags "
           f"{', '.join(f'--{k}={v}' for k, v in meta['fit_flags'].items() if v is not None)}.")
  t = report["timing"]
  if t.get("s_per_photo") is not None:
    L.append(f"Time: {t['s_per_photo']:.2f} s per photo (batched, {t['photos']} photos incl. "
             f"the preparation's warp; first batch with compilation {t['first_batch_s']:.0f} s); "
             f"whole run {meta['wall_s'] / 60:.1f} min including landmark detection and the "
             "occluder drawing.")
  L.append("")
  L.append("Data: the photos of `../shared/data/real_faces` (read in place), people split by "
           "`benchmarks/real_split.txt` (tune: settings may be chosen on these; heldout: report "
           f"only). {meta['per_photo']} occluders per photo (families cycle with the photo's "
           f"position, seed {meta['seed']}), pasted as `photo·(1−α) + rgb·α`; ground truth "
           "occluded where α ≥ 0.5. Scores inside the convex hull of the 68 dlib landmarks of "
           "the unoccluded photo, on the mask `focus-jax fit` writes as NAME_mask.png (photo "
           "pixels; inlier = face pixel the fit explains). F1 / precision / recall: inlier "
           "class, mean over cases; IoU: occluder (outlier) class; base F1: the all-inlier "
           f"mask; gain: F1 − base F1; F1<{SWAP_F1}: swaps; <base: cases below the baseline.")
  if meta.get("limit"):
    L.append(f"\n**Partial run: --limit {meta['limit']} photos per half.**")
  L.append("\n## Per half and landmark mode\n")
  L.append("| half | landmarks | cases | F1 | precision | recall | occluder IoU | base F1 | "
           "gain | F1<0.5 | <base | occluded | landmark error |")
  L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for key, s in report["summary"].items():
    half, mode = key.split("/")
    if not s.get("n"):
      continue
    L.append(f"| {half} | {mode} | {s['n']} | {_f(s['f1'])} | {_f(s['precision'])} | "
             f"{_f(s['recall'])} | {_f(s['occluder_iou'])} | {_f(s['all_inlier_f1'])} | "
             f"{s['gain']:+.3f} | {s['swaps']} | {s['below_baseline']} | "
             f"{_f(s['occluded_share'], 2)} | {_f(s.get('landmark_error_mean'), 3)} |")
  L.append("\nlandmark error: mean distance of the landmarks the fit used to the unoccluded "
           "photo's, in eye distances (dlib mode).")
  if report.get("landmark_sources"):
    L.append("dlib mode, where the landmarks came from: " + ", ".join(
        f"{h}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        for h, c in report["landmark_sources"].items()) + ".")
  L.append("\n## Targets (issue 20, held-out people)\n")
  L.append("| target | value | |")
  L.append("| --- | --- | --- |")
  for row in report["targets"]:
    L.append(f"| {row['what']} | {row['value']} | {'met' if row['met'] else '**missed**'} |")
  for half in ("tune", "heldout"):
    fam = report["families"].get(half)
    if not fam:
      continue
    modes = [m for m in MODES if any(k.endswith("/" + m) for k in fam)]
    L.append(f"\n## Per occluder family — {half}\n")
    L.append("| family | cases | " + " | ".join(
        f"{m}: F1 | IoU | base | F1<0.5" for m in modes) + " |")
    L.append("| --- | --- | " + " | ".join("--- | --- | --- | ---" for _ in modes) + " |")
    names = sorted({k.split("/")[0] for k in fam})
    for f in names:
      cells = []
      n = 0
      for m in modes:
        s = fam.get(f"{f}/{m}", {})
        n = max(n, s.get("n", 0))
        cells.append(f"{_f(s.get('f1'))} | {_f(s.get('occluder_iou'))} | "
                     f"{_f(s.get('all_inlier_f1'))} | {s.get('swaps', '–')}")
      L.append(f"| {f} | {n} | " + " | ".join(cells) + " |")
  for half in ("tune", "heldout"):
    col = report["colours"].get(half)
    if not col:
      continue
    L.append(f"\n## Per occluder colour — {half}, landmarks of the unoccluded photo\n")
    L.append("| colour | cases | F1 | IoU | base F1 | F1<0.5 |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    for c, s in sorted(col.items()):
      L.append(f"| {c} | {s['n']} | {_f(s['f1'])} | {_f(s['occluder_iou'])} | "
               f"{_f(s['all_inlier_f1'])} | {s['swaps']} |")
  L.append("\ncolour: `real_occluders.colour_class` (skin-like = chromaticity within 0.05 of "
           "the photo's own cheeks).")
  u = report["unoccluded"]
  if u:
    L.append("\n## Unoccluded photos: share of the landmark hull labelled outlier\n")
    L.append("| half | photos | median | mean | max |")
    L.append("| --- | --- | --- | --- | --- |")
    for half, s in u.items():
      L.append(f"| {half} | {s['n']} | {_f(s['median'])} | {_f(s['mean'])} | {_f(s['max'])} |")
    L.append("\n(target: median ≤ 0.05 on held-out people; a few photos wear glasses, which "
             "count as face here.) Tile: [real_unoccluded.png](real_unoccluded.png) (blue = "
             "labelled outlier inside the hull; dimmed = outside the hull).")
  o = report.get("occluded_faces")
  if o:
    L.append("\n## Real occluded photos (`../shared/data/occluded_faces`, no ground truth)\n")
    L.append(f"{o['n']} of {o['total']} photos (evenly over the sorted list), fitted with "
             f"--crop_fallback; landmarks: " + ", ".join(f"{k} {v}" for k, v in
                                                         sorted(o["sources"].items()))
             + f"; median share of the (detected) landmark hull labelled outlier "
             f"{_f(o['outlier_share_median'])}. Tile: [real_occluded_faces.png]"
             "(real_occluded_faces.png) (input | render | blue = labelled outlier).")
  L.append("\n## Pictures\n")
  L.append("- [real_worst.png](real_worst.png): the lowest-F1 occluded photos (the worse of "
           "the two landmark modes), input | mask against the truth (white = inlier found, "
           "black = occluder found, red = occluder taken for face, blue = face taken for "
           "occluder, grey = outside the hull).")
  L.append("- [real_examples.png](real_examples.png): one held-out (else tune) case per "
           "family, landmarks of the unoccluded photo, same colours.")
  return "\n".join(L) + "\n"


def targets(summary, unoccluded) -> list:
  out = []
  for mode in MODES:
    s = summary.get(f"heldout/{mode}")
    if not s or not s.get("n"):
      continue
    t = TARGETS[mode]
    out.append(dict(what=f"{mode}: mean inlier F1 ≥ {t['f1']}", value=_f(s["f1"]),
                    met=s["f1"] >= t["f1"]))
    out.append(dict(what=f"{mode}: occluder IoU ≥ {t['iou']}", value=_f(s["occluder_iou"]),
                    met=s["occluder_iou"] >= t["iou"]))
    out.append(dict(what=f"{mode}: no case with F1 < {SWAP_F1}", value=str(s["swaps"]),
                    met=s["swaps"] == 0))
    out.append(dict(what=f"{mode}: F1 ≥ all-inlier F1 + {TARGET_GAIN}",
                    value=f"{s['gain']:+.3f}", met=s["gain"] >= TARGET_GAIN))
  u = unoccluded.get("heldout")
  if u:
    out.append(dict(what=f"unoccluded: median outlier share ≤ {TARGET_FALSE_OUTLIERS}",
                    value=_f(u["median"]), met=u["median"] <= TARGET_FALSE_OUTLIERS))
  return out


def machine() -> str:
  import jax  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, jax "
          f"{jax.__version__} on {dev.platform} ({getattr(dev, 'device_kind', '')})")


def git_commit() -> str:
  """The commit, plus the package files that differ from it (the code that ran)."""
  try:
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "focus_jax"],
                           check=True, capture_output=True, text=True).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


# ----------------------------------------------------------------------------- main


def run(argv):
  args, rest = parse_args(argv)
  if not os.path.isdir(args.data):
    print(f"benchmarks/real.py: skipped: {args.data} not found (the shared real_faces photos; "
          "pass --data)", file=sys.stderr)
    return None
  parse_fit_flags(argv[0], rest)
  from focus_jax import host_memory  # pylint: disable=import-outside-toplevel
  host_memory.keep_freed_memory()
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  from focus_jax.app import inference  # pylint: disable=import-outside-toplevel
  from focus_jax.commands import fit as fit_cmd  # pylint: disable=import-outside-toplevel
  from focus_jax.data import real_occluders  # pylint: disable=import-outside-toplevel
  from focus_jax.eval import mask_metrics  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel

  t_start = time.perf_counter()
  load_before = "/".join(f"{x:.1f}" for x in os.getloadavg())
  os.makedirs(args.out, exist_ok=True)
  modes = MODES if args.landmarks == "both" else (args.landmarks,)
  photos = load_photos(args)
  detector = inference.default_detector()
  detector_fb = inference.default_detector(crop_fallback=True)
  rec = fit_cmd.make_reconstructor()
  runner = Runner(rec)
  rows, unocc_rows, skipped = [], [], []
  keep = {}          # case id -> (occluded uint8, pred inlier, truth occluder, clean lm)
  print(f"benchmarks/real.py: {len(photos)} photos x {args.per_photo} occluders x "
        f"{len(modes)} landmark modes, fit batch {rec.batch_size} ({rec.method})", flush=True)

  for index, name, person, half in photos:
    photo = images.read_image(os.path.join(args.data, name))
    try:
      clean_lm, _ = inference.find_landmarks(photo, detector, name)
    except DataError as e:
      skipped.append(f"{name}: {e}")
      continue
    clean_lm = np.asarray(clean_lm, np.float64)
    occs = real_occluders.benchmark_occluders(photo, clean_lm, name, index, args.per_photo,
                                              args.seed)

    def unocc_done(r, name=name, half=half, person=person, lm=clean_lm, photo=photo):
      s = score_row(r, np.zeros(r.inlier_mask.shape, bool), lm)
      unocc_rows.append(dict(photo=name, person=person, half=half,
                             outlier_share=s["outlier_share"]))
      keep[("unoccluded", name)] = (images.to_uint8(photo), r.inlier_mask, None, lm)

    runner.add(inference.prepare(photo, landmarks=clean_lm.astype(np.float32), size=rec.size,
                                 name=name), unocc_done)
    for slot, occ in enumerate(occs):
      occluded = real_occluders.composite(photo, occ)
      for mode in modes:
        base = dict(photo=name, person=person, half=half, slot=slot, family=occ.family,
                    description=occ.description, colour=occ.colour, mode=mode)
        if mode == "unoccluded":
          prep = inference.prepare(occluded, landmarks=clean_lm.astype(np.float32),
                                   size=rec.size, name=name)
          base.update(landmark_source="unoccluded photo (dlib)", landmark_error=None)
        else:
          try:
            prep = inference.prepare(occluded, detector=detector_fb, size=rec.size, name=name)
          except DataError:      # the command would skip the photo: no face pixel explained
            row = dict(base, landmark_source="none", landmark_error=None,
                       **score_row_mask(np.zeros(occ.mask.shape, bool), occ.mask, clean_lm))
            rows.append(row)
            keep[(mode, name, slot)] = (images.to_uint8(occluded),
                                        np.zeros(occ.mask.shape, bool), occ.mask, clean_lm)
            continue
          base.update(landmark_source=prep.landmark_source,
                      landmark_error=landmark_error(prep.landmarks, clean_lm))

        def done(r, base=base, mask=occ.mask, lm=clean_lm, occluded=occluded):
          row = dict(base, **score_row(r, mask, lm))
          rows.append(row)
          keep[(row["mode"], row["photo"], row["slot"])] = (images.to_uint8(occluded),
                                                           r.inlier_mask, mask, lm)
        runner.add(prep, done)
    print(f"  {name} ({half}, {person}): " + ", ".join(o.description for o in occs),
          flush=True)
  runner.flush()

  # real occluded photos (no truth): a deterministic, evenly spread sample
  occluded_info = None
  occ_cells = []
  if args.occluded_sample and os.path.isdir(args.occluded_dir):
    names = images.list_images(args.occluded_dir)
    picks = sorted({int(i) for i in np.linspace(0, len(names) - 1, args.occluded_sample)})
    sources, shares = {}, []

    def occ_done(r, photo):
      hull = mask_metrics.landmark_hull(r.input_landmarks, r.inlier_mask.shape)
      shares.append(float(np.mean(~r.inlier_mask[hull])) if hull.any() else float("nan"))
      occ_cells.extend([photo, r.render, overlay(photo, r.inlier_mask, hull)])

    for i in picks:
      photo = images.read_image(os.path.join(args.occluded_dir, names[i]))
      prep = inference.prepare(photo, detector=detector_fb, size=rec.size, name=names[i])
      sources[prep.landmark_source] = sources.get(prep.landmark_source, 0) + 1
      runner.add(prep, lambda r, photo=prep.photo: occ_done(r, photo))
    runner.flush()
    occluded_info = dict(n=len(picks), total=len(names), sources=sources,
                         outlier_share_median=float(np.nanmedian(shares)),
                         photos=[names[i] for i in picks])

  # ---- summaries
  summary = {}
  for half in ("tune", "heldout"):
    for mode in modes:
      sel = [r for r in rows if r["half"] == half and r["mode"] == mode]
      if sel:
        summary[f"{half}/{mode}"] = summarise(sel)
  families, colours, sources = {}, {}, {}
  for (half, fam, mode), sel in group(rows, "half", "family", "mode").items():
    families.setdefault(half, {})[f"{fam}/{mode}"] = summarise(sel)
  for (half, col), sel in group([r for r in rows if r["mode"] == "unoccluded"],
                                "half", "colour").items():
    colours.setdefault(half, {})[col] = summarise(sel)
  for r in rows:
    if r["mode"] == "dlib":
      c = sources.setdefault(r["half"], {})
      c[r["landmark_source"]] = c.get(r["landmark_source"], 0) + 1
  unoccluded = {}
  for half in ("tune", "heldout", "all"):
    v = [u["outlier_share"] for u in unocc_rows if half in ("all", u["half"])]
    if v:
      unoccluded[half] = dict(n=len(v), median=float(np.median(v)), mean=float(np.mean(v)),
                              max=float(np.max(v)))

  # ---- pictures
  size = 160
  worst, seen = [], set()          # the lowest F1 per occluded photo (either mode)
  for r in sorted(rows, key=lambda r: r["f1"]):
    if (r["photo"], r["slot"]) not in seen and len(worst) < args.worst:
      seen.add((r["photo"], r["slot"]))
      worst.append(r)
  cells = []
  for r in worst:
    cells += case_cells(r, keep, size, f"\nlandmarks: {r['mode']}")
  files = {}
  if cells:
    files["real_worst.png"] = save_tile(os.path.join(args.out, "real_worst.png"), cells, 8)
  cells = []
  for fam in real_occluders.FAMILIES:
    cand = [r for r in rows if r["family"] == fam and r["mode"] == modes[0]]
    cand.sort(key=lambda r: (r["half"] != "heldout", r["photo"], r["slot"]))
    if cand:
      cells += case_cells(cand[0], keep, size)
  if cells:
    files["real_examples.png"] = save_tile(os.path.join(args.out, "real_examples.png"), cells, 6)
  cells = []
  for u in sorted(unocc_rows, key=lambda u: (u["half"], real_split.natural_key(u["photo"]))):
    photo, pred, _, lm = keep[("unoccluded", u["photo"])]
    hull = mask_metrics.landmark_hull(lm, pred.shape)
    cells.append(label(_cell(overlay(photo / 255.0, pred, hull), _crop_box(lm, pred.shape), 112),
                       f"{u['photo']} {u['half'][0]} {100 * u['outlier_share']:.0f}%"))
  if cells:
    files["real_unoccluded.png"] = save_tile(os.path.join(args.out, "real_unoccluded.png"),
                                             cells, 10)
  if occ_cells:
    files["real_occluded_faces.png"] = save_tile(
        os.path.join(args.out, "real_occluded_faces.png"), occ_cells, 12)

  meta = dict(command=" ".join(["python benchmarks/real.py"] + list(argv[1:])),
              date=datetime.date.today().isoformat(), commit=git_commit(), machine=machine(),
              load_before=load_before,
              load_after="/".join(f"{x:.1f}" for x in os.getloadavg()),
              method=rec.method, fit_flags=fit_flag_values(), fit_config=repr(rec.config),
              per_photo=args.per_photo, seed=args.seed, limit=args.limit, half=args.half,
              landmarks=list(modes), wall_s=time.perf_counter() - t_start,
              swap_f1=SWAP_F1, truth_rule="occluded where alpha >= 0.5",
              region="convex hull of the 68 dlib landmarks of the unoccluded photo")
  report = dict(meta=meta, timing=runner.timing(), summary=summary,
                targets=targets(summary, unoccluded), families=families, colours=colours,
                landmark_sources=sources, unoccluded=unoccluded, occluded_faces=occluded_info,
                skipped=skipped, files=files, cases=rows, unoccluded_photos=unocc_rows)
  with open(os.path.join(args.out, "real.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(args.out, "real.md"), "w", encoding="utf-8") as f:
    f.write(markdown(report))
  for key, s in summary.items():
    print(f"{key}: n={s['n']} F1 {s['f1']:.3f} P {s['precision']:.3f} R {s['recall']:.3f} "
          f"IoU {s['occluder_iou']:.3f} base {s['all_inlier_f1']:.3f} swaps {s['swaps']}")
  for half, s in unoccluded.items():
    print(f"unoccluded {half}: median outlier share {s['median']:.3f} (mean {s['mean']:.3f})")
  for s in skipped:
    print("skipped " + s)
  print(f"wrote {args.out}/real.md, real.json, " + ", ".join(files), flush=True)
  return report


def main():
  run(sys.argv)


if __name__ == "__main__":
  main()
