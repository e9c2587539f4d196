"""``focus-jax now``: the NoW challenge workflow (predict, then evaluate locally).

  focus-jax now predict --now_dir DIR [--image_list FILE] --out PRED_DIR
      For every listed photo: the predicted mesh PRED_DIR/<subject>/<challenge>/<IMG>.obj
      (neutral expression, model space, mm) and its 7 landmarks <IMG>.npy ([7, 3], the
      challenge's order) — the folder to submit. The face is located from the
      dataset's detected_face box (dlib's 68-point predictor in that box), or by
      dlib's detector when there is no box, or taken from --landmarks. Uses the
      fit flags --checkpoint, --iterations, --fit_batch, --misfit_prior,
      --non_robust, --landmarks and the shared --model, --size.

  focus-jax now evaluate --predictions PRED_DIR --now_dir DIR [--image_list FILE] [--out DIR]
      The challenge's scan-to-mesh error (median / mean / std in mm, overall and per
      challenge) of the listed images against the scans: now_errors.md,
      now_errors.json, cumulative_error.png and computed_distances.npz in --out
      (default PRED_DIR/results). Needs the scans (the public validation split).
      --predictions is the flag `focus-jax eval` defines (see its help); here it
      takes one folder.

--now_dir is the dataset's final_release_version folder (iphone_pictures/,
detected_face/, scans/, scans_lmks_onlypp/); --image_list defaults to its
imagepathsvalidation.txt. See focus_jax/app/now.py for the layout and the landmark table.
Photos that cannot be used are reported and skipped; the command then exits with 1.
"""

from absl import flags

from focus_jax.commands import common
from focus_jax.commands import eval as _eval_cmd  # pylint: disable=unused-import  (--predictions)
from focus_jax.commands import fit as fit_cmd  # its flags: --checkpoint, --iterations, ...

SUMMARY = "NoW challenge: write predictions in the submission layout; evaluate them locally."
USAGE = ("focus-jax now predict --now_dir DIR [--image_list FILE] --out DIR | "
         "focus-jax now evaluate --predictions DIR --now_dir DIR [--image_list FILE] [--out DIR]")

NOW_DIR = flags.DEFINE_string(
    "now_dir", None, "now: the NoW dataset folder (final_release_version: iphone_pictures/, "
    "detected_face/, scans/, scans_lmks_onlypp/).")
IMAGE_LIST = flags.DEFINE_string(
    "image_list", None, "now: image list, one <subject>/<challenge>/<IMG>.jpg a line. Default: "
    "NOW_DIR/imagepathsvalidation.txt.")
# --predictions is eval's list flag (absl allows one definition per name); `now
# evaluate` takes exactly one folder. Defined here only if eval did not.
if "predictions" not in flags.FLAGS:
  flags.DEFINE_list("predictions", [], "now evaluate: the predictions folder written by "
                    "`now predict`.")


def _predictions() -> list:
  return list(flags.FLAGS["predictions"].value or [])
WITH_EXPRESSION = flags.DEFINE_bool(
    "now_with_expression", False, "now predict: keep the fitted expression in the mesh (the "
    "scans are neutral, so the challenge expects the neutral identity shape).")

ACTIONS = ("predict", "evaluate")


def _entries():
  import os  # pylint: disable=import-outside-toplevel
  from focus_jax.app import now as now_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  if not NOW_DIR.value:
    raise flags.Error("now: --now_dir is required")
  if not os.path.isdir(NOW_DIR.value):
    raise DataError(f"NoW folder not found: {NOW_DIR.value}")
  layout = now_lib.NowLayout(NOW_DIR.value)
  return layout, now_lib.read_image_list(IMAGE_LIST.value or layout.default_list())


def _landmarks_for(layout, entry, table, detector, photo):
  """(landmarks [68, 2] or None (= detect), source) of one NoW photo."""
  import os  # pylint: disable=import-outside-toplevel
  from focus_jax.app import now as now_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.app import now_box  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  subject, challenge, name = now_lib.split_entry(entry)
  for key in (entry, name):
    if key in table:
      return table[key], "given"
  box_path = os.path.join(layout.boxes, subject, challenge, os.path.splitext(name)[0] + ".npy")
  if os.path.exists(box_path):
    left, top, right, bottom = now_box.read_box(box_path)
    h, w = photo.shape[:2]
    box = (max(int(round(left)), 0), max(int(round(top)), 0),
           min(int(round(right)), w - 1), min(int(round(bottom)), h - 1))
    if box[0] >= box[2] or box[1] >= box[3]:
      raise DataError(f"{box_path}: the face box {box} lies outside the {w}x{h} photo")
    return detector.landmarks_in_box(photo, box), "now-box"
  return None, "detect"


def predict():
  import os  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from focus_jax.app import inference  # pylint: disable=import-outside-toplevel
  from focus_jax.app import now as now_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.data import landmarks as lm_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError, FocusError  # pylint: disable=import-outside-toplevel

  layout, entries = _entries()
  table = (lm_lib.read_landmarks_csv(fit_cmd.LANDMARKS.value).as_dict()
           if fit_cmd.LANDMARKS.value else {})
  out_dir = common.out_dir("now")
  rec = fit_cmd.make_reconstructor()
  lm_idx = now_lib.landmark_vertices(rec.model)
  triangles = rec.model.triangles
  detector = None
  failures, written, pending = [], [], []
  bar = tqdm(total=len(entries), desc="NoW predict", unit="img", disable=len(entries) < 2)

  def flush():
    for (_, entry), result in zip(pending, rec.run([p for p, _ in pending])):
      if WITH_EXPRESSION.value:
        verts = result.vertices_model
      else:
        verts = now_lib.neutral_vertices(rec.model, result.coefficients["shape"])
      now_lib.write_prediction(out_dir, entry, verts, triangles, verts[lm_idx])
      written.append(entry)
      bar.update(1)
    pending.clear()

  for entry in entries:
    subject, challenge, name = now_lib.split_entry(entry)
    path = os.path.join(layout.images, subject, challenge, name)
    try:
      photo = fit_cmd.read_photo(path)
      if detector is None and not any(k in table for k in (entry, name)):
        detector = inference.default_detector()
      lm, source = _landmarks_for(layout, entry, table, detector, photo)
      prep = inference.prepare(photo, landmarks=lm, detector=detector, size=rec.size, name=path,
                               landmark_source=source)
    except DataError as e:
      failures.append(e)
      bar.update(1)
      tqdm.write(f"focus-jax now: skipped {e}", file=sys.stderr)
      continue
    pending.append((prep, entry))
    if len(pending) == rec.batch_size:
      flush()
  if pending:
    flush()
  bar.close()
  print(f"focus-jax now: wrote {len(written)} predictions ({rec.method}) to {out_dir}")
  if failures:
    raise FocusError(f"{len(failures)} of {len(entries)} listed photos failed (listed above)")


def evaluate():
  import os  # pylint: disable=import-outside-toplevel
  from focus_jax.app import now as now_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  predictions = _predictions()
  if len(predictions) != 1:
    raise flags.Error("now evaluate: give one --predictions folder (written by now predict)")
  pred_dir = predictions[0]
  if not os.path.isdir(pred_dir):
    raise DataError(f"predictions folder not found: {pred_dir}")
  _, entries = _entries()
  result = now_lib.evaluate(pred_dir, NOW_DIR.value, entries)
  out_dir = common.OUT.value or os.path.join(pred_dir, "results")
  paths = now_lib.write_report(result, out_dir, title=f"NoW errors of {pred_dir}")
  print(now_lib.format_markdown(result, title=f"NoW errors of {pred_dir}"))
  print(f"focus-jax now: wrote {', '.join(paths.values())}")


def main(args):
  if len(args) != 1 or args[0] not in ACTIONS:
    raise flags.Error(f"now needs one action, 'predict' or 'evaluate'\nusage: {USAGE}")
  if args[0] == "predict":
    predict()
  else:
    evaluate()
