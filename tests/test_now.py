"""NoW workflow on a tiny fake NoW folder: files, metric with known answers, CLI."""

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from focus_jax import morphable, obj_io
from focus_jax.app import now as now_lib
from focus_jax.app import now_box
from focus_jax.commands import now as now_cmd
from focus_jax.data import detect
from focus_jax.data import landmarks as lm_lib
from focus_jax.errors import DataError
from tests import face_scenes

# (entry, subject's shape seed)
ENTRIES = (("FaMoS_A/multiview_neutral/IMG_0001.jpg", 0),
           ("FaMoS_A/selfie/IMG_0002.jpg", 0),
           ("FaMoS_B/multiview_occlusions/IMG_0101.jpg", 1))


@pytest.fixture(scope="module", autouse=True)
def parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _rotation(seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
  return q * np.sign(np.linalg.det(q))


def make_now(root, noise=0.0):
  """A NoW folder: photos, boxes, scans (the subjects' neutral meshes in another frame,
  optionally with ±noise mm along the normals) and their 7 landmarks; the image list."""
  model = face_scenes.small_model()
  idx = now_lib.landmark_vertices(model)
  layout = now_lib.NowLayout(str(root))
  truth = {}
  for k, (entry, seed) in enumerate(ENTRIES):
    subject, challenge, name = now_lib.split_entry(entry)
    s = face_scenes.face_photo(height=64, width=64, shape_seed=seed, background_seed=k)
    path = os.path.join(layout.images, subject, challenge, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    iio.imwrite(path, (s["image"] * 255 + 0.5).astype(np.uint8), quality=95)
    now_box.write_box(os.path.join(layout.boxes, subject, challenge, name[:-4] + ".npy"),
                      (10, 8, 54, 60))
    truth[entry] = s
    if subject in truth:
      continue
    verts = s["vertices"].astype(np.float64)
    truth[subject] = verts
    rot, shift = _rotation(seed + 7), np.array([30.0, -1200.0, 40.0])
    normals = face_scenes._vertex_normals(verts, s["triangles"])  # pylint: disable=protected-access
    sign = np.where(np.random.default_rng(seed).random(len(verts)) < 0.5, -1.0, 1.0)
    scan = (verts + noise * sign[:, None] * normals) @ rot.T + shift
    obj_io.write_obj(os.path.join(layout.scans, subject, f"{subject}.obj"), scan, s["triangles"])
    now_lib.write_pp(os.path.join(layout.scan_landmarks, subject, f"{subject}_picked.pp"),
                     verts[idx] @ rot.T + shift, f"{subject}.obj")
  with open(layout.default_list(), "w") as f:
    f.write("\n".join(e for e, _ in ENTRIES) + "\n")
  return layout, truth


def test_pp_box_and_list_files(tmp_path):
  pts = np.random.default_rng(0).normal(size=(7, 3)) * 50
  now_lib.write_pp(tmp_path / "a.pp", pts, "scan.obj")
  np.testing.assert_allclose(now_lib.read_pp(tmp_path / "a.pp"), pts, atol=1e-5)
  # The official reader takes the 7 points from lines 9-15 (0-based 8-14).
  lines = (tmp_path / "a.pp").read_text().splitlines()
  assert all(lines[8 + j].lstrip().startswith("<point x=") for j in range(7))
  now_box.write_box(tmp_path / "b.npy", (10, 20, 110, 140))
  assert now_box.read_box(tmp_path / "b.npy") == (10, 20, 110, 140)
  (tmp_path / "list.txt").write_text("A/selfie/I.jpg\n\nB/oops\n")
  with pytest.raises(DataError, match="list.txt, line 3: expected <subject>/<challenge>"):
    now_lib.read_image_list(tmp_path / "list.txt")
  with pytest.raises(DataError, match="image list not found"):
    now_lib.read_image_list(tmp_path / "none.txt")


def test_landmark_table_points_at_the_ibug_vertices():
  model = face_scenes.small_model()
  idx = now_lib.landmark_vertices(model)
  np.testing.assert_array_equal(idx, np.asarray(model.landmarks)[[36, 39, 42, 45, 33, 48, 54]])
  lm = np.asarray(model.mean)[idx]
  # Eye corners left to right in the image (model x grows to the viewer's right),
  # the nose bottom below the eyes and above the mouth corners.
  assert lm[0, 0] < lm[1, 0] < lm[2, 0] < lm[3, 0]
  assert lm[5, 1] < lm[4, 1] < lm[:4, 1].min() and lm[5, 0] < lm[4, 0] < lm[6, 0]


def _write_truth_predictions(pred_dir, truth):
  model = face_scenes.small_model()
  idx = now_lib.landmark_vertices(model)
  for entry, _ in ENTRIES[:2]:                          # the third stays missing
    verts = truth[now_lib.split_entry(entry)[0]]
    now_lib.write_prediction(pred_dir, entry, verts, np.asarray(model.triangles), verts[idx])


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_evaluate_known_answers(tmp_path, noise):
  layout, truth = make_now(tmp_path / "now", noise=noise)
  pred = tmp_path / "pred"
  _write_truth_predictions(str(pred), truth)
  entries = now_lib.read_image_list(layout.default_list())
  result = now_lib.evaluate(str(pred), layout.root, entries, progress=False)
  assert result["missing"] == [ENTRIES[2][0]]
  assert result["all"]["images"] == 2
  if noise == 0:
    # The true mesh in another frame: alignment undoes the frame, nothing is left.
    assert result["all"]["median"] < 1e-3 and result["all"]["mean"] < 1e-3
  else:
    # Scan points ±1 mm off the true surface (signs mixed, so no similarity absorbs
    # them) lie 1 mm from the predicted surface.
    assert abs(result["all"]["median"] - noise) < 0.05 * noise
  assert set(result["challenges"]) == {"multiview_neutral", "selfie"}
  paths = now_lib.write_report(result, str(tmp_path / "report"))
  summary = json.loads(open(paths["json"]).read())
  assert summary["all"]["median"] == pytest.approx(result["all"]["median"])
  assert "| selfie | 1 |" in open(paths["markdown"]).read()
  assert iio.imread(paths["plot"]).ndim == 3


def test_predict_then_evaluate_from_the_command_line(tmp_path, capsys):
  layout, truth = make_now(tmp_path / "now")
  model_file = tmp_path / "small.npz"
  morphable.save(face_scenes.small_model(), model_file)
  csv = tmp_path / "now_landmarks.csv"
  lm_lib.write_landmarks_csv(csv, [e for e, _ in ENTRIES],
                             np.stack([truth[e]["landmarks"] for e, _ in ENTRIES]), decimals=3)
  pred = tmp_path / "pred"
  with flagsaver.flagsaver(now_dir=layout.root, out=str(pred), model=str(model_file),
                           landmarks=str(csv), size=64, iterations=10, fit_batch=1):
    now_cmd.main(["predict"])
  model = face_scenes.small_model()
  idx = now_lib.landmark_vertices(model)
  for entry, _ in ENTRIES:
    obj_path, npy_path = now_lib.prediction_paths(str(pred), entry)
    assert obj_path.endswith(entry[:-4] + ".obj")
    verts, tris = obj_io.read_obj(obj_path)
    assert verts.shape == (model.num_vertices, 3) and len(tris) == model.num_triangles
    lm7 = np.load(npy_path)
    assert lm7.shape == (7, 3)
    np.testing.assert_allclose(lm7, verts[idx], atol=1e-4)
  with flagsaver.flagsaver(now_dir=layout.root, predictions=[str(pred)], out=None):
    now_cmd.main(["evaluate"])
  out = capsys.readouterr().out
  assert "| all | 3 |" in out
  summary = json.loads((pred / "results" / "now_errors.json").read_text())
  assert np.isfinite(summary["all"]["median"]) and summary["all"]["median"] < 10.0
  assert (pred / "results" / "cumulative_error.png").exists()


@pytest.mark.skipif(not detect.available(), reason="dlib / face-recognition-models not installed")
def test_predict_uses_the_datasets_face_boxes(tmp_path, monkeypatch):
  layout, _ = make_now(tmp_path / "now")
  model_file = tmp_path / "small.npz"
  morphable.save(face_scenes.small_model(), model_file)
  boxes = []
  original = detect.LandmarkDetector.landmarks_in_box

  def spy(self, image, box):
    boxes.append(tuple(box))
    return original(self, image, box)

  def no_detection(self, image):
    raise AssertionError("the detector ran although the dataset has a face box")

  monkeypatch.setattr(detect.LandmarkDetector, "landmarks_in_box", spy)
  monkeypatch.setattr(detect.LandmarkDetector, "find_face", no_detection)
  pred = tmp_path / "pred"
  with flagsaver.flagsaver(now_dir=layout.root, out=str(pred), model=str(model_file),
                           landmarks=None, size=64, iterations=10, fit_batch=1):
    now_cmd.main(["predict"])
  assert boxes == [(10, 8, 54, 60)] * len(ENTRIES)
  for entry, _ in ENTRIES:
    assert all(os.path.exists(p) for p in now_lib.prediction_paths(str(pred), entry))
