"""Synthetic occluded faces: reproducible by seed, masks and mesh against an independent NumPy
reference, dataset files."""

import json
import os
import sys

import numpy as np
import pytest

from focus_jax import morphable
from focus_jax.data import dataset, landmarks, occluders, synthetic
from focus_jax.render import camera
from focus_jax.errors import DataError

sys.path.insert(0, os.path.dirname(__file__))
import numpy_raster  # noqa: E402
from render_testing import rotation  # noqa: E402

SIZE = 64
BATCH = 4


@pytest.fixture(scope="module")
def model():
  return morphable.builtin(resolution=25)


@pytest.fixture(scope="module")
def config():
  return synthetic.SyntheticConfig(size=SIZE)


@pytest.fixture(scope="module")
def samples(model, config):
  gen = synthetic.SyntheticFaces(model, config, seed=3, batch_size=BATCH)
  return gen.generate(range(8))


def _equal(a, b):
  np.testing.assert_array_equal(a.image, b.image)
  for key in ("visible_mask", "face_mask", "occluder_mask", "detail", "detail_labels",
              "landmarks", "vertices"):
    np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
  for key in a.params:
    np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)
  assert a.info == b.info


def test_reproducible_by_seed_and_independent_of_batching(model, config, samples):
  gen = synthetic.SyntheticFaces(model, config, seed=3, batch_size=BATCH)
  again = gen.generate([5, 2, 7])               # other batch companions and positions
  _equal(again[0], samples[5])
  _equal(again[1], samples[2])
  _equal(gen.sample(7), samples[7])
  other = synthetic.SyntheticFaces(model, config, seed=4, batch_size=BATCH).params(2)
  assert not np.array_equal(other["shape"], samples[2].params["shape"])


def test_shapes_ranges_and_ground_truth(model, samples):
  for s in samples:
    assert s.image.shape == (SIZE, SIZE, 3) and s.image.dtype == np.float32
    assert 0.0 <= s.image.min() and s.image.max() <= 1.0
    assert s.vertices.shape == (model.num_vertices, 3)
    assert s.landmarks.shape == (68, 2) and np.isfinite(s.landmarks).all()
    assert s.params["light"].shape == (9, 3)
    a = np.degrees(s.params["angles"])
    assert abs(a[0]) <= 20 and abs(a[1]) <= 45 and abs(a[2]) <= 15
    # visible = face and not occluder
    np.testing.assert_array_equal(s.visible_mask, s.face_mask & ~s.occluder_mask)
    assert not (s.visible_mask & ~s.face_mask).any()
    assert s.face_mask.sum() > 0.15 * SIZE * SIZE
    # coverage as drawn (10-40 %), measured on the face pixels
    cov = (s.face_mask & s.occluder_mask).sum() / s.face_mask.sum()
    assert cov == pytest.approx(s.info["coverage"])
    assert 0.1 - 0.04 <= cov <= 0.4 + 0.08, s.info
    assert s.info["occluders"]
    # detail lives on the face only
    assert (s.detail[~s.face_mask] == 0).all() and (s.detail_labels[~s.face_mask] == 0).all()
    json.dumps(s.info)
  errors = [abs(s.info["coverage"] - s.info["target_coverage"]) for s in samples]
  assert np.median(errors) < 0.03


def test_masks_and_mesh_match_an_independent_numpy_reference(model, samples):
  """Each sample's mesh, camera-space mesh, landmarks and face mask, recomputed in
  NumPy from its parameters: vertices as mean + basis products, the pose as
  F·Rx·Ry·Rz·v + t + (0, 0, 1000) mm, and visibility by a separate z-buffer
  rasterizer (tests/numpy_raster.py). Masks may differ only at pixel centres
  within 1e-4 px of a triangle edge, where float rounding decides."""
  mean, triangles = np.asarray(model.mean, np.float64), np.asarray(model.triangles)
  intr = camera.Intrinsics.reference(SIZE)
  near_edge = 0
  for s in samples:
    p = {k: np.asarray(v, np.float64) for k, v in s.params.items()}
    verts = (mean + np.einsum("k,kvc->vc", p["shape"], np.asarray(model.shape_basis))
             + np.einsum("k,kvc->vc", p["expression"], np.asarray(model.expression_basis)))
    np.testing.assert_allclose(s.vertices, verts, atol=1e-3)
    rot = np.diag([1.0, -1.0, -1.0]) @ rotation(*p["angles"])
    cam = verts @ rot.T + p["translation"] + [0.0, 0.0, 1000.0]
    np.testing.assert_allclose(s.vertices_camera, cam, atol=1e-3)
    tid, _, edge = numpy_raster.rasterize(cam, triangles, intr, cull_backfaces=True)
    face = tid >= 0
    differ = s.face_mask != face
    assert not (differ & (edge > 1e-4)).any(), np.argwhere(differ & (edge > 1e-4))
    near_edge += int(differ.sum())
    assert 0.15 * SIZE * SIZE < face.sum()
    np.testing.assert_array_equal(s.visible_mask, s.face_mask & ~s.occluder_mask)
    # Landmarks: the projected landmark vertices of the returned mesh.
    defined = np.asarray(model.landmarks) >= 0
    lm = numpy_raster.project(cam[np.asarray(model.landmarks)[defined]], intr)
    np.testing.assert_allclose(s.landmarks[defined], lm, atol=1e-2)
  assert near_edge <= 2          # the tolerance excuses rounding, not a habit


def test_unmodelled_detail_appears(model, config):
  cfg = synthetic.SyntheticConfig(size=SIZE, detail_probability=(
      ("brows", 1.0), ("lips", 1.0), ("beard", 1.0), ("freckles", 1.0)),
      occlusion_probability=0.0)
  s = synthetic.SyntheticFaces(model, cfg, seed=0, batch_size=BATCH).sample(1)
  assert set(s.info["details"]) == {"brows", "lips", "beard", "freckles"}
  assert s.occluder_mask.sum() == 0 and s.info["coverage"] == 0.0
  np.testing.assert_array_equal(s.visible_mask, s.face_mask)
  for bit in synthetic.DETAIL_BITS.values():
    assert ((s.detail_labels & bit) > 0).any()
  assert s.detail.max() > 0.5


def test_write_dataset_in_reference_layout(tmp_path, model, config):
  gen = synthetic.SyntheticFaces(model, config, seed=3, batch_size=BATCH)
  result = synthetic.write_dataset(str(tmp_path), gen, num=4, progress=False)
  ds = dataset.read_reference(tmp_path / "images", "train")   # indices 0-3 are train
  assert ds.names == [f"{i:06d}.png" for i in range(4)]
  with pytest.raises(DataError, match="empty"):
    dataset.read_reference(tmp_path / "images", "val")
  sample = gen.sample(2)
  ex = ds.load(2, size=None)
  np.testing.assert_array_equal(ex["mask"] > 0.5, sample.visible_mask)
  np.testing.assert_allclose(ex["image"], sample.image, atol=1 / 255)
  # CSV landmarks are integer pixel centres of the reference layout (+-0.5 px)
  np.testing.assert_allclose(ds[2].landmarks, sample.landmarks, atol=0.5 + 1e-4)
  params = np.load(result["paths"]["params"])
  np.testing.assert_array_equal(params["shape"][2], sample.params["shape"])
  np.testing.assert_array_equal(params["landmarks"][2], sample.landmarks)
  assert params["vertices"].shape == (4, model.num_vertices, 3)
  assert json.loads(str(params["info"][2]))["index"] == 2
  assert len(landmarks.read_landmarks_csv(result["paths"]["train"])) == 4


def test_split_assignment():
  splits = [synthetic.split_of(i) for i in range(100)]
  assert splits.count("train") == 80 and splits.count("val") == 10
  assert synthetic.split_of(1234) == synthetic.split_of(34)


def test_occluders_hit_the_target_coverage():
  rng = np.random.default_rng(0)
  face = np.zeros((96, 96), bool)
  yy, xx = np.mgrid[0:96, 0:96]
  face[((xx - 48) / 28.0) ** 2 + ((yy - 50) / 36.0) ** 2 <= 1] = True
  lm = np.full((68, 2), np.nan)
  lm[36], lm[39], lm[42], lm[45] = (30, 38), (42, 38), (54, 38), (66, 38)
  lm[30], lm[48], lm[54] = (48, 55), (38, 70), (58, 70)
  frame = occluders.face_frame(lm, face)
  assert frame.scale == pytest.approx(24.0)
  image = np.zeros((96, 96, 3), np.float32)
  for kind in ("shape", "hand", "mask"):
    for target in (0.1, 0.25, 0.4):
      _, occ, cov, desc = occluders.occlude(rng, image, face, frame, target, kinds=(kind,),
                                            max_layers=1)
      assert desc[0].startswith(kind)
      assert cov == pytest.approx((occ & face).sum() / face.sum())
      assert abs(cov - target) < 0.05, (kind, target, cov)


def test_real_occluder_images_from_a_folder(tmp_path):
  import imageio.v3 as iio
  rgba = np.zeros((40, 60, 4), np.uint8)
  yy, xx = np.mgrid[0:40, 0:60]
  rgba[..., 0] = 200
  rgba[..., 3] = 255 * ((((xx - 30) / 28.0) ** 2 + ((yy - 20) / 18.0) ** 2) <= 1)
  iio.imwrite(tmp_path / "disc.png", rgba)
  iio.imwrite(tmp_path / "no_alpha.png", rgba[..., :3])         # ignored
  found = occluders.load_occluder_images(str(tmp_path))
  assert [name for name, _ in found] == ["disc.png"]
  face = np.zeros((64, 64), bool)
  face[10:54, 14:50] = True
  frame = occluders.face_frame(np.full((68, 2), np.nan), face)
  image, occ, cov, desc = occluders.occlude(np.random.default_rng(0), np.zeros((64, 64, 3)),
                                            face, frame, 0.3, kinds=("image",), images=found,
                                            max_layers=1)
  assert desc == ["image:disc.png"] and abs(cov - 0.3) < 0.05
  assert image[occ].mean(0)[0] > 0.5 and image[occ].mean(0)[1] < 0.1
  with pytest.raises(DataError, match="occluder folder not found"):
    occluders.load_occluder_images(str(tmp_path / "nothing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no RGBA"):
    occluders.load_occluder_images(str(tmp_path / "empty"))


@pytest.mark.slow
def test_pipeline_over_synthetic_faces(model, config, samples):
  from focus_jax.data import pipeline
  gen = synthetic.SyntheticFaces(model, config, seed=3, num=8, batch_size=BATCH)
  ex = gen.load(6)    # a batch of one: equal up to float rounding across batch sizes
  np.testing.assert_allclose(ex["image"], samples[6].image, atol=1e-5)
  np.testing.assert_array_equal(ex["mask"] > 0.5, samples[6].visible_mask)
  pipe = pipeline.Pipeline(gen, batch_size=2, process_index=0, process_count=1, num_threads=2)
  batch = next(pipe)
  pipe.close()
  assert batch["image"].shape == (2, SIZE, SIZE, 3) and batch["mask"].shape == (2, SIZE, SIZE)


@pytest.mark.slow
def test_surrey_face_model_samples(shared_dir):
  path = shared_dir / "models" / "sfm" / "sfm_shape_3448.bin"
  if not path.is_file():
    pytest.skip(f"shared model not available: {path}")
  sfm = morphable.load(str(path))
  gen = synthetic.SyntheticFaces(sfm, synthetic.SyntheticConfig(size=SIZE), seed=0,
                                 batch_size=2)
  s = gen.sample(0)
  undefined = ~np.asarray(morphable.landmark_mask(sfm))
  assert np.isnan(s.landmarks[undefined]).all() and np.isfinite(s.landmarks[~undefined]).all()
  np.testing.assert_array_equal(s.visible_mask, s.face_mask & ~s.occluder_mask)
