"""`focus-jax synth`, `eval` and `train` from the command line, on a tiny synthetic set."""

import json
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from focus_jax import images, morphable, obj_io
from focus_jax.eval import mesh_metrics
from tests.test_cli import _run

NUM = 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  """A 3-image synthetic set of a small built-in model, written by `focus-jax synth`."""
  root = tmp_path_factory.mktemp("cli_eval")
  model_path = root / "small.npz"
  model = morphable.builtin(resolution=25)
  morphable.save(model, model_path)
  data = root / "data"
  r = _run("-m", "focus_jax.cli", "synth", f"--out={data}", f"--num={NUM}", "--size=48",
           f"--model={model_path}", f"--batch={NUM}", "--seed=1", "--coverage=0.2,0.4")
  assert r.returncode == 0, r.stderr
  return root, data, model_path, model


def test_synth_writes_the_dataset(synth):
  _, data, _, model = synth
  params = np.load(data / "params.npz")
  assert params["vertices"].shape == (NUM, model.num_vertices, 3)
  assert list(params["names"]) == [f"{i:06d}.png" for i in range(NUM)]
  for i in range(NUM):
    visible = images.read_mask(data / "images" / f"{i:06d}_visible_skin_mask.png") > 0
    face = images.read_mask(data / "images" / f"{i:06d}_face_mask.png") > 0
    assert visible.shape == (48, 48) and face.any() and not (visible & ~face).any()
  assert (data / "train_landmarks.csv").exists()


def _predictions(data, folder, masks, meshes):
  """Writes `focus-jax fit`-style outputs: NAME_mask.png and NAME.obj per image."""
  folder.mkdir()
  params = np.load(data / "params.npz")
  for i, name in enumerate(params["names"]):
    stem = name[:-4]
    if masks is not None:
      shutil.copy(data / "images" / f"{stem}_{masks}.png", folder / f"{stem}_mask.png")
    if meshes is not None:
      obj_io.write_obj(folder / f"{stem}.obj", meshes(i, params["vertices"]),
                       params["triangles"])


def test_eval_perfect_and_corrupted_predictions(synth):
  root, data, model_path, model = synth
  rot = Rotation.from_euler("xyz", [170, 10, -5], degrees=True).as_matrix()
  # Perfect: the true masks; the true meshes in another similarity frame (as a
  # camera-space fit would be).
  _predictions(data, root / "perfect", "visible_skin_mask",
               lambda i, v: 1.05 * v[i] @ rot.T + [3.0, -2.0, 500.0])
  # Corrupted: every occluder pixel taken for face (the face mask as the inlier
  # mask); the mesh of the next sample.
  _predictions(data, root / "corrupt", "face_mask", lambda i, v: v[(i + 1) % NUM])
  out = root / "report"
  r = _run("-m", "focus_jax.cli", "eval", str(data), f"--predictions={root / 'perfect'}",
           str(root / "corrupt"), f"--model={model_path}", f"--out={out}")
  assert r.returncode == 0, r.stderr
  report = json.loads((out / "metrics.json").read_text())
  perfect, corrupt = report["methods"]
  assert [perfect["label"], corrupt["label"]] == ["perfect", "corrupt"]
  assert perfect["summary"]["images"] == NUM and perfect["missing"] == 0
  pm = perfect["summary"]["mask"]
  assert pm["f1"] == 1.0 and pm["accuracy"] == 1.0 and pm["occluder_iou"] == 1.0
  assert perfect["summary"]["mesh"]["mean"] < 1e-3         # OBJ keeps 6 decimals
  assert report["region"] == "ground-truth face mask" and report["align_landmarks"] == "now"

  # The corrupted scores, computed here from the ground truth.
  precision, f1, iou = [], [], []
  for i in range(NUM):
    visible = images.read_mask(data / "images" / f"{i:06d}_visible_skin_mask.png") > 0
    face = images.read_mask(data / "images" / f"{i:06d}_face_mask.png") > 0
    p = visible.sum() / face.sum()
    precision.append(p)
    f1.append(2 * p / (1 + p))
    iou.append(0.0 if (face & ~visible).any() else 1.0)
  cm = corrupt["summary"]["mask"]
  assert cm["recall"] == 1.0
  assert cm["precision"] == pytest.approx(np.mean(precision), abs=1e-9)
  assert cm["f1"] == pytest.approx(np.mean(f1), abs=1e-9)
  assert cm["occluder_iou"] == pytest.approx(np.mean(iou), abs=1e-9)
  params = np.load(data / "params.npz")
  v, tri = params["vertices"].astype(np.float64), params["triangles"]
  # NoW's seven points (0-based iBUG eye corners, nose tip, mouth corners).
  lm = np.asarray(model.landmarks)[[36, 39, 42, 45, 33, 48, 54]]
  dist = np.concatenate([mesh_metrics.now_error(v[(i + 1) % NUM], tri, v[i], v[(i + 1) % NUM][lm],
                                                v[i][lm])["distances"] for i in range(NUM)])
  mesh = corrupt["summary"]["mesh"]
  assert mesh["median"] == pytest.approx(np.median(dist), abs=1e-3) and mesh["median"] > 0.1
  assert mesh["mean"] == pytest.approx(np.mean(dist), abs=1e-3)
  curve = corrupt["summary"]["curve"]
  assert curve["fractions"][-1] >= 0.99 and curve["thresholds"] == perfect["summary"]["curve"][
      "thresholds"]
  table = (out / "metrics.md").read_text()
  assert "| perfect | 3 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 0.00 |" in table
  assert (out / "cumulative_error.png").exists() and "| method |" in r.stdout


def test_eval_bad_input_fails_cleanly(synth):
  root, data, model_path, _ = synth
  out = root / "no_report"
  r = _run("-m", "focus_jax.cli", "eval", str(data), str(root / "missing"),
           f"--model={model_path}", f"--out={out}")
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert f"prediction folder not found: {root / 'missing'}" in r.stderr
  assert not out.exists()


def test_train_help_and_config_resolution(tmp_path):
  r = _run("-m", "focus_jax.cli", "train", "--help")
  assert r.returncode == 0
  for flag in ("--config", "--workdir", "--data_dir", "--em_steps", "--unet_width",
               "--image_size", "--w_binary", "--compilation_cache", "--seed"):
    assert flag in r.stdout, flag
  flagfile = tmp_path / "my.flags"
  flagfile.write_text("# a config\n--image_size=48\n--unet_width=6\n--encoder_depth=18\n")
  r = _run("-m", "focus_jax.cli", "train", f"--config={flagfile}", "--unet_width=10",
           "--seed=7", "--dry_run", "--data_dir=d", "--workdir=w", "--em_steps=3")
  assert r.returncode == 0, r.stderr
  plan = json.loads(r.stdout[r.stdout.index("{"):])
  config = plan["config"]
  # The file over the paper defaults, the command line over the file.
  assert config["image_size"] == 48 and config["encoder_depth"] == 18
  assert config["unet_width"] == 10 and config["seed"] == 7 and config["batch_size"] == 12
  assert plan["steps"]["em"] == 3 and plan["data_dir"] == "d"
