"""``focus-jax fit``: outputs on synthetic photos, and every kind of bad input.

Most cases call the command's ``main`` in this process (one compilation of the
fit, shared with tests/test_inference.py and tests/test_now.py); one runs the
console command in a subprocess, as a user does.
"""

import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from focus_jax import morphable, obj_io
from focus_jax.commands import fit as fit_cmd
from focus_jax.data import detect
from focus_jax.data import landmarks as lm_lib
from focus_jax.errors import DataError, FocusError
from tests import face_scenes

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(size=64, iterations=10, fit_batch=1)   # the config tests/test_inference.py uses


@pytest.fixture(scope="module", autouse=True)
def parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("model") / "small.npz"
  morphable.save(face_scenes.small_model(), path)
  return str(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """A folder with two synthetic face photos and their landmark CSV."""
  folder = tmp_path_factory.mktemp("photos")
  scenes = {}
  for i, (h, w) in enumerate([(64, 64), (72, 80)]):
    s = face_scenes.face_photo(height=h, width=w, shape_seed=i)
    iio.imwrite(folder / f"face{i}.png", (s["image"] * 255 + 0.5).astype(np.uint8))
    scenes[f"face{i}"] = s
  csv = folder.parent / f"{folder.name}_landmarks.csv"
  lm_lib.write_landmarks_csv(csv, [f"face{i}.png" for i in range(2)],
                             np.stack([scenes[f"face{i}"]["landmarks"] for i in range(2)]),
                             decimals=3)
  return folder, str(csv), scenes


def run_fit(args, **values):
  with flagsaver.flagsaver(**{**FAST, **values}):
    fit_cmd.main([str(a) for a in args])


def test_fit_writes_the_five_outputs_per_photo(photos, model_file, tmp_path):
  folder, csv, scenes = photos
  out = tmp_path / "out"
  run_fit([folder], out=str(out), model=model_file, landmarks=csv)
  model = face_scenes.small_model()
  for name, s in scenes.items():
    h, w = s["image"].shape[:2]
    render = iio.imread(out / f"{name}_render.png")
    mask = iio.imread(out / f"{name}_mask.png")
    assert render.shape == (h, w, 3) and render.dtype == np.uint8
    assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    inlier, face = mask == 255, s["face"]
    # A clean synthetic face: the mask covers most of it and little else.
    assert (inlier & face).sum() / face.sum() > 0.6
    assert (inlier & ~face).sum() < 0.1 * face.sum()
    verts, tris = obj_io.read_obj(out / f"{name}.obj")
    assert verts.shape == (model.num_vertices, 3) and len(tris) == model.num_triangles
    assert obj_io.read_obj_uv(out / f"{name}.obj") is not None
    assert np.all(verts[:, 2] > 500)                      # camera space: ~1 m in front
    with np.load(out / f"{name}_params.npz") as p:
      assert p["shape"].shape == (model.num_shape,) and p["light"].shape == (9, 3)
      np.testing.assert_allclose(p["vertices_camera"], verts, atol=1e-3)
    table = lm_lib.read_landmarks_csv(out / f"{name}_landmarks.csv")
    assert table.names == (f"{name}.png",)
    err = np.linalg.norm(table.landmarks[0] - s["landmarks"], axis=1)
    assert np.nanmedian(err) < 2.5                        # integer-rounded CSV
  assert not [n for n in os.listdir(out) if n.startswith(".partial")]


def test_one_bad_photo_among_good_ones(photos, model_file, tmp_path, capsys):
  folder, csv, _ = photos
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  for n in ("face0.png", "face1.png"):
    (mixed / n).write_bytes((folder / n).read_bytes())
  (mixed / "broken.png").write_bytes(b"not a png at all")
  out = tmp_path / "out"
  with pytest.raises(FocusError, match="1 of 3 images failed"):
    run_fit([mixed], out=str(out), model=model_file, landmarks=csv)
  assert f"{mixed / 'broken.png'}" in capsys.readouterr().err
  written = sorted(os.listdir(out))
  assert written == sorted(f"face{i}{s}" for i in range(2) for s in (
      ".obj", "_params.npz", "_render.png", "_mask.png", "_landmarks.csv"))


def test_bad_inputs_stop_with_the_file_named(photos, model_file, tmp_path):
  folder, csv, _ = photos
  out = tmp_path / "out"
  with pytest.raises(DataError, match=f"not found: {tmp_path}/nope.jpg"):
    run_fit([folder, tmp_path / "nope.jpg"], out=str(out), model=model_file, landmarks=csv)
  text = tmp_path / "notes.txt"
  text.write_text("hello")
  with pytest.raises(DataError, match=f"{text}: cannot read the image, is it a photo"):
    run_fit([text], out=str(out), model=model_file, landmarks=csv)
  bad_csv = tmp_path / "bad.csv"
  bad_csv.write_text("face0.png," + ",".join(["1"] * 134) + "\n")
  with pytest.raises(DataError, match=f"{bad_csv}, line 1: expected .* 136 .* got 134"):
    run_fit([folder], out=str(out), model=model_file, landmarks=str(bad_csv))
  empty = tmp_path / "run"
  empty.mkdir()
  with pytest.raises(FocusError, match=f"{empty}: no readable training checkpoint"):
    run_fit([folder], out=str(out), landmarks=csv, checkpoint=str(empty))
  assert not out.exists()


@pytest.mark.skipif(not detect.available(), reason="dlib / face-recognition-models not installed")
def test_photo_without_face_or_landmarks(model_file, tmp_path):
  blank = tmp_path / "wall.png"
  iio.imwrite(blank, np.full((80, 100, 3), 128, np.uint8))
  with pytest.raises(DataError, match=f"{blank}: no face found"):
    run_fit([blank], out=str(tmp_path / "out"), model=model_file)
  assert not (tmp_path / "out").exists()


def test_console_command_reports_one_line_and_exits_1(model_file, tmp_path):
  text = tmp_path / "notes.jpg"
  text.write_text("not an image")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")

  def run(*extra):
    r = subprocess.run([sys.executable, "-m", "focus_jax.cli", "fit", str(text),
                        f"--out={tmp_path / 'out'}", "--size=64", f"--model={model_file}",
                        *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return r.returncode, [l for l in r.stderr.splitlines() if l.strip()]

  rc, lines = run()
  assert rc == 1 and len(lines) == 1, lines
  assert lines[0].startswith(f"focus-jax fit: error: {text}: cannot read the image, is it a "
                             "photo? (")
  rc, lines = run(f"--landmarks={tmp_path / 'none.csv'}")
  assert (rc, lines) == (1, [f"focus-jax fit: error: landmark file not found: "
                             f"{tmp_path / 'none.csv'}"])
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not detect.available(), reason="dlib / face-recognition-models not installed")
def test_real_photos_astronaut_and_occluded_faces(shared_dir, tmp_path):
  skimage_data = pytest.importorskip("skimage.data")
  photos = tmp_path / "photos"
  photos.mkdir()
  iio.imwrite(photos / "astronaut.png", skimage_data.astronaut())
  occluded = shared_dir / "data" / "occluded_faces"
  if occluded.is_dir():
    for sub in ("id2", "id3", "id4"):
      for f in sorted((occluded / sub).glob("*.jpg"))[:1]:
        (photos / f"{sub}_{f.name}").write_bytes(f.read_bytes())
  out = tmp_path / "out"
  # The built-in model at the default 224-pixel crop, as a user runs it.
  with flagsaver.flagsaver(out=str(out), size=224, iterations=200, fit_batch=4,
                           crop_fallback=True, model=None, landmarks=None):
    fit_cmd.main([str(photos)])
  for photo in sorted(photos.iterdir()):
    name = photo.stem
    image = iio.imread(photo)[..., :3]
    mask = iio.imread(out / f"{name}_mask.png") == 255
    render = iio.imread(out / f"{name}_render.png")
    with np.load(out / f"{name}_params.npz") as p:
      detected = p["input_landmarks"]
    fitted = lm_lib.read_landmarks_csv(out / f"{name}_landmarks.csv").landmarks[0]
    eyes = np.linalg.norm(detected[36] - detected[45])
    # The fitted landmarks follow the detected ones (median within 10 % of the eye
    # distance), the mask lies on the face (inside the landmarks' box, grown by 25 %)
    # and the render changed the photo only there.
    assert np.nanmedian(np.linalg.norm(fitted - detected, axis=1)) < 0.1 * eyes, name
    lo, hi = detected.min(0), detected.max(0)
    grow = 0.25 * (hi - lo)
    h, w = mask.shape
    cols, rows = np.arange(w) + 0.5, np.arange(h) + 0.5
    box = (((rows >= lo[1] - 2 * grow[1]) & (rows <= hi[1] + grow[1]))[:, None]
           & ((cols >= lo[0] - grow[0]) & (cols <= hi[0] + grow[0]))[None, :])
    assert mask.sum() > 0.2 * np.prod(hi - lo), name
    assert not (mask & ~box).any(), name
    np.testing.assert_array_equal(render[~box], image[~box])
    assert (render[mask] != image[mask]).any(), name
