"""``focus-jax eval``: score predictions against a dataset with ground truth.

DATA_DIR holds the ground truth: images (in DATA_DIR/images or DATA_DIR) with
<stem>_visible_skin_mask.png (255 = visible face), optionally <stem>_face_mask.png
(the region the mask metrics cover) and params.npz with the ground-truth meshes —
the layout `focus-jax synth` writes. Each prediction folder (--predictions) holds
what `focus-jax fit` writes: <stem>_mask.png and <stem>.obj per image; several
folders (methods) are compared in one table and one plot.

Writes OUT/metrics.md (summary table, one row per method, and per-image rows),
OUT/metrics.json (everything, with the cumulative-error curves) and
OUT/cumulative_error.png (with meshes), and prints the summary table.

Example:
  focus-jax synth --out data/synth --num 20 --size 128 --splits=0,0,1   # all in test
  focus-jax fit data/synth/images --landmarks data/synth/test_landmarks.csv --out pred/robust
  focus-jax eval data/synth --predictions pred/robust,pred/other --out eval/synth
"""

from absl import flags

from focus_jax.commands import common

SUMMARY = "Score fit outputs against ground-truth masks and meshes: markdown + JSON + plots."
USAGE = ("focus-jax eval DATA_DIR --predictions DIR[,DIR...] [--out DIR] [--labels A,B,...]  "
         "(or: focus-jax eval DATA_DIR PRED_DIR [PRED_DIR...])")

# Shared with `focus-jax now evaluate` (focus_jax/commands/now.py uses this flag).
PREDICTIONS = flags.DEFINE_list(
    "predictions", [], "Prediction folder(s), comma separated. eval: `focus-jax fit --out` "
    "folders, one table row and one curve each (more may follow DATA_DIR as positional "
    "arguments; they come after these); now evaluate: the `now predict` folder.")
LABELS = flags.DEFINE_list(
    "labels", [], "eval: a name per prediction folder for the table and the plot (default: the "
    "folder names).")
ALIGN = flags.DEFINE_enum(
    "align_landmarks", "now", ["now", "all"], "eval: landmark vertices of the initial 3D "
    "alignment: 'now' = NoW's seven (eye corners, nose tip, mouth corners), 'all' = every "
    "landmark vertex of the model; ICP refines it either way.")
MAX_ERROR = flags.DEFINE_float(
    "max_error", None, "eval: end of the cumulative-error curve in mm (default: the 99th "
    "percentile of the errors, rounded up).", lower_bound=0.0)


def main(args):
  if not args:
    raise flags.Error(f"usage: {USAGE}")
  data_dir, predictions = args[0], list(PREDICTIONS.value) + list(args[1:])
  if not predictions:
    raise flags.Error("eval: give at least one prediction folder (--predictions DIR)")
  if LABELS.value and len(LABELS.value) != len(predictions):
    raise flags.Error(f"--labels: {len(LABELS.value)} labels for {len(predictions)} "
                      "prediction folders")
  from focus_jax.app import evaluate  # pylint: disable=import-outside-toplevel
  model = common.load_model() if common.MODEL.value else None
  report = evaluate.evaluate(data_dir, predictions, labels=LABELS.value or None,
                             model=model, max_error=MAX_ERROR.value,
                             align_landmarks=ALIGN.value)
  paths = evaluate.write_report(report, common.out_dir("eval"))
  text = evaluate.markdown(report)
  print(text.split("\n## ")[0].rstrip())
  for m in report["methods"]:
    if m["missing"]:
      print(f"{m['label']}: no prediction for {m['missing']} of {report['images']} images")
  for path in paths.values():
    print(f"wrote {path}")
