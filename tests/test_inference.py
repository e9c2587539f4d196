"""focus_jax.app.inference: photo -> aligned crop -> fit -> back to the photo; OBJ files."""

import dataclasses
import os

import numpy as np
import pytest
from scipy import ndimage

from focus_jax import fitting, obj_io
from focus_jax.app import inference
from focus_jax.data import detect
from focus_jax.errors import DataError
from focus_jax.render import camera
from tests import face_scenes

SIZE = 64
# The fit command's config for --iterations=10 (same FitConfig => one compilation
# shared with tests/test_cli_fit.py and tests/test_now.py in one pytest run).
ITERATIONS = 10


def fast_config():
  base = fitting.FitConfig()
  return dataclasses.replace(base, steps=-(-ITERATIONS // base.rounds), robust=True)


@pytest.fixture(scope="module")
def scene():
  # A non-square photo whose face is off-centre: the crop <-> photo maps matter.
  return face_scenes.face_photo(height=80, width=72, translation=(12.0, 6.0, 60.0))


@pytest.fixture(scope="module")
def rec(scene):
  return inference.reconstruct(scene["image"], face_scenes.small_model(),
                               landmarks=scene["landmarks"], config=fast_config(), size=SIZE,
                               name="scene")


def test_reconstruction_lands_on_the_face_in_photo_pixels(scene, rec):
  h, w = scene["image"].shape[:2]
  assert rec.render.shape == (h, w, 3) and rec.inlier_mask.shape == (h, w)
  assert rec.inlier_mask.dtype == bool
  # The fit's mask may pass the rendered outline by its contour margin (crop pixels),
  # never further.
  margin = fitting.FitConfig().estep.contour_margin / rec.alignment.scale
  near = ndimage.binary_dilation(rec.face_mask, iterations=int(np.ceil(margin)) + 1)
  assert not (rec.inlier_mask & ~near).any()
  truth = scene["face"]
  iou = (rec.face_mask & truth).sum() / (rec.face_mask | truth).sum()
  assert iou > 0.75, iou
  # Nothing is occluded: most of the true face is explained, little background is.
  assert (rec.inlier_mask & truth).sum() / truth.sum() > 0.6
  assert (rec.inlier_mask & ~truth).sum() < 0.1 * truth.sum()
  err = np.linalg.norm(rec.landmarks - scene["landmarks"], axis=1)
  assert np.nanmedian(err) < 2.0, np.nanmedian(err)
  # Away from the face the render is the photo itself.
  far = ~ndimage.binary_dilation(rec.face_mask, iterations=2)
  assert np.abs(rec.render[far] - scene["image"][far]).max() < 1e-5


def test_mesh_landmarks_and_coefficients_agree(rec):
  model = face_scenes.small_model()
  assert rec.vertices.shape == (model.num_vertices, 3)
  assert rec.triangles.shape == (model.num_triangles, 3) and rec.uv.shape == (model.num_vertices, 2)
  assert rec.coefficients["shape"].shape == (model.num_shape,)
  assert rec.coefficients["light"].shape == (9, 3)
  # Camera-space landmark vertices, projected by the crop camera and mapped by the
  # inverse alignment, are the reported photo landmarks.
  lm_idx = np.asarray(model.landmarks)
  px = np.asarray(camera.project(rec.vertices[lm_idx], rec.intrinsics))
  back = rec.alignment.to_original(px)
  np.testing.assert_allclose(back, rec.landmarks, atol=1e-3)
  # And the camera-space mesh is the model-space mesh under the fitted pose.
  cam = np.asarray(camera.to_camera(rec.vertices_model, rec.coefficients["angles"],
                                    rec.coefficients["translation"]))
  np.testing.assert_allclose(cam, rec.vertices, atol=1e-2)


def test_write_outputs_is_all_or_nothing(rec, tmp_path, monkeypatch):
  paths = inference.write_outputs(rec, str(tmp_path / "ok"), "sub/face", image_path="face.png")
  assert sorted(os.listdir(tmp_path / "ok" / "sub")) == sorted(
      os.path.basename(p) for p in paths.values())
  verts, tris = obj_io.read_obj(paths["mesh"])
  np.testing.assert_allclose(verts, rec.vertices, atol=1e-5)
  assert obj_io.read_obj_uv(paths["mesh"]).shape == (len(verts), 2)

  from focus_jax import images

  def broken(*_):
    raise OSError("disk full")

  monkeypatch.setattr(images, "save_png", broken)
  with pytest.raises(OSError):
    inference.write_outputs(rec, str(tmp_path / "bad"), "face")
  assert os.listdir(tmp_path / "bad") == []      # no partial files, no temp folder


def test_prepare_rejects_bad_landmarks(scene):
  with pytest.raises(DataError, match="p.png: landmarks must be"):
    inference.prepare(scene["image"], landmarks=np.zeros((60, 2)), name="p.png")
  lm = scene["landmarks"].copy()
  lm[36] = np.nan                                        # an eye corner
  with pytest.raises(DataError, match="p.png: the eye corners"):
    inference.prepare(scene["image"], landmarks=lm, name="p.png")


@pytest.mark.skipif(not detect.available(), reason="dlib / face-recognition-models not installed")
def test_no_face_and_no_landmarks_names_the_image():
  blank = np.full((96, 128, 3), 0.5, np.float32)
  with pytest.raises(DataError, match="blank.jpg: no face found"):
    inference.prepare(blank, name="blank.jpg")


def test_obj_roundtrip_and_other_writers_forms(tmp_path):
  v = np.random.default_rng(0).normal(size=(5, 3))
  f = np.array([[0, 1, 2], [2, 3, 4]])
  obj_io.write_obj(tmp_path / "m.obj", v, f, uv=np.zeros((5, 2)), header="test")
  v2, f2 = obj_io.read_obj(tmp_path / "m.obj")
  np.testing.assert_allclose(v2, v, atol=1e-6)
  np.testing.assert_array_equal(f2, f)
  # Quads (fan-triangulated), slashes and negative indices, as other tools write.
  (tmp_path / "q.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\n"
                                  "f 1//1 2//1 3//1 4//1\nf -4 -3 -1\n")
  _, fq = obj_io.read_obj(tmp_path / "q.obj")
  np.testing.assert_array_equal(fq, [[0, 1, 2], [0, 2, 3], [0, 1, 3]])
  (tmp_path / "bad.obj").write_text("v 0 0 0\nf 1 2 3\n")
  with pytest.raises(DataError, match="bad.obj, line 2"):
    obj_io.read_obj(tmp_path / "bad.obj")


@pytest.mark.slow
def test_batched_reconstruction_equals_one_at_a_time(scene):
  model = face_scenes.small_model()
  photos = [face_scenes.face_photo(shape_seed=s, height=64, width=64) for s in range(3)]
  batch = inference.reconstruct_batch([p["image"] for p in photos], model,
                                      landmarks=[p["landmarks"] for p in photos],
                                      config=fast_config(), size=SIZE, batch_size=2)
  for p, b in zip(photos, batch):
    one = inference.reconstruct(p["image"], model, landmarks=p["landmarks"],
                                config=fast_config(), size=SIZE)
    np.testing.assert_allclose(b.vertices, one.vertices, atol=1e-2)
    assert (b.inlier_mask != one.inlier_mask).mean() < 0.01


@pytest.mark.slow
def test_checkpoint_path_runs_the_trained_networks(scene, tmp_path):
  from focus_jax.train import checkpoint as ckpt_lib
  from focus_jax.train import config as config_lib
  from focus_jax.train import state as state_lib
  cfg = config_lib.tiny()
  nets = state_lib.make_networks(cfg, axis_name=None)
  saver = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"), cfg)
  saver.save(0, state_lib.to_host(state_lib.init_state(cfg, nets)))
  saver.close()
  rec = inference.reconstruct(scene["image"], None, landmarks=scene["landmarks"],
                              checkpoint=str(tmp_path / "run"))
  assert rec.method == "checkpoint" and rec.crop.shape == (cfg.image_size,) * 2 + (3,)
  assert rec.render.shape == scene["image"].shape and rec.inlier_mask.shape == scene["face"].shape
  assert rec.vertices.shape == (nets.model.num_vertices, 3)
  assert not (rec.inlier_mask & ~rec.face_mask).any()
  # The pose recovered from the network's meshes reproduces its camera-space mesh.
  cam = np.asarray(camera.to_camera(rec.vertices_model, rec.coefficients["angles"],
                                    rec.coefficients["translation"]))
  np.testing.assert_allclose(cam, rec.vertices, atol=1e-2)
  # An untrained encoder has a zero head: the mean face, framed by the alignment
  # where the photo's face is (the template is the mean face's five points).
  iou = (rec.face_mask & scene["face"]).sum() / (rec.face_mask | scene["face"]).sum()
  assert iou > 0.5, iou
