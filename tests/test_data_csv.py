"""Landmark CSVs in the reference layout, and datasets read from them."""

import os
import warnings

import numpy as np
import pytest

from focus_jax import images
from focus_jax.data import dataset, landmarks, pipeline
from focus_jax.errors import DataError, ImageReadError


def _landmarks(n, seed=0, integer=True):
  rng = np.random.default_rng(seed)
  lm = rng.uniform(5, 60, size=(n, 68, 2))
  return (np.floor(lm) + 0.5 if integer else lm).astype(np.float32)


def test_csv_round_trip_integer_pixel_centres(tmp_path):
  names = ["a.jpg", "sub/b.png", "c.bmp"]
  lm = _landmarks(3)
  path = tmp_path / "train_landmarks.csv"
  landmarks.write_landmarks_csv(path, names, lm)
  table = landmarks.read_landmarks_csv(path)
  assert table.names == tuple(names)
  np.testing.assert_array_equal(table.landmarks, lm)
  assert table.lines == (1, 2, 3)


def test_csv_round_trip_decimals(tmp_path):
  lm = _landmarks(2, integer=False)
  path = tmp_path / "x.csv"
  landmarks.write_landmarks_csv(path, ["a.png", "b.png"], lm, decimals=4)
  np.testing.assert_allclose(landmarks.read_landmarks_csv(path).landmarks, lm, atol=1e-4)


def test_csv_stores_reference_convention(tmp_path):
  """The file holds dlib-style integer pixel centres; we add 0.5 on read, remove it on write."""
  row = "img.jpg," + ",".join(["10", "20"] * 68)
  path = tmp_path / "test_landmarks.csv"
  path.write_text(row + "\n")
  table = landmarks.read_landmarks_csv(path)
  np.testing.assert_array_equal(table.landmarks[0, 0], [10.5, 20.5])
  out = tmp_path / "out.csv"
  landmarks.write_landmarks_csv(out, table.names, table.landmarks)
  assert out.read_text().strip() == row
  # The reference reader parses every value with int().
  values = out.read_text().strip().split(",")[1:]
  assert [int(v) for v in values][:2] == [10, 20]


def test_csv_wrong_count_names_file_and_line(tmp_path):
  good = "a.jpg," + ",".join(["1"] * 136)
  bad = "b.jpg," + ",".join(["1"] * 135)
  path = tmp_path / "train_landmarks.csv"
  path.write_text(f"{good}\n\n{bad}\n")
  with pytest.raises(DataError) as e:
    landmarks.read_landmarks_csv(path)
  assert str(path) in str(e.value) and "line 3" in str(e.value) and "135" in str(e.value)


def test_csv_non_number_names_line_and_value(tmp_path):
  path = tmp_path / "val_landmarks.csv"
  path.write_text("a.jpg," + ",".join(["1"] * 10 + ["oops"] + ["1"] * 125) + "\n")
  with pytest.raises(DataError, match=r"line 1: value 12 \('oops'\)"):
    landmarks.read_landmarks_csv(path)


def test_csv_missing_file_is_clear(tmp_path):
  with pytest.raises(DataError, match="not found"):
    landmarks.read_landmarks_csv(tmp_path / "nope.csv")


def test_csv_nan_for_undefined_landmarks(tmp_path):
  lm = _landmarks(1)
  lm[0, :5] = np.nan
  path = tmp_path / "x.csv"
  landmarks.write_landmarks_csv(path, ["a.png"], lm)
  back = landmarks.read_landmarks_csv(path).landmarks
  assert np.isnan(back[0, :5]).all()
  np.testing.assert_array_equal(back[0, 5:], lm[0, 5:])


# ----------------------------------------------------------------------------- datasets


def _reference_layout(root, n=6, size=64, corrupt=(), missing=(), masks=(0,)):
  """root/images/*.png + root/train_landmarks.csv (and an empty val CSV)."""
  image_dir = root / "images"
  image_dir.mkdir(parents=True)
  rng = np.random.default_rng(1)
  names = [f"{i:03d}.png" for i in range(n)]
  for i, name in enumerate(names):
    if i in missing:
      continue
    if i in corrupt:
      (image_dir / name).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
      continue
    images.save_png(image_dir / name, rng.uniform(size=(size, size, 3)))
    if i in masks:
      m = np.zeros((size, size), np.uint8)
      m[10:30, 20:40] = 255
      images.save_png(image_dir / f"{i:03d}_visible_skin_mask.png", m)
  # Landmarks: a face-like layout so that alignment is well posed.
  base = np.zeros((68, 2), np.float32)
  base[:] = size / 2
  base[36], base[39] = (0.30 * size, 0.38 * size), (0.42 * size, 0.38 * size)
  base[42], base[45] = (0.58 * size, 0.38 * size), (0.70 * size, 0.38 * size)
  base[30] = (0.5 * size, 0.55 * size)
  base[48], base[54] = (0.38 * size, 0.70 * size), (0.62 * size, 0.70 * size)
  lm = np.repeat(base[None], n, 0) + 0.5
  landmarks.write_landmarks_csv(root / "train_landmarks.csv", names, lm, decimals=2)
  (root / "val_landmarks.csv").write_text("")
  return image_dir, names, lm


def test_reference_layout_reads_images_landmarks_masks(tmp_path):
  image_dir, names, lm = _reference_layout(tmp_path)
  ds = dataset.read_reference(image_dir, "train")
  assert len(ds) == 6 and ds.names == names
  np.testing.assert_allclose(ds[0].landmarks, lm[0], atol=0.01)
  assert ds[0].mask_path is not None and ds[1].mask_path is None
  ex = ds.load(0, size=None)
  assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.float32
  assert ex["has_mask"] and ex["mask"][15, 25] == 1 and ex["mask"][0, 0] == 0
  aligned = ds.load(0, size=32)
  assert aligned["image"].shape == (32, 32, 3) and aligned["mask"].shape == (32, 32)
  assert not ds.load(1, size=32)["has_mask"]
  # open_dataset picks the reference layout when the split's CSV exists.
  assert dataset.open_dataset(image_dir, "train").names == names


def test_reference_csv_inside_image_folder(tmp_path):
  image_dir, names, _ = _reference_layout(tmp_path)
  os.replace(tmp_path / "train_landmarks.csv", image_dir / "train_landmarks.csv")
  assert dataset.read_reference(image_dir).names == names


def test_missing_images_skipped_with_warning(tmp_path):
  image_dir, _, _ = _reference_layout(tmp_path, missing=(2, 4))
  with pytest.warns(UserWarning, match="2 of 6 listed images are missing"):
    ds = dataset.read_reference(image_dir)
  assert len(ds) == 4 and ds.missing == ("002.png", "004.png")


def test_empty_dataset_is_a_clear_error(tmp_path):
  image_dir, _, _ = _reference_layout(tmp_path)
  with pytest.raises(DataError, match="empty"):
    dataset.read_reference(image_dir, "val")
  with pytest.raises(DataError, match="no landmark file for split 'test'"):
    dataset.read_reference(image_dir, "test")
  other = tmp_path / "other" / "images"
  other.mkdir(parents=True)
  landmarks.write_landmarks_csv(other.parent / "train_landmarks.csv",
                                [f"{i}.png" for i in range(6)], _landmarks(6))
  with pytest.raises(DataError, match="empty.*all 6 listed images are missing"):
    dataset.read_reference(other)


def test_corrupt_image_raises_read_error_naming_file(tmp_path):
  image_dir, _, _ = _reference_layout(tmp_path, corrupt=(3,))
  ds = dataset.read_reference(image_dir)
  with pytest.raises(ImageReadError, match="003.png"):
    ds.load(3)


def test_corrupt_image_skipped_and_counted_by_pipeline(tmp_path):
  image_dir, _, _ = _reference_layout(tmp_path, n=8, corrupt=(3,))
  ds = dataset.read_reference(image_dir)
  pipe = pipeline.Pipeline(ds, batch_size=2, seed=0, process_index=0, process_count=1,
                           load_fn=lambda i: ds.load(i, size=32), prefetch=0, num_threads=2)
  with pytest.warns(UserWarning, match="skipping example 3.*003.png"):
    batches = [next(pipe) for _ in range(3)]   # one epoch: 7 good images -> 3 batches
  seen = np.concatenate([b["index"] for b in batches])
  assert 3 not in seen and len(set(seen.tolist())) == 6
  assert batches[0]["image"].shape == (2, 32, 32, 3)
  state = pipe.state()
  assert state["num_skipped"] == 1 and state["bad"].tolist() == [3]
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # a known bad image is not re-read, nor warned about again
    for _ in range(4):
      next(pipe)
  assert pipe.state()["num_skipped"] >= 2


def test_list_images_skips_masks_and_maps(tmp_path):
  image_dir, names, _ = _reference_layout(tmp_path, n=2)
  images.save_png(image_dir / "000_face_mask.png", np.zeros((4, 4)))
  (image_dir / "notes.txt").write_text("x")
  assert images.list_images(str(image_dir)) == names


def test_read_image_grey_and_alpha(tmp_path):
  grey = tmp_path / "g.png"
  images.save_png(grey, np.full((5, 6), 0.5))
  img = images.read_image(grey)
  assert img.shape == (5, 6, 3)
  import imageio.v3 as iio
  rgba = tmp_path / "a.png"
  iio.imwrite(rgba, np.full((3, 4, 4), 200, np.uint8))
  assert images.read_image(rgba).shape == (3, 4, 3)
  with pytest.raises(ImageReadError, match="missing.png"):
    images.read_image(tmp_path / "missing.png")
