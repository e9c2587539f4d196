"""The eos / SFM .bin reader against eos-py's own reader, plus its error handling.

Comparisons need eos-py (``pip install eos-py``) and the SFM files in ../shared;
each test skips, saying which is missing, when it is not there.
"""

import os
import struct

import numpy as np
import pytest

from focus_jax import errors, morphable
from focus_jax.morphable import eos_bin


@pytest.fixture(scope="module")
def eosmm():
  """eos-py's morphablemodel module: the independent reference reader and writer."""
  return pytest.importorskip("eos", reason="eos-py is not installed (pip install eos-py)"
                             ).morphablemodel


@pytest.fixture(scope="module")
def sfm_dir(shared_dir):
  d = shared_dir / "models" / "sfm"
  if not (d / "sfm_shape_3448.bin").is_file():
    pytest.skip(f"Surrey Face Model not found at {d} (shared data not available)")
  return d


@pytest.fixture(scope="module")
def sfm_path(sfm_dir):
  return str(sfm_dir / "sfm_shape_3448.bin")


@pytest.fixture(scope="module")
def blendshapes_path(sfm_dir):
  return str(sfm_dir / "expression_blendshapes_3448.bin")


@pytest.fixture(scope="module")
def eos_sfm(eosmm, sfm_path):
  return eosmm.load_model(sfm_path)


@pytest.fixture(scope="module")
def sfm(sfm_path):
  return eos_bin.load_eos_model(sfm_path)


def _eigen(matrix):
  """cereal bytes of an Eigen float matrix: int32 rows, int32 cols, column-major data."""
  matrix = np.asarray(matrix, np.float32)
  return struct.pack("<ii", *matrix.shape) + matrix.tobytes(order="F")


def _write_blendshapes(path, names, deformations):
  """Writes an eos blendshapes file (``vector<Blendshape>``) by hand."""
  out = [struct.pack("<Q", len(names))]
  for name, d in zip(names, deformations):
    out += [struct.pack("<Q", len(name)), name.encode(), _eigen(np.reshape(d, (-1, 1)))]
  path.write_bytes(b"".join(out))


def _write_v1_model(path, mean, basis, eigenvalues, triangles):
  """Writes a version-1 shape-only eos model (like the public SFM) by hand."""
  num_components = len(eigenvalues)
  triangles = np.asarray(triangles, "<i4")
  path.write_bytes(b"".join([
      struct.pack("<I", 1), _eigen(np.reshape(mean, (-1, 1))),
      _eigen(np.reshape(basis, (num_components, -1)).T),
      _eigen(np.reshape(eigenvalues, (-1, 1))),
      struct.pack("<Q", len(triangles)), triangles.tobytes(),
      _eigen(np.zeros((0, 1))), _eigen(np.zeros((0, 0))), _eigen(np.zeros((0, 1))),
      struct.pack("<Q", 0),  # empty colour model
      struct.pack("<Q", 0)]))  # no texture coordinates


def _small_v1_model(path, num_vertices=5, num_components=2, seed=7):
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=(num_vertices, 3))
  basis = np.linalg.qr(rng.normal(size=(3 * num_vertices, num_components)))[0].T
  eigenvalues = np.array([9.0, 4.0])[:num_components]
  _write_v1_model(path, mean, basis, eigenvalues, [[0, 1, 2], [2, 1, 3]])
  return mean, basis.reshape(num_components, num_vertices, 3), eigenvalues


def _eos_basis(basis):
  """[K, V, 3] -> eos's [3V, K] (xyzxyz... rows)."""
  return np.asarray(basis).reshape(basis.shape[0], -1).T


def _eos_pca(eosmm, rng, num_vertices, num_components, mean_scale=10.0):
  mean = (mean_scale * rng.normal(size=3 * num_vertices)).astype(np.float32)
  basis = np.linalg.qr(rng.normal(size=(3 * num_vertices, num_components)))[0]
  eigenvalues = np.sort(rng.uniform(0.5, 5.0, num_components))[::-1]
  triangles = [[0, 1, 2], [1, 3, 2]]
  return eosmm.PcaModel(mean, basis.astype(np.float32), eigenvalues.astype(np.float32),
                        triangles)


def _eos_blendshapes(eosmm, rng, num_vertices, count=2):
  shapes = []
  for i in range(count):
    b = eosmm.Blendshape()
    b.name = f"expr{i}"
    b.deformation = rng.normal(size=3 * num_vertices).astype(np.float32)
    shapes.append(b)
  return shapes


def test_reader_matches_eos(sfm_path, eos_sfm):
  raw = eos_bin.read_eos_model(sfm_path)
  ref = eos_sfm.get_shape_model()
  assert raw["version"] == 1
  np.testing.assert_allclose(raw["mean"].ravel(), ref.get_mean(), atol=1e-5)
  np.testing.assert_allclose(_eos_basis(raw["orthonormal_basis"]),
                             ref.get_orthonormal_pca_basis(), atol=1e-5)
  np.testing.assert_allclose(raw["eigenvalues"], ref.get_eigenvalues(), rtol=1e-6)
  np.testing.assert_array_equal(raw["triangles"], np.array(ref.get_triangle_list()))
  np.testing.assert_allclose(raw["texture_coordinates"],
                             np.array(eos_sfm.get_texture_coordinates()), atol=1e-12)
  assert raw["orthonormal_basis"].shape == (63, 3448, 3)
  assert raw["triangles"].shape == (6736, 3)
  assert raw["color"] is None and not eos_sfm.has_color_model()
  assert raw["expression"] is None and raw["landmark_definitions"] is None


def test_blendshapes_match_eos(eosmm, blendshapes_path):
  names, deformations = eos_bin.read_eos_blendshapes(blendshapes_path)
  ref = eosmm.load_blendshapes(blendshapes_path)
  assert names == [b.name for b in ref]
  assert names == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
  assert deformations.shape == (6, 3448, 3)
  np.testing.assert_allclose(deformations.reshape(6, -1),
                             np.stack([b.deformation for b in ref]), atol=1e-5)


def test_model_matches_eos(sfm, eos_sfm, blendshapes_path):
  ref = eos_sfm.get_shape_model()
  assert sfm.num_vertices == 3448 and sfm.num_shape == 63 and sfm.num_expression == 6
  np.testing.assert_allclose(_eos_basis(sfm.shape_basis), ref.get_rescaled_pca_basis(),
                             atol=1e-5 * np.abs(ref.get_rescaled_pca_basis()).max())
  _, deformations = eos_bin.read_eos_blendshapes(blendshapes_path)
  np.testing.assert_array_equal(sfm.expression_basis, deformations)
  np.testing.assert_allclose(sfm.uv, np.array(eos_sfm.get_texture_coordinates()), atol=1e-6)
  # Landmarks from ibug_to_sfm.txt: the jaw contour is undefined, the chin (iBUG 9)
  # and nose tip (iBUG 31) are fixed vertices.
  lm = np.asarray(sfm.landmarks)
  assert lm[8] == 33 and lm[30] == 114
  assert (lm[[0, 7, 9, 16]] == -1).all() and (lm[17:] >= 0).sum() >= 45
  assert sfm.name == "sfm_shape_3448.bin + expression_blendshapes_3448.bin"


def test_vertices_equal_eos_draw_sample(eosmm, sfm, eos_sfm, blendshapes_path):
  rng = np.random.default_rng(0)
  shape = rng.normal(size=63).astype(np.float32)
  ref = np.array(eos_sfm.draw_sample(list(shape), []).vertices)
  # Tolerance relative to the ~100 mm coordinates, float32 sums of 63 terms.
  np.testing.assert_allclose(morphable.vertices(sfm, shape), ref, atol=1e-4)

  expression = rng.uniform(0, 1, size=6).astype(np.float32)
  with_expr = eosmm.MorphableModel(eos_sfm.get_shape_model(),
                                   eosmm.load_blendshapes(blendshapes_path),
                                   eosmm.PcaModel())
  ref = np.array(with_expr.draw_sample(list(shape), list(expression), []).vertices)
  np.testing.assert_allclose(morphable.vertices(sfm, shape, expression), ref, atol=1e-4)


def test_default_albedo(sfm):
  assert sfm.num_albedo == 3
  np.testing.assert_allclose(morphable.albedo(sfm, np.zeros(3)),
                             np.broadcast_to(eos_bin.DEFAULT_SKIN_TONE, (3448, 3)), atol=1e-6)
  sample = np.asarray(morphable.albedo(sfm, 2 * np.ones(3)))  # a 2-sigma face
  assert np.isfinite(sample).all() and 0 < sample.min() and sample.max() < 1
  assert np.abs(np.asarray(sfm.albedo_basis)).max() > 0.01


def test_load_dispatches_to_eos_reader(sfm_path, sfm):
  assert morphable.detect_format(sfm_path) == "eos"
  m = morphable.load(sfm_path, num_shape=10, blendshapes=None)
  assert m.num_shape == 10 and m.num_expression == 0
  np.testing.assert_array_equal(m.shape_basis, np.asarray(sfm.shape_basis)[:10])
  np.testing.assert_array_equal(m.mean, sfm.mean)


def test_options_without_siblings(tmp_path, sfm_path, sfm):
  # A link in an empty folder: no sibling blendshapes or landmark table to pick up.
  link = tmp_path / "sfm_shape_3448.bin"
  os.symlink(sfm_path, link)
  m = eos_bin.load_eos_model(link)
  assert m.num_expression == 0 and (np.asarray(m.landmarks) == -1).all()
  assert m.name == "sfm_shape_3448.bin"
  m = eos_bin.load_eos_model(sfm_path, blendshapes=None, landmarks=None, name="bare")
  assert m.num_expression == 0 and (np.asarray(m.landmarks) == -1).all()
  assert m.name == "bare"


def test_version4_model_with_colour_expression_and_landmarks(eosmm, tmp_path):
  rng = np.random.default_rng(1)
  num_vertices = 4
  shape = _eos_pca(eosmm, rng, num_vertices, 3)
  color = _eos_pca(eosmm, rng, num_vertices, 2, mean_scale=0.1)
  blendshapes = _eos_blendshapes(eosmm, rng, num_vertices)
  texcoords = rng.uniform(size=(num_vertices, 2)).tolist()
  ref = eosmm.MorphableModel(shape, blendshapes, color, {"nose_tip": 2, "chin": 0},
                             texcoords, [[0, 2, 1]])
  path = str(tmp_path / "model.bin")
  eosmm.save_model(ref, path)

  raw = eos_bin.read_eos_model(path)
  assert raw["version"] == 4
  assert raw["landmark_definitions"] == {"nose_tip": 2, "chin": 0}
  np.testing.assert_array_equal(raw["texture_triangle_indices"], [[0, 2, 1]])
  np.testing.assert_allclose(raw["texture_coordinates"], texcoords)
  assert raw["expression"]["type"] == "blendshapes"
  assert raw["expression"]["names"] == ["expr0", "expr1"]
  np.testing.assert_allclose(_eos_basis(raw["color"]["orthonormal_basis"]),
                             color.get_orthonormal_pca_basis())

  assert eos_bin.load_eos_model(path, blendshapes=None).num_expression == 0
  m = eos_bin.load_eos_model(path)
  assert m.uv is None  # separate texture triangulation: no per-vertex uv
  np.testing.assert_allclose(_eos_basis(m.albedo_basis), color.get_rescaled_pca_basis(),
                             rtol=1e-6)
  s, e, c = rng.normal(size=3), rng.normal(size=2), rng.normal(size=2)
  sample = ref.draw_sample(list(s), list(e), list(c))
  np.testing.assert_allclose(morphable.vertices(m, s, e), np.array(sample.vertices),
                             atol=1e-5)
  np.testing.assert_allclose(np.clip(morphable.albedo(m, c), 0, 1), np.array(sample.colors),
                             atol=1e-6)


def test_expression_pca_model_mean_is_added(eosmm, tmp_path):
  rng = np.random.default_rng(2)
  shape, expression = _eos_pca(eosmm, rng, 4, 3), _eos_pca(eosmm, rng, 4, 2, mean_scale=1.0)
  ref = eosmm.MorphableModel(shape, expression, eosmm.PcaModel())
  path = str(tmp_path / "model.bin")
  eosmm.save_model(ref, path)
  m = eos_bin.load_eos_model(path)
  assert eos_bin.read_eos_model(path)["expression"]["type"] == "pca"
  s, e = rng.normal(size=3), rng.normal(size=2)
  np.testing.assert_allclose(morphable.vertices(m, s, e),
                             np.array(ref.draw_sample(list(s), list(e), []).vertices),
                             atol=1e-5)
  np.testing.assert_allclose(_eos_basis(m.expression_basis),
                             expression.get_rescaled_pca_basis(), rtol=1e-6)


def test_colour_stored_as_0_255_is_rescaled(eosmm, tmp_path):
  rng = np.random.default_rng(3)
  color = eosmm.PcaModel(np.full(12, 128.0, np.float32),
                         np.linalg.qr(rng.normal(size=(12, 2)))[0].astype(np.float32),
                         np.array([400.0, 100.0], np.float32), [[0, 1, 2]])
  path = str(tmp_path / "model.bin")
  eosmm.save_model(eosmm.MorphableModel(_eos_pca(eosmm, rng, 4, 3), color), path)
  m = eos_bin.load_eos_model(path)
  np.testing.assert_allclose(m.albedo_mean, 128 / 255, rtol=1e-6)
  np.testing.assert_allclose(_eos_basis(m.albedo_basis),
                             color.get_rescaled_pca_basis() / 255, rtol=1e-5)


@pytest.mark.parametrize("version", [2, 3])
def test_older_versions(eosmm, tmp_path, version):
  rng = np.random.default_rng(4)
  num_vertices = 4
  ref = eosmm.MorphableModel(_eos_pca(eosmm, rng, num_vertices, 3),
                             _eos_blendshapes(eosmm, rng, num_vertices), eosmm.PcaModel(),
                             None, rng.uniform(size=(num_vertices, 2)).tolist())
  v4 = tmp_path / "v4.bin"
  eosmm.save_model(ref, str(v4))
  data = v4.read_bytes()
  # v4 ends with: landmarks-empty flag, texture coordinates, empty texture triangles.
  assert data[:4] == struct.pack("<I", 4) and data[-8:] == bytes(8)
  data = struct.pack("<I", version) + data[4:-8]
  if version == 2:
    flag = len(data) - (8 + 16 * num_vertices) - 1
    assert data[flag] == 1
    data = data[:flag] + data[flag + 1:]
  path = tmp_path / f"v{version}.bin"
  path.write_bytes(data)
  raw = eos_bin.read_eos_model(path)
  assert raw["version"] == version and raw["expression"]["type"] == "blendshapes"
  theirs = eosmm.load_model(str(path))  # eos reads versions 1-4 too
  np.testing.assert_allclose(raw["texture_coordinates"], theirs.get_texture_coordinates())
  np.testing.assert_allclose(raw["mean"].ravel(), theirs.get_shape_model().get_mean())


def test_truncated_file(tmp_path, sfm_path):
  data = open(sfm_path, "rb").read()
  path = tmp_path / "sfm_shape_3448.bin"
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(errors.ModelFileError, match="truncated") as info:
    morphable.load(path)
  assert str(path) in str(info.value)
  path.write_bytes(data + b"\0")
  with pytest.raises(errors.ModelFileError, match="unexpected bytes"):
    eos_bin.read_eos_model(path)


def test_garbage_and_impossible_sizes(tmp_path):
  path = tmp_path / "garbage.bin"
  path.write_bytes(np.random.default_rng(5).bytes(1000))
  with pytest.raises(errors.ModelFileError) as info:
    morphable.load(path)
  assert str(path) in str(info.value)
  # A plausible version followed by a 2^31-1 x 2^31-1 mean: refused before allocating.
  path.write_bytes(struct.pack("<Iii", 1, 2**31 - 1, 2**31 - 1) + bytes(64))
  with pytest.raises(errors.ModelFileError, match="claims"):
    eos_bin.read_eos_model(path)
  # A blendshapes file claiming 2^64-1 entries.
  path.write_bytes(struct.pack("<Q", 2**64 - 1) + bytes(64))
  with pytest.raises(errors.ModelFileError, match="claims"):
    eos_bin.read_eos_blendshapes(path)
  with pytest.raises(errors.ModelFileError, match="not found"):
    eos_bin.read_eos_model(tmp_path / "missing.bin")


def test_hand_written_model_and_siblings(tmp_path):
  path = tmp_path / "tiny.bin"
  mean, basis, eigenvalues = _small_v1_model(path)
  _write_blendshapes(tmp_path / "expression_blendshapes_5.bin", ["smile"],
                     [np.ones((5, 3))])
  # iBUG 9 -> vertex 33 only exists in bigger models: dropped with a warning.
  (tmp_path / "ibug_to_sfm.txt").write_text("[landmark_mappings]\n31 = 4\n9 = 33\n")
  with pytest.warns(UserWarning, match="beyond"):
    m = eos_bin.load_eos_model(path)
  np.testing.assert_allclose(m.mean, mean, rtol=1e-6)
  np.testing.assert_allclose(m.shape_basis, basis * np.sqrt(eigenvalues)[:, None, None],
                             rtol=1e-6)
  np.testing.assert_array_equal(m.expression_basis, np.ones((1, 5, 3)))
  assert m.landmarks[30] == 4 and m.landmarks[8] == -1 and m.uv is None
  assert m.name == "tiny.bin + expression_blendshapes_5.bin"
  with pytest.raises(errors.ModelFileError, match="ibug_to_sfm.txt"):
    eos_bin.load_eos_model(path, landmarks=tmp_path / "ibug_to_sfm.txt")


def test_blendshape_vertex_count_mismatch(tmp_path):
  model_path = tmp_path / "tiny.bin"
  _small_v1_model(model_path)
  path = tmp_path / "expression_blendshapes_10.bin"
  _write_blendshapes(path, ["a", "b"], np.zeros((2, 10, 3)))
  with pytest.raises(errors.ModelFileError, match="10 vertices") as info:
    eos_bin.load_eos_model(model_path, blendshapes=path)
  assert str(path) in str(info.value)
