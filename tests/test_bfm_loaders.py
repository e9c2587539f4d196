"""BFM 2017 (HDF5), BFM 2009 and Deep3DFaceRecon (.mat) loaders, on small files written here.

The real models cannot be shipped, so each test writes a few-hundred-vertex file in the
official layout of its format (a synthetic head: an ellipsoid with a nose) and checks the
loaded model against values computed independently from what was written.
"""

import warnings

import h5py
import numpy as np
import pytest
import scipy.io

from focus_jax import errors, morphable
from focus_jax.morphable import bfm

RING, AROUND = 20, 32            # synthetic head: 640 vertices
K_SHAPE, K_EXPR, K_COLOR = 6, 4, 5


def _synthetic_head():
  """[V, 3] mm head (ellipsoid + nose, face towards +z) and outward [F, 3] triangles."""
  theta = np.linspace(0.25, np.pi - 0.25, RING)          # polar angle from +y
  phi = np.linspace(0.0, 2 * np.pi, AROUND, endpoint=False)  # 0 = front (+z)
  t, p = np.meshgrid(theta, phi, indexing="ij")
  x = 75.0 * np.sin(t) * np.sin(p)
  y = 110.0 * np.cos(t)
  z = 95.0 * np.sin(t) * np.cos(p)
  z = z + 25.0 * np.exp(-(x**2 + (y + 5.0)**2) / (2 * 18.0**2)) * (z > 0)
  verts = np.stack([x, y, z], -1).reshape(-1, 3)
  tris = []
  for i in range(RING - 1):
    for j in range(AROUND):
      a, b = i * AROUND + j, i * AROUND + (j + 1) % AROUND
      c, d = a + AROUND, b + AROUND
      tris += [(a, b, d), (a, d, c)]
  tris = np.array(tris)
  if _outward_fraction(verts, tris) < 0.5:
    tris = tris[:, [0, 2, 1]]
  assert _outward_fraction(verts, tris) > 0.97
  return verts, tris


def _outward_fraction(verts, tris, centre=(0.0, 0.0, 0.0)):
  """Fraction of triangles whose right-hand normal points away from ``centre``."""
  v = np.asarray(verts, np.float64)
  a, b, c = v[tris[:, 0]], v[tris[:, 1]], v[tris[:, 2]]
  n = np.cross(b - a, c - a)
  return float(np.mean(np.einsum("ij,ij->i", n, (a + b + c) / 3 - np.asarray(centre)) > 0))


def _orthonormal(rows, cols, rng):
  q, _ = np.linalg.qr(rng.normal(size=(rows, cols)))
  return q


def _expected_basis(u, variance_or_sd, num_vertices, is_variance=True):
  sd = np.sqrt(variance_or_sd) if is_variance else variance_or_sd
  return (u * sd[None, :]).T.reshape(-1, num_vertices, 3)


@pytest.fixture(scope="module")
def head():
  verts, tris = _synthetic_head()
  rng = np.random.default_rng(0)
  v = verts.shape[0]
  return dict(
      verts=verts, tris=tris, num_vertices=v,
      shape_u=_orthonormal(3 * v, K_SHAPE, rng),
      shape_var=np.array([900.0, 400.0, 100.0, 50.0, 20.0, 5.0]),
      expr_u=_orthonormal(3 * v, K_EXPR, rng),
      expr_var=np.array([300.0, 80.0, 20.0, 4.0]),
      expr_mean=rng.normal(scale=0.1, size=(v, 3)),
      color_u=_orthonormal(3 * v, K_COLOR, rng),
      color_var=np.array([2.0, 1.0, 0.5, 0.2, 0.1]),
      color_mean=rng.uniform(0.3, 0.8, size=(v, 3)))


def _write_bfm2017(path, h, *, version=(0, 9), prescaled=False, flip=False, drop=(),
                   overrides=None, legacy_cells=False):
  """Writes ``h`` in the statismo layout of model2017-1_bfm_nomouth.h5."""
  overrides = overrides or {}
  tris = h["tris"][:, [0, 2, 1]] if flip else h["tris"]
  points = h["verts"].T.astype(np.float32)                 # [3, V]
  parts = dict(shape=(h["verts"], h["shape_u"], h["shape_var"]),
               color=(h["color_mean"], h["color_u"], h["color_var"]),
               expression=(h["expr_mean"], h["expr_u"], h["expr_var"]))
  with h5py.File(path, "w") as f:
    f["version/majorVersion"], f["version/minorVersion"] = version
    for group, (mean, u, var) in parts.items():
      basis = u * np.sqrt(var)[None, :] if prescaled else u
      data = {f"{group}/model/mean": mean.reshape(-1).astype(np.float32),
              f"{group}/model/pcaBasis": basis.astype(np.float32),
              f"{group}/model/pcaVariance": var.astype(np.float32),
              f"{group}/model/noiseVariance": np.array([0.0], np.float32),
              f"{group}/representer/points": points,
              f"{group}/representer/cells": tris.T.astype(np.int32),
              f"{group}/version/majorVersion": np.int32(version[0]),
              f"{group}/version/minorVersion": np.int32(version[1])}
      if legacy_cells:
        del data[f"{group}/representer/cells"]
        data[f"{group}/representer/reference-mesh/triangle-list"] = tris.astype(np.int32)
      data.update({k: v for k, v in overrides.items() if k.startswith(group + "/")})
      for key, value in data.items():
        if key not in drop:
          f[key] = value
    f["color/representer/colorspace"] = "RGB"
    f["metadata/landmarks/json"] = "[]"


def _assert_outward(m):
  tris = np.asarray(m.triangles)
  assert tris.dtype == np.int32 and tris.min() >= 0 and tris.max() < m.num_vertices
  assert _outward_fraction(np.asarray(m.mean), tris) > 0.97


# ----------------------------------------------------------------------------- BFM 2017


def test_bfm2017_full_model_values(tmp_path, head):
  path = tmp_path / "model2017-1_bfm_nomouth.h5"
  _write_bfm2017(path, head)
  m = bfm.load_bfm2017(path, crop=None, landmarks=None)
  v = head["num_vertices"]
  assert (m.num_vertices, m.num_shape, m.num_expression, m.num_albedo) == (v, 6, 4, 5)
  # Mean in mm (the file's own unit) plus the expression model's mean.
  np.testing.assert_allclose(m.mean, head["verts"] + head["expr_mean"], atol=1e-4)
  np.testing.assert_allclose(
      m.shape_basis, _expected_basis(head["shape_u"], head["shape_var"], v), atol=1e-4)
  np.testing.assert_allclose(
      m.expression_basis, _expected_basis(head["expr_u"], head["expr_var"], v), atol=1e-4)
  np.testing.assert_allclose(
      m.albedo_basis, _expected_basis(head["color_u"], head["color_var"], v), atol=1e-5)
  np.testing.assert_allclose(m.albedo_mean, head["color_mean"], atol=1e-6)
  assert 0.0 <= float(np.min(m.albedo_mean)) and float(np.max(m.albedo_mean)) <= 1.0
  np.testing.assert_array_equal(m.triangles, head["tris"])
  _assert_outward(m)
  np.testing.assert_array_equal(m.landmarks, -1)
  # Coefficients are standard normal: one unit of component 0 moves the mean by sqrt(900).
  shape = np.zeros(6, np.float32)
  shape[0] = 1.0
  moved = morphable.vertices(m, shape) - m.mean
  assert np.linalg.norm(np.asarray(moved)) == pytest.approx(30.0, rel=1e-4)


def test_bfm2017_legacy_prescaled_basis(tmp_path, head):
  path = tmp_path / "legacy.h5"
  _write_bfm2017(path, head, version=(0, 8), prescaled=True)
  m = bfm.load_bfm2017(path, crop=None, landmarks=None)
  v = head["num_vertices"]
  np.testing.assert_allclose(
      m.shape_basis, _expected_basis(head["shape_u"], head["shape_var"], v), atol=1e-4)
  np.testing.assert_allclose(
      m.albedo_basis, _expected_basis(head["color_u"], head["color_var"], v), atol=1e-5)


@pytest.mark.parametrize("legacy_cells", [False, True])
def test_bfm2017_inward_winding_is_flipped(tmp_path, head, legacy_cells):
  path = tmp_path / "inward.h5"
  _write_bfm2017(path, head, flip=True, legacy_cells=legacy_cells)
  m = bfm.load_bfm2017(path, crop=None, landmarks=None)
  np.testing.assert_array_equal(m.triangles, head["tris"])
  _assert_outward(m)


def _face_mask(verts):
  """The documented face-crop rule, written out independently of the loader."""
  nose = verts[np.argmax(verts[:, 2])]
  ellipse = ((verts[:, 0] - nose[0]) / 80.0)**2 + ((verts[:, 1] - nose[1] - 5.0) / 95.0)**2
  return (ellipse <= 1.0) & (verts[:, 2] >= nose[2] - 80.0)


def test_bfm2017_face_crop_and_landmarks_via_load(tmp_path, head):
  path = tmp_path / "model2017-1_bfm_nomouth.h5"
  _write_bfm2017(path, head)
  full_mean = head["verts"] + head["expr_mean"]
  mask = _face_mask(full_mean)
  nose, back = int(np.argmax(full_mean[:, 2])), int(np.argmin(full_mean[:, 2]))
  ear = int(np.argmax(full_mean[:, 0]))
  lm = np.full(68, -1)
  lm[30], lm[0], lm[16] = nose, back, ear                   # nose tip, two cropped points
  cheek = int(np.flatnonzero(mask & (full_mean[:, 0] > 30))[0])
  lm[48] = cheek
  morphable.write_ibug_mapping(tmp_path / "ibug_to_bfm2017-1_bfm_nomouth.txt", lm)

  assert morphable.detect_format(path) == "bfm2017"
  m = morphable.load(path)                                  # crop="face", landmarks="auto"
  keep = np.flatnonzero(mask)
  assert 0 < keep.size < head["num_vertices"] and m.num_vertices == keep.size
  assert not mask[back] and not mask[ear] and mask[nose]
  np.testing.assert_allclose(m.mean, full_mean[keep], atol=1e-4)
  np.testing.assert_allclose(
      m.shape_basis,
      _expected_basis(head["shape_u"], head["shape_var"], head["num_vertices"])[:, keep],
      atol=1e-4)
  # Landmarks were applied on the full model, then remapped by the crop.
  landmarks = np.asarray(m.landmarks)
  assert landmarks[0] == -1 and landmarks[16] == -1
  np.testing.assert_allclose(m.mean[landmarks[30]], full_mean[nose], atol=1e-4)
  np.testing.assert_allclose(m.mean[landmarks[48]], full_mean[cheek], atol=1e-4)
  assert (landmarks[[i for i in range(68) if i not in (0, 16, 30, 48)]] == -1).all()
  # Triangles: only those fully inside the crop survive, still outward.
  full_tris = head["tris"]
  assert m.num_triangles == int(mask[full_tris].all(axis=1).sum())
  _assert_outward(m)
  assert "face crop" in m.name
  # An explicit table given to the front door also indexes the full mesh.
  other = tmp_path / "elsewhere.txt"
  (tmp_path / "ibug_to_bfm2017-1_bfm_nomouth.txt").rename(other)
  explicit = morphable.load(path, landmarks=other)
  np.testing.assert_array_equal(explicit.landmarks, m.landmarks)


def test_bfm2017_explicit_crops_agree(tmp_path, head):
  path = tmp_path / "m.h5"
  _write_bfm2017(path, head)
  keep = np.arange(0, head["num_vertices"], 3)
  np.savetxt(tmp_path / "keep.txt", keep, fmt="%d")
  np.save(tmp_path / "keep.npy", keep)
  models = [bfm.load_bfm2017(path, crop=c, landmarks=None)
            for c in (keep, tmp_path / "keep.txt", str(tmp_path / "keep.npy"))]
  for m in models:
    assert m.num_vertices == keep.size
    np.testing.assert_allclose(m.mean, models[0].mean)
  with pytest.raises(errors.ModelFileError, match="not_there.txt"):
    bfm.load_bfm2017(path, crop=tmp_path / "not_there.txt", landmarks=None)
  with pytest.raises(errors.ModelFileError, match="vertex indices"):
    bfm.load_bfm2017(path, crop=np.array([0, 10_000]), landmarks=None)


def test_bfm2017_landmarks_auto_without_table_warns(tmp_path, head):
  path = tmp_path / "model2017-1_face12_nomouth.h5"
  _write_bfm2017(path, head)
  # The generic bfm_nomouth table must not be used for another mesh (vertex count differs).
  lm = np.zeros(68, int)
  morphable.write_ibug_mapping(tmp_path / "ibug_to_bfm2017-1_bfm_nomouth.txt", lm)
  with pytest.warns(UserWarning, match="no iBUG-68 landmark table"):
    m = bfm.load_bfm2017(path, crop=None)
  np.testing.assert_array_equal(m.landmarks, -1)
  # ...but a table named after the file is.
  lm[30] = 5
  morphable.write_ibug_mapping(tmp_path / "ibug_to_model2017-1_face12_nomouth.txt", lm)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    m = bfm.load_bfm2017(path, crop=None)
  assert int(m.landmarks[30]) == 5


def test_bfm2017_landmark_table_out_of_range(tmp_path, head):
  path = tmp_path / "m.h5"
  _write_bfm2017(path, head)
  lm = np.full(68, -1)
  lm[30] = 53000
  table = tmp_path / "big.txt"
  morphable.write_ibug_mapping(table, lm)
  with pytest.raises(errors.ModelFileError, match=r"big\.txt.*53000"):
    bfm.load_bfm2017(path, landmarks=table)


def test_bfm2017_missing_dataset(tmp_path, head):
  path = tmp_path / "wrong_layout.h5"
  _write_bfm2017(path, head, drop=("shape/model/pcaBasis",))
  with pytest.raises(errors.ModelFileError,
                     match=r"wrong_layout\.h5: dataset 'shape/model/pcaBasis' is missing.*2017"):
    morphable.load(path)
  other = tmp_path / "not_a_bfm.h5"
  with h5py.File(other, "w") as f:
    f["data"] = np.zeros(3)
  with pytest.raises(errors.ModelFileError, match=r"not_a_bfm\.h5: dataset 'shape/model/mean'"):
    morphable.load(other)


@pytest.mark.parametrize("overrides, message", [
    ({"shape/model/pcaVariance": np.ones(5, np.float32)},
     r"'shape/model/pcaVariance' has 5 entries but 'shape/model/pcaBasis' has 6 columns"),
    ({"color/model/mean": np.full(30, 0.5, np.float32)},
     r"'color/model/mean' has 10 vertices but the shape model has 640"),
    ({"shape/representer/cells": np.array([[0, 1, 700]] * 3, np.int32)},
     r"triangle indices range over \[0, 700\]"),
])
def test_bfm2017_inconsistent_sizes(tmp_path, head, overrides, message):
  path = tmp_path / "inconsistent.h5"
  _write_bfm2017(path, head, overrides=overrides)
  with pytest.raises(errors.ModelFileError, match=r"inconsistent\.h5: .*" + message):
    bfm.load_bfm2017(path, landmarks=None)


def test_bfm2017_truncated_file(tmp_path, head):
  path = tmp_path / "truncated.h5"
  _write_bfm2017(path, head)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(errors.ModelFileError, match=r"truncated\.h5: .*truncated or corrupt"):
    morphable.load(path)


# ----------------------------------------------------------------------------- BFM 2009


def _bfm2009_variables(h):
  """01_MorphableModel.mat: micrometres, standard deviations, 0-255, 1-based clockwise tl."""
  return dict(
      shapeMU=(h["verts"].reshape(-1, 1) * 1000.0).astype(np.float32),
      shapePC=h["shape_u"].astype(np.float32),
      shapeEV=(np.sqrt(h["shape_var"]) * 1000.0).reshape(-1, 1).astype(np.float32),
      texMU=(h["color_mean"].reshape(-1, 1) * 255.0).astype(np.float32),
      texPC=h["color_u"].astype(np.float32),
      texEV=(np.sqrt(h["color_var"]) * 255.0).reshape(-1, 1).astype(np.float32),
      tl=(h["tris"][:, [0, 2, 1]] + 1).astype(np.int32))


def _check_bfm2009(m, h):
  v = h["num_vertices"]
  assert (m.num_vertices, m.num_shape, m.num_expression, m.num_albedo) == (v, 6, 0, 5)
  np.testing.assert_allclose(m.mean, h["verts"], atol=1e-3)
  np.testing.assert_allclose(m.shape_basis, _expected_basis(h["shape_u"], h["shape_var"], v),
                             atol=1e-4)
  np.testing.assert_allclose(m.albedo_mean, h["color_mean"], atol=1e-5)
  np.testing.assert_allclose(m.albedo_basis, _expected_basis(h["color_u"], h["color_var"], v),
                             atol=1e-5)
  np.testing.assert_array_equal(m.triangles, h["tris"])
  _assert_outward(m)


def test_bfm2009_v5_mat(tmp_path, head):
  path = tmp_path / "01_MorphableModel.mat"
  scipy.io.savemat(path, _bfm2009_variables(head))
  assert morphable.detect_format(path) == "bfm2009"
  with pytest.warns(UserWarning, match=r"ibug_to_bfm2009\.txt"):   # no table next to it
    _check_bfm2009(morphable.load(path, crop=None), head)
  cropped = bfm.load_bfm2009(path, landmarks=None)          # crop="auto" -> face crop
  assert cropped.num_vertices == int(_face_mask(head["verts"]).sum())


def test_bfm2009_v73_mat(tmp_path, head):
  path = tmp_path / "01_MorphableModel.mat"
  with h5py.File(path, "w", userblock_size=512) as f:
    for key, value in _bfm2009_variables(head).items():
      f[key] = np.ascontiguousarray(value.T)                 # MATLAB is column-major
  with open(path, "r+b") as f:
    f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")
  assert morphable.detect_format(path) == "bfm2009"
  _check_bfm2009(bfm.load_bfm2009(path, crop=None, landmarks=None), head)


def test_deep3d_front_mat(tmp_path, head):
  v = head["num_vertices"]
  sd_shape, sd_expr = np.sqrt(head["shape_var"]), np.sqrt(head["expr_var"])
  keypoints = np.arange(68) * 7 + 3                          # 0-based
  path = tmp_path / "BFM_model_front.mat"
  scipy.io.savemat(path, dict(
      meanshape=(head["verts"].reshape(1, -1) / 100.0).astype(np.float32),   # decimetres
      idBase=(head["shape_u"] * sd_shape / 100.0).astype(np.float32),
      exBase=(head["expr_u"] * sd_expr / 100.0).astype(np.float32),
      meantex=(head["color_mean"].reshape(1, -1) * 255.0).astype(np.float32),
      texBase=(head["color_u"] * np.sqrt(head["color_var"]) * 255.0).astype(np.float32),
      tri=(head["tris"] + 1).astype(np.float64),
      keypoints=(keypoints + 1).reshape(-1, 1).astype(np.float64),
      point_buf=np.ones((v, 8)), skinmask=np.ones((1, v))))
  m = morphable.load(path)
  assert (m.num_vertices, m.num_shape, m.num_expression, m.num_albedo) == (v, 6, 4, 5)
  np.testing.assert_allclose(m.mean, head["verts"], atol=1e-3)
  np.testing.assert_allclose(m.shape_basis, _expected_basis(head["shape_u"], sd_shape, v,
                                                            is_variance=False), atol=1e-4)
  np.testing.assert_allclose(m.expression_basis, _expected_basis(head["expr_u"], sd_expr, v,
                                                                 is_variance=False),
                             atol=1e-4)
  np.testing.assert_allclose(m.albedo_mean, head["color_mean"], atol=1e-5)
  np.testing.assert_array_equal(m.landmarks, keypoints)
  np.testing.assert_array_equal(m.triangles, head["tris"])


def test_mat_without_expected_variables(tmp_path):
  path = tmp_path / "something_else.mat"
  scipy.io.savemat(path, dict(foo=np.zeros(3)))
  with pytest.raises(errors.ModelFileError,
                     match=r"something_else\.mat: not a Basel Face Model .mat file.*shapeMU"):
    morphable.load(path)
  partial = tmp_path / "partial.mat"
  scipy.io.savemat(partial, dict(shapeMU=np.zeros((6, 1)), shapePC=np.zeros((6, 1))))
  with pytest.raises(errors.ModelFileError,
                     match=r"partial\.mat: MATLAB variables \['shapeEV', 'texMU', 'texPC', "
                           r"'texEV', 'tl'\] are missing"):
    morphable.load(partial)


def test_truncated_mat(tmp_path, head):
  path = tmp_path / "cut.mat"
  scipy.io.savemat(path, _bfm2009_variables(head))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 3])
  with pytest.raises(errors.ModelFileError, match=r"cut\.mat: .*truncated or corrupt"):
    morphable.load(path)


# ----------------------------------------------------------------------------- real tables


@pytest.mark.parametrize("file_name, num_vertices", [
    ("ibug_to_bfm2017-1_bfm_nomouth.txt", bfm.BFM2017_NOMOUTH_VERTICES),
    ("ibug_to_bfm2009.txt", bfm.BFM2009_VERTICES),
])
def test_real_bfm_landmark_tables(shared_dir, file_name, num_vertices):
  table_path = shared_dir / "models" / "bfm_landmarks" / file_name
  if not table_path.is_file():
    pytest.skip(f"{table_path} not available (shared data absent)")
  table = morphable.read_ibug_mapping(table_path)
  defined = table[table >= 0]
  assert defined.size >= 15
  assert defined.max() < num_vertices
  assert table[30] >= 0                                      # the nose tip is defined


# ------------------------------------------ BFM 2017: the FOCUS reference's table and origin


def _dense_head(ring=150, around=240):
  """A head like _synthetic_head with ring·around vertices (enough for the reference's
  cropped-model landmark indices, which go up to 35398), one basis vector per part."""
  theta = np.linspace(0.25, np.pi - 0.25, ring)
  phi = np.linspace(0.0, 2 * np.pi, around, endpoint=False)
  t, p = np.meshgrid(theta, phi, indexing="ij")
  verts = np.stack([75.0 * np.sin(t) * np.sin(p), 110.0 * np.cos(t),
                    95.0 * np.sin(t) * np.cos(p)], -1).reshape(-1, 3)
  i, j = np.meshgrid(np.arange(ring - 1), np.arange(around), indexing="ij")
  a, b = (i * around + j).ravel(), (i * around + (j + 1) % around).ravel()
  tris = np.concatenate([np.stack([a, b, b + around], 1), np.stack([a, b + around, a + around], 1)])
  v = verts.shape[0]
  rng = np.random.default_rng(1)
  one = lambda: _orthonormal(3 * v, 1, rng)
  return dict(verts=verts, tris=tris, num_vertices=v, shape_u=one(), shape_var=np.array([100.0]),
              expr_u=one(), expr_var=np.array([10.0]), expr_mean=np.zeros((v, 3)),
              color_u=one(), color_var=np.array([0.1]), color_mean=np.full((v, 3), 0.5))


def test_bfm2017_reference_landmark_table_and_origin(tmp_path):
  from focus_jax.morphable import landmark_map
  h = _dense_head()
  path = tmp_path / "model2017-1_bfm_nomouth.h5"
  _write_bfm2017(path, h)
  # The reference's crop list keeps vertices in its own order (here: shuffled).
  keep = np.random.default_rng(2).permutation(h["num_vertices"])[:35500]
  np.save(tmp_path / "idxes_crop_points.npy", keep)
  crop = tmp_path / "idxes_crop_points.npy"
  m = morphable.load(path, crop=crop, landmarks="reference", origin="reference")
  table = landmark_map.FOCUS_BFM2017_CROP_LANDMARKS
  assert table.shape == (68,) and len(set(table.tolist())) == 68
  lm = np.asarray(m.landmarks)
  assert lm.shape == (68,) and (lm >= 0).all()               # all 68 defined
  # Cropped vertex k of the reference is full vertex keep[k]; moved by -100 mm in z.
  np.testing.assert_allclose(m.mean[lm], h["verts"][keep[table]] - [0.0, 0.0, 100.0],
                             atol=1e-3)
  plain = morphable.load(path, crop=crop, landmarks="reference")
  np.testing.assert_allclose(np.asarray(m.mean) - np.asarray(plain.mean),
                             np.broadcast_to([0.0, 0.0, -100.0], m.mean.shape), atol=1e-4)
  assert float(np.mean(m.mean[:, 2]) - np.mean(plain.mean[:, 2])) == pytest.approx(-100.0)
  np.testing.assert_array_equal(m.landmarks, plain.landmarks)
  # The geometric face crop does not depend on the origin.
  assert (bfm.load_bfm2017(path, landmarks=None, origin="reference").num_vertices
          == bfm.load_bfm2017(path, landmarks=None).num_vertices)
  with pytest.raises(errors.ModelFileError, match="crop vertex list"):
    bfm.load_bfm2017(path, crop="face", landmarks="reference")
  with pytest.raises(errors.ModelFileError, match="at least 35399"):
    bfm.load_bfm2017(path, crop=keep[:1000], landmarks="reference")
  with pytest.raises(errors.ModelFileError, match="origin"):
    bfm.load_bfm2017(path, landmarks=None, origin=(0.0, 100.0))


def test_train_config_bfm_fields_reach_the_loader(tmp_path, head):
  from focus_jax.autoencoder import networks
  from focus_jax.train import config as config_lib
  path = tmp_path / "model2017-1_bfm_nomouth.h5"
  _write_bfm2017(path, head)
  keep = np.arange(0, head["num_vertices"], 2)
  np.savetxt(tmp_path / "keep.txt", keep, fmt="%d")
  cfg = config_lib.tiny(model=str(path), num_shape=2, num_expression=2, num_albedo=2,
                        bfm_crop=str(tmp_path / "keep.txt"),
                        bfm_landmarks=str(_table(tmp_path)))
  plain = networks.load_model(cfg)
  moved = networks.load_model(cfg.replace(bfm_origin="reference"))
  assert plain.num_vertices == keep.size
  np.testing.assert_allclose(np.asarray(moved.mean) - np.asarray(plain.mean),
                             np.broadcast_to([0.0, 0.0, -100.0], plain.mean.shape), atol=1e-4)
  assert int(np.asarray(plain.landmarks)[30]) == 5     # full vertex 10 = cropped vertex 5
  with pytest.raises(ValueError, match="bfm_origin"):
    cfg.replace(bfm_origin="up")


def _table(tmp_path):
  lm = np.full(68, -1)
  lm[30] = 10
  morphable.write_ibug_mapping(tmp_path / "table.txt", lm)
  return tmp_path / "table.txt"


def test_bfm2017_hostile_crop_files_are_refused(tmp_path, head):
  """A user-supplied vertex-crop list (needed for the reference's landmark table): pickled,
  truncated, NaN, fractional and out-of-range files give one-line errors naming the file."""
  path = tmp_path / "model.h5"
  _write_bfm2017(path, head)
  n = head["num_vertices"]
  pickled = tmp_path / "pickled.npy"
  np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  truncated = tmp_path / "truncated.npy"
  np.save(truncated, np.arange(50))
  truncated.write_bytes(truncated.read_bytes()[:90])
  cases = {
      pickled: "cannot read vertex indices",
      truncated: "cannot read vertex indices",
      tmp_path / "nan.txt": "vertex indices must be integers",
      tmp_path / "half.txt": "vertex indices must be integers",
      tmp_path / "far.txt": "vertex indices must be integers",
      tmp_path / "absent.npy": "vertex crop file not found",
  }
  (tmp_path / "nan.txt").write_text("0\n1\nnan\n")
  (tmp_path / "half.txt").write_text("0\n1.5\n")
  (tmp_path / "far.txt").write_text(f"0\n{n}\n")
  for crop, message in cases.items():
    with pytest.raises(errors.ModelFileError, match=message) as info:
      bfm.load_bfm2017(path, crop=crop, landmarks=None)
    assert str(crop) in str(info.value), crop
