"""The NoW benchmark (Sanyal et al., CVPR 2019, "RingNet"): files, landmarks, metric.

FOCUS's headline 3D number is its NoW error. This module writes predictions in
the challenge's submission layout and evaluates them locally on the public
validation split, following the official evaluation code
(github.com/soubhiksanyal/now_evaluation).

Dataset layout (``--now_dir`` = the ``NoW_Dataset/final_release_version`` folder)::

    iphone_pictures/<subject>/<challenge>/<IMG>.jpg   the photos
    detected_face/<subject>/<challenge>/<IMG>.npy     face box: a dict with 'left', 'top',
                                                      'right', 'bottom' (px) pickled in an
                                                      .npy (read without unpickling
                                                      anything else: see now_box.read_box)
    scans/<subject>/<name>.obj                        the neutral 3D scan (mm)
    scans_lmks_onlypp/<subject>/<name>.pp             its 7 landmarks (MeshLab picked points)
    imagepathsvalidation.txt, imagepathstest.txt      image lists: one
                                                      '<subject>/<challenge>/<IMG>.jpg' a line

``<challenge>`` is one of :data:`CHALLENGES`. Predictions (``--out`` of ``now
predict``, the folder one submits)::

    <out>/<subject>/<challenge>/<IMG>.obj   the predicted mesh (mm; any pose: the
                                            evaluation aligns it)
    <out>/<subject>/<challenge>/<IMG>.npy   [7, 3] float its 7 landmarks, order below

The 7 landmarks, in the challenge's order, and the iBUG-68 points they are
(:data:`focus_jax.morphable.landmark_map.IBUG_OF_NOW`; 1-based iBUG numbering; our
models' ``landmarks`` table is 0-based, so the vertex is ``model.landmarks[ibug - 1]``). "Right"/"left" are the image's, as in
iBUG; the official evaluation uses points 0-3 (eye corners) and 4 (nose
bottom) to crop the scan:

=====  ============================  ==========
index  point                         iBUG (1-based)
=====  ============================  ==========
0      outer corner of image-left eye   37
1      inner corner of image-left eye   40
2      inner corner of image-right eye  43
3      outer corner of image-right eye  46
4      nose bottom (subnasale)          34
5      image-left mouth corner          49
6      image-right mouth corner         55
=====  ============================  ==========

Metric (the official ``compute_errors``): crop the scan to a sphere around the
face centre (radius 1.4 x the mean of the outer-eye distance and the nose
length, from the scan's landmarks), align the prediction to the scan by a
similarity from the 7 landmarks, refine it by minimising the scan-to-mesh
distance, and take the distance of every cropped scan vertex to the predicted
surface (:func:`focus_jax.eval.mesh_metrics.now_error`); the challenge reports
the median, mean and standard deviation over all distances of all images.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Optional, Sequence

import numpy as np

from focus_jax.errors import DataError

CHALLENGES = ("multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")
VALIDATION_LIST = "imagepathsvalidation.txt"
TEST_LIST = "imagepathstest.txt"
# Radius factor of the official scan crop.
CROP_RADIUS = 1.4


# ----------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class NowLayout:
  """Folders of a NoW dataset copy (see the module docstring)."""
  root: str

  @property
  def images(self) -> str:
    return os.path.join(self.root, "iphone_pictures")

  @property
  def boxes(self) -> str:
    return os.path.join(self.root, "detected_face")

  @property
  def scans(self) -> str:
    return os.path.join(self.root, "scans")

  @property
  def scan_landmarks(self) -> str:
    return os.path.join(self.root, "scans_lmks_onlypp")

  def default_list(self) -> str:
    return os.path.join(self.root, VALIDATION_LIST)


def split_entry(entry: str) -> tuple:
  """'<subject>/<challenge>/<IMG>.jpg' (possibly with leading folders) -> the three parts.

  The parts become folder and file names (of the photo, the box and the prediction),
  so a part that is '.', '..', or holds a NUL or other control character is refused:
  such an entry would read or write outside the dataset or the output folder.
  """
  parts = entry.strip().replace("\\", "/").split("/")
  # (a part with surrounding blanks would not survive the line strip of a re-read)
  if len(parts) < 3 or not all(p and p == p.strip() for p in parts[-3:]):
    raise DataError(f"image list entry {entry!r} is not <subject>/<challenge>/<image>")
  for part in parts:
    if part in (".", "..") or any(ord(c) < 32 or c == "\x7f" for c in part):
      raise DataError(f"image list entry {entry!r} has the path part {part!r}; entries must "
                      "not leave the dataset or the output folder")
  return parts[-3], parts[-2], parts[-1]


def read_image_list(path: str) -> list:
  """The entries of a NoW image list ('<subject>/<challenge>/<IMG>.jpg'), blank lines skipped.

  Raises:
    DataError: missing file or a malformed line (naming the file and line).
  """
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise DataError(f"image list not found: {path}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read the image list ({e})") from e
  entries = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      subject, challenge, name = split_entry(line)
    except DataError as e:
      if "path part" in str(e):
        raise DataError(f"{path}, line {number}: {e}") from None
      raise DataError(f"{path}, line {number}: expected <subject>/<challenge>/<image>, got "
                      f"{line.strip()!r}") from None
    entries.append(f"{subject}/{challenge}/{name}")
  if not entries:
    raise DataError(f"{path}: the image list is empty")
  return entries


def prediction_paths(pred_dir: str, entry: str) -> tuple:
  """(mesh .obj, landmarks .npy) of an image-list entry under a predictions folder.

  Raises:
    DataError: the entry resolves outside ``pred_dir`` ('..' parts, or a folder in
      ``pred_dir`` that is a symlink to elsewhere), naming the entry.
  """
  subject, challenge, name = split_entry(entry)
  stem = os.path.splitext(name)[0]
  base = os.path.join(pred_dir, subject, challenge, stem)
  root = os.path.realpath(pred_dir)
  if os.path.commonpath([root, os.path.realpath(base)]) != root:
    raise DataError(f"image list entry {entry!r} resolves outside the predictions folder "
                    f"{pred_dir} (through a symlink?); refusing to write or read it there")
  return base + ".obj", base + ".npy"


# ----------------------------------------------------------------------------- .pp files


def read_pp(path: str) -> np.ndarray:
  """The points of a MeshLab picked-points file (.pp, XML): [N, 3] float64, file order.

  NoW's scan landmark files hold the 7 points of
  :data:`~focus_jax.morphable.landmark_map.IBUG_OF_NOW` in that order.
  """
  import xml.etree.ElementTree as ET  # pylint: disable=import-outside-toplevel
  try:
    root = ET.parse(path).getroot()
  except FileNotFoundError:
    raise DataError(f"landmark file not found: {path}") from None
  except (ET.ParseError, OSError) as e:
    raise DataError(f"{path}: not a MeshLab picked-points file ({e})") from e
  points = []
  for p in root.iter("point"):
    try:
      points.append([float(p.attrib[k]) for k in ("x", "y", "z")])
    except (KeyError, ValueError):
      raise DataError(f"{path}: a <point> without numeric x, y, z: {p.attrib}") from None
  if not points:
    raise DataError(f"{path}: no <point> entries")
  return np.asarray(points, np.float64)


def format_pp(points, mesh_name: str = "") -> str:
  """MeshLab picked-points text, laid out like NoW's files (points on lines 9-15, the
  lines the official line-based reader takes)."""
  lines = ["<!DOCTYPE PickedPoints>", "<PickedPoints>", " <DocumentData>",
           '  <DateTime time="00:00:00" date="2000-01-01"/>', '  <User name="focus-jax"/>',
           f'  <DataFileName name="{mesh_name}"/>', '  <templateName name=""/>',
           " </DocumentData>"]
  for i, (x, y, z) in enumerate(np.asarray(points, np.float64)):
    lines.append(f' <point x="{x:.6f}" y="{y:.6f}" z="{z:.6f}" active="1" name="{i}"/>')
  lines.append("</PickedPoints>")
  return "\n".join(lines) + "\n"


def write_pp(path: str, points, mesh_name: str = "") -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(format_pp(points, mesh_name))


# ----------------------------------------------------------------------------- model side


def landmark_vertices(model) -> np.ndarray:
  """[7] vertex indices of the NoW landmarks on ``model`` (from its iBUG-68 table).

  Raises:
    DataError: the model has no vertex for one of them.
  """
  from focus_jax.morphable.landmark_map import (  # pylint: disable=import-outside-toplevel
      IBUG_OF_NOW, NOW_LANDMARK_NAMES)
  table = np.asarray(model.landmarks)
  idx = table[np.asarray(IBUG_OF_NOW) - 1]
  if (idx < 0).any():
    missing = [NOW_LANDMARK_NAMES[i] for i in np.flatnonzero(idx < 0)]
    raise DataError(f"model {model.name!r} has no landmark vertex for {missing}; NoW needs "
                    "the eye corners, nose bottom and mouth corners")
  return idx.astype(np.int64)


def neutral_vertices(model, shape) -> np.ndarray:
  """[V, 3] float64 model-space mesh (mm) of identity ``shape`` with a neutral expression.

  NoW's scans are neutral, so the challenge evaluates the identity shape (as the
  public NoW submissions of DECA and MICA do: expression and jaw pose zeroed).
  """
  basis = np.asarray(model.shape_basis, np.float64)
  return np.asarray(model.mean, np.float64) + np.tensordot(np.asarray(shape, np.float64),
                                                           basis, axes=1)


def write_prediction(pred_dir: str, entry: str, vertices, triangles, landmarks7) -> tuple:
  """Writes one image's ``.obj`` and ``.npy`` (each atomically). Returns their paths."""
  from focus_jax import obj_io  # pylint: disable=import-outside-toplevel
  obj_path, npy_path = prediction_paths(pred_dir, entry)
  lm = np.asarray(landmarks7, np.float64)
  if lm.shape != (7, 3):
    raise ValueError(f"write_prediction: landmarks must be [7, 3], got {lm.shape}")
  obj_io.write_obj(obj_path, vertices, triangles, header=f"NoW prediction for {entry} (mm)")
  tmp = npy_path + ".tmp.npy"
  np.save(tmp, lm)
  os.replace(tmp, npy_path)
  return obj_path, npy_path


def read_prediction(pred_dir: str, entry: str):
  """(vertices [V, 3], triangles [F, 3], landmarks [7, 3]) or None when missing.

  Landmarks are read from ``.npy``, else from ``.txt`` (7 lines of x y z).
  """
  from focus_jax import obj_io  # pylint: disable=import-outside-toplevel
  obj_path, npy_path = prediction_paths(pred_dir, entry)
  txt_path = npy_path[:-4] + ".txt"
  if not os.path.exists(obj_path) or not (os.path.exists(npy_path) or os.path.exists(txt_path)):
    return None
  verts, tris = obj_io.read_obj(obj_path)
  if len(tris) == 0:
    raise DataError(f"{obj_path}: the predicted mesh has no faces")
  try:
    lm = np.load(npy_path) if os.path.exists(npy_path) else np.loadtxt(txt_path)
  except (ValueError, OSError) as e:
    raise DataError(f"{npy_path}: cannot read the landmarks ({e})") from e
  lm = np.asarray(lm, np.float64).reshape(-1, 3) if np.size(lm) == 21 else np.asarray(lm)
  if lm.shape != (7, 3):
    raise DataError(f"{npy_path}: expected [7, 3] landmarks, got shape {np.shape(lm)}")
  return verts, tris, lm


# ----------------------------------------------------------------------------- metric


def crop_scan(points, scan_landmarks7) -> np.ndarray:
  """[N] bool: scan vertices inside the official face sphere (see the module docstring)."""
  lm = np.asarray(scan_landmarks7, np.float64)
  nose_bottom = lm[4]
  nose_bridge = 0.5 * (lm[1] + lm[2])
  centre = nose_bottom + 0.3 * (nose_bridge - nose_bottom)
  radius = CROP_RADIUS * 0.5 * (np.linalg.norm(lm[0] - lm[3])
                                + np.linalg.norm(nose_bridge - nose_bottom))
  return np.linalg.norm(np.asarray(points, np.float64) - centre, axis=1) <= radius


def scan_files(layout: NowLayout, subject: str) -> tuple:
  """(scan .obj, landmarks .pp) of a subject (the first of each, as the official code)."""
  objs = sorted(glob.glob(os.path.join(layout.scans, subject, "*.obj")))
  pps = sorted(glob.glob(os.path.join(layout.scan_landmarks, subject, "*.pp")))
  if not objs:
    raise DataError(f"no scan for subject {subject}: {os.path.join(layout.scans, subject)}/*.obj")
  if not pps:
    raise DataError(f"no scan landmarks for subject {subject}: "
                    f"{os.path.join(layout.scan_landmarks, subject)}/*.pp")
  return objs[0], pps[0]


def load_scan(layout: NowLayout, subject: str) -> dict:
  """dict(points [N, 3] cropped scan vertices, landmarks [7, 3], files)."""
  from focus_jax import obj_io  # pylint: disable=import-outside-toplevel
  obj_path, pp_path = scan_files(layout, subject)
  verts, _ = obj_io.read_obj(obj_path)
  lm = read_pp(pp_path)
  if lm.shape[0] < 7:
    raise DataError(f"{pp_path}: expected the 7 NoW landmarks, found {lm.shape[0]} points")
  lm = lm[:7]
  keep = crop_scan(verts, lm)
  if keep.sum() < 10:
    raise DataError(f"{pp_path}: fewer than 10 scan vertices lie in the face crop of these "
                    "landmarks; do they belong to that scan?")
  return dict(points=verts[keep], landmarks=lm, files=(obj_path, pp_path))


def _stats(d) -> dict:
  d = np.asarray(d, np.float64)
  if d.size == 0:
    return dict(median=float("nan"), mean=float("nan"), std=float("nan"), points=0)
  return dict(median=float(np.median(d)), mean=float(np.mean(d)), std=float(np.std(d)),
              points=int(d.size))


def evaluate(pred_dir: str, now_dir: str, entries: Sequence[str], *, progress: bool = True,
             icp_iterations: Optional[int] = None) -> dict:
  """NoW errors of the predictions for ``entries`` (see the module docstring).

  Args:
    pred_dir: predictions folder (challenge layout).
    now_dir: the dataset folder (scans and their landmarks).
    entries: image-list entries.
    icp_iterations: passed to :func:`now_error` when given.

  Returns:
    dict(all: stats, challenges: {challenge: stats}, images: [{entry, median, mean,
    points}], missing: [entries without predictions], distances: {entry: [N] mm}).
    Stats are dict(median, mean, std, points, images) over all scan-vertex distances.

  Raises:
    DataError: no prediction at all, or unreadable scans / predictions.
  """
  from focus_jax.eval import mesh_metrics  # pylint: disable=import-outside-toplevel
  layout = NowLayout(now_dir)
  scans, per_image, missing, distances = {}, [], [], {}
  iterator = entries
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    iterator = tqdm(entries, desc="NoW evaluate", unit="img")
  for entry in iterator:
    subject, challenge, _ = split_entry(entry)
    pred = read_prediction(pred_dir, entry)
    if pred is None:
      missing.append(entry)
      continue
    if subject not in scans:
      scans[subject] = load_scan(layout, subject)
    scan = scans[subject]
    verts, tris, lm = pred
    kwargs = {} if icp_iterations is None else dict(icp_iterations=icp_iterations)
    res = mesh_metrics.now_error(verts, tris, scan["points"], lm, scan["landmarks"], **kwargs)
    d = np.asarray(res["distances"], np.float64)
    distances[entry] = d
    per_image.append(dict(entry=entry, challenge=challenge, median=float(np.median(d)),
                          mean=float(np.mean(d)), points=int(d.size)))
  if not distances:
    raise DataError(f"{pred_dir}: no predictions found for the {len(entries)} listed images "
                    f"(expected e.g. {prediction_paths(pred_dir, entries[0])[0]})")
  out = dict(all=dict(_stats(np.concatenate(list(distances.values()))), images=len(distances)))
  out["challenges"] = {}
  for ch in CHALLENGES + tuple(sorted({r["challenge"] for r in per_image} - set(CHALLENGES))):
    ds = [distances[r["entry"]] for r in per_image if r["challenge"] == ch]
    if ds:
      out["challenges"][ch] = dict(_stats(np.concatenate(ds)), images=len(ds))
  out.update(images=per_image, missing=missing, distances=distances)
  return out


def format_markdown(result: dict, title: str = "NoW errors") -> str:
  """The result of :func:`evaluate` as a markdown table (mm)."""
  lines = [f"# {title}", "",
           "| split | images | scan points | median (mm) | mean (mm) | std (mm) |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
  rows = [("all", result["all"])] + list(result["challenges"].items())
  for name, s in rows:
    lines.append(f"| {name} | {s['images']} | {s['points']} | {s['median']:.3f} | "
                 f"{s['mean']:.3f} | {s['std']:.3f} |")
  if result["missing"]:
    lines += ["", f"{len(result['missing'])} listed images have no prediction (left out), "
              f"e.g. {result['missing'][0]}."]
  lines += ["", "Scan-to-mesh distances after 7-landmark similarity alignment and refinement "
            "(focus_jax.eval.mesh_metrics.now_error), over the cropped scan vertices."]
  return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: str, title: str = "NoW errors") -> dict:
  """Writes ``now_errors.md``, ``now_errors.json``, ``cumulative_error.png`` and
  ``computed_distances.npz`` (every image's distances) into ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  paths = dict(markdown=os.path.join(out_dir, "now_errors.md"),
               json=os.path.join(out_dir, "now_errors.json"),
               plot=os.path.join(out_dir, "cumulative_error.png"),
               distances=os.path.join(out_dir, "computed_distances.npz"))

  def atomic_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)

  atomic_text(paths["markdown"], format_markdown(result, title))
  summary = {k: v for k, v in result.items() if k != "distances"}
  from focus_jax.eval import mesh_metrics, plots  # pylint: disable=import-outside-toplevel
  pooled = {"all": np.concatenate(list(result["distances"].values()))}
  if len(result["challenges"]) > 1:
    for ch in result["challenges"]:
      pooled[ch] = np.concatenate([result["distances"][r["entry"]] for r in result["images"]
                                   if r["challenge"] == ch])
  # The official plots run from 0 to 8 mm; wider when the errors are.
  max_error = max(8.0, mesh_metrics.nice_ceil(np.percentile(pooled["all"], 99)))
  curves = {name: mesh_metrics.cumulative_error(d, max_error=max_error, num=201)
            for name, d in pooled.items()}
  plots.cumulative_error_plot(paths["plot"], curves, title=title)
  summary["cumulative_error"] = {name: dict(thresholds=t.tolist(), fractions=f.tolist())
                                 for name, (t, f) in curves.items()}
  atomic_text(paths["json"], json.dumps(summary, indent=1))
  tmp = paths["distances"] + ".tmp.npz"
  entries = list(result["distances"])
  np.savez_compressed(tmp, entries=np.asarray(entries),
                      **{f"d{i}": result["distances"][e] for i, e in enumerate(entries)})
  os.replace(tmp, paths["distances"])
  return paths
