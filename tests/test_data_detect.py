"""Automatic landmarks with dlib (optional extra) and their CSV cache."""

import copy
import os
import stat

import numpy as np
import pytest

from focus_jax import images
from focus_jax.data import dataset, detect, landmarks
from focus_jax.errors import DataError

dlib = pytest.importorskip("dlib", reason="the optional detect extra (dlib-bin) is not "
                           "installed: pip install 'focus-jax[detect]'")
if not detect.available():
  pytest.skip("face-recognition-models (dlib's landmark models) is not installed: "
              "pip install 'focus-jax[detect]'", allow_module_level=True)


@pytest.fixture(scope="module")
def detector():
  return detect.LandmarkDetector(detectors=("hog",), upsample=0)


@pytest.fixture(scope="module")
def face_photo():
  skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the test photo")
  return skdata.astronaut()[:260, 100:360]       # 260 x 260, one frontal face


def _noise(size, seed=0):
  return (np.random.default_rng(seed).uniform(size=(size, size, 3)) * 255).astype(np.uint8)


def test_detects_the_astronaut_in_project_coordinates(detector, face_photo):
  det = detector.detect(face_photo)
  assert det.method == "hog" and det.landmarks.shape == (68, 2)
  raw = detector._predictor(face_photo, dlib.rectangle(*det.box))
  np.testing.assert_array_equal(det.landmarks[0], [raw.part(0).x + 0.5, raw.part(0).y + 0.5])
  l, t, r, b = det.box
  inside = ((det.landmarks[17:, 0] > l) & (det.landmarks[17:, 0] < r)
            & (det.landmarks[17:, 1] > t) & (det.landmarks[17:, 1] < b))
  assert inside.all()
  eyes = det.landmarks[36:48].mean(0)
  mouth = det.landmarks[48:68].mean(0)
  assert eyes[1] < mouth[1]


def test_whole_crop_fallback_on_aligned_crops(detector):
  img = _noise(112)
  det = detector.detect(img)
  assert det.method == "crop" and det.box == (0, 0, 111, 111)
  assert np.isfinite(det.landmarks).all()
  det = detector.detect(img, fallback_box=(0.2, 0.25, 0.85, 0.95))
  assert det.method == "crop" and det.box == (22, 28, 95, 106)
  strict = copy.copy(detector)      # shares the loaded predictor
  strict.aligned = False
  assert strict.detect(img).method == "none" and strict.detect(img).landmarks is None
  wide = _noise(100)[:, :80]
  assert detector.detect(np.ascontiguousarray(wide)).method == "none"   # not square: no fallback


def test_folder_cache_next_to_writable_images(tmp_path, detector, face_photo):
  images.save_png(tmp_path / "face.png", face_photo)
  images.save_png(tmp_path / "sub" / "noise.png", _noise(64))
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
  with pytest.warns(UserWarning, match="unreadable"):
    result = detect.detect_folder(str(tmp_path), detector=detector, progress=False)
  assert result.names == ("face.png", "sub/noise.png")
  assert result.methods == ("hog", "crop") and result.unreadable == ("broken.jpg",)
  assert result.cache == str(tmp_path / detect.CACHE_CSV)
  table = landmarks.read_landmarks_csv(result.cache)     # reference layout
  np.testing.assert_allclose(table.as_dict()["face.png"], result.landmarks[0], atol=0.51)

  class NoDetector:
    def __getattr__(self, name):
      raise AssertionError("the cache should have answered")

  with pytest.warns(UserWarning, match="unreadable"):
    again = detect.detect_folder(str(tmp_path), detector=NoDetector(), progress=False)
  assert again.names == result.names and again.methods == result.methods
  with pytest.warns(UserWarning):
    ds = dataset.read_folder(tmp_path, detector=NoDetector(), progress=False)
  assert len(ds) == 2 and ds[0].source == "hog" and ds.failed == ("broken.jpg",)
  assert ds.load(0, size=64)["image"].shape == (64, 64, 3)


def test_read_only_folder_caches_elsewhere(tmp_path, detector, face_photo):
  folder = tmp_path / "photos"
  images.save_png(folder / "face.png", face_photo)
  cache_dir = tmp_path / "cache"
  folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
  try:
    assert not detect.is_writable(str(folder))
    result = detect.detect_folder(str(folder), detector=detector, cache_dir=str(cache_dir),
                                  progress=False)
    assert os.listdir(folder) == ["face.png"]
    assert result.cache.startswith(str(cache_dir)) and os.path.isfile(result.cache)
  finally:
    folder.chmod(0o755)


def test_user_cache_location(tmp_path, monkeypatch):
  monkeypatch.setenv("FOCUS_JAX_CACHE", str(tmp_path / "c"))
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    loc = detect.cache_location(str(ro))
    assert loc.startswith(str(tmp_path / "c" / "landmarks" / "ro-"))
  finally:
    ro.chmod(0o755)
  assert detect.cache_location(str(tmp_path)) == str(tmp_path)


def test_empty_folder_is_an_error(tmp_path):
  with pytest.raises(DataError, match="no images"):
    detect.detect_folder(str(tmp_path), progress=False)


def test_shared_occluded_faces_sample(shared_dir, detector, tmp_path):
  folder = shared_dir / "data" / "occluded_faces" / "id3"
  if not folder.is_dir():
    pytest.skip(f"shared data not available: {folder}")
  for name in sorted(os.listdir(folder))[:6]:    # 112 x 112 aligned crops: never 'none'
    det = detector.detect(images.read_image(folder / name))
    assert det.method in ("hog", "crop") and np.isfinite(det.landmarks).all()
  assert not any(p.name.startswith("detected") for p in folder.iterdir())
