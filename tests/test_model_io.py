"""npz round trip, format detection and error messages of the loader front door."""

import os

import numpy as np
import pytest

from focus_jax import errors, morphable
from tests.helpers import tiny_model


def _assert_models_equal(a, b):
  for k in ("mean", "shape_basis", "expression_basis", "albedo_mean", "albedo_basis",
            "triangles", "landmarks", "uv"):
    x, y = np.asarray(getattr(a, k)), np.asarray(getattr(b, k))
    assert x.dtype == y.dtype and x.shape == y.shape, k
    np.testing.assert_array_equal(x, y, err_msg=k)
  assert a.name == b.name


def test_npz_round_trip_is_exact(tmp_path):
  m = tiny_model()
  path = tmp_path / "model.npz"
  morphable.save(m, path)
  assert morphable.detect_format(path) == "npz"
  _assert_models_equal(m, morphable.load(path))
  assert not [p for p in os.listdir(tmp_path) if "tmp" in p]


def test_load_overrides(tmp_path):
  m = tiny_model(num_shape=5)
  path = tmp_path / "model.npz"
  morphable.save(m, path)
  table = tmp_path / "ibug_to_tiny.txt"
  lm = np.full(68, -1)
  lm[30] = 7
  morphable.write_ibug_mapping(table, lm, comment="test table")
  loaded = morphable.load(path, landmarks=table, num_shape=2, name="renamed")
  np.testing.assert_array_equal(loaded.landmarks, lm)
  assert loaded.num_shape == 2 and loaded.name == "renamed"


def test_missing_file(tmp_path):
  with pytest.raises(errors.ModelFileError, match=r"not found: .*nope\.h5"):
    morphable.load(tmp_path / "nope.h5")


def test_empty_and_unknown_files(tmp_path):
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  with pytest.raises(errors.ModelFileError, match="empty"):
    morphable.load(empty)
  unknown = tmp_path / "model.xyz"
  unknown.write_bytes(b"hello world")
  with pytest.raises(errors.ModelFileError, match=r"model\.xyz: unknown morphable model format"):
    morphable.load(unknown)
  fake_h5 = tmp_path / "model2017.h5"
  fake_h5.write_bytes(b"<html>404 not found</html>")
  with pytest.raises(errors.ModelFileError, match=r"model2017\.h5.*not a valid \.h5"):
    morphable.load(fake_h5)


def test_truncated_npz(tmp_path):
  path = tmp_path / "model.npz"
  morphable.save(tiny_model(), path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(errors.ModelFileError, match=r"model\.npz: corrupt or truncated"):
    morphable.load(path)


def test_npz_that_is_not_a_model(tmp_path):
  path = tmp_path / "other.npz"
  np.savez(path, foo=np.zeros(3))
  with pytest.raises(errors.ModelFileError, match=r"missing arrays \['mean'"):
    morphable.load(path)


def test_bad_landmark_table(tmp_path):
  table = tmp_path / "ibug.txt"
  table.write_text("[landmark_mappings]\n70 = 3\n")
  with pytest.raises(errors.ModelFileError, match=r"ibug\.txt: bad mapping 70"):
    morphable.read_ibug_mapping(table)
  table.write_text("not toml [[[")
  with pytest.raises(errors.ModelFileError, match="not a TOML"):
    morphable.read_ibug_mapping(table)
