"""The built-in parametric face model (focus_jax.morphable.builtin)."""

import jax
import numpy as np
import pytest
from scipy import spatial

from focus_jax import morphable
from focus_jax.morphable import builtin_face

SMALL = 37  # ~1.1k vertices: fast.
FIELDS = ("mean", "shape_basis", "expression_basis", "albedo_mean", "albedo_basis", "triangles",
          "landmarks", "uv")

# iBUG-68 left/right pairs (1-based): jaw, brows, nostrils, eyes, outer and inner lips.
PAIRS = ([(k, 18 - k) for k in range(1, 9)] + [(18 + k, 27 - k) for k in range(5)]
         + [(32, 36), (33, 35)]
         + [(37, 46), (38, 45), (39, 44), (40, 43), (41, 48), (42, 47)]
         + [(49, 55), (50, 54), (51, 53), (60, 56), (59, 57)]
         + [(61, 65), (62, 64), (68, 66)])
MIDLINE = (9, 28, 29, 30, 31, 34, 52, 58, 63, 67)


@pytest.fixture(scope="module")
def model():
  return morphable.builtin()


@pytest.fixture(scope="module")
def small():
  return morphable.builtin(resolution=SMALL)


def _np(model):
  return {f: np.asarray(getattr(model, f)) for f in FIELDS}


def _landmarks(m):
  """[68, 3] float64 landmark positions; row k - 1 is iBUG point k."""
  return np.asarray(m.mean, np.float64)[np.asarray(m.landmarks)]


def _mirror_index(verts):
  """Index of each vertex's exact mirror image (x -> -x)."""
  dist, idx = spatial.cKDTree(verts).query(verts * np.array([-1.0, 1.0, 1.0]))
  assert dist.max() == 0.0, "mesh is not exactly mirror-symmetric"
  return idx


def test_cached_deterministic_and_truncation_consistent(small):
  assert morphable.builtin(resolution=SMALL) is small
  assert morphable.builtin(resolution=SMALL - 1) is small  # even resolutions round up.
  before = _np(small)
  builtin_face._cached_model.cache_clear()
  builtin_face._full_model.cache_clear()
  builtin_face._template.cache_clear()
  rebuilt = morphable.builtin(resolution=SMALL)
  assert rebuilt is not small
  for field, value in _np(rebuilt).items():
    np.testing.assert_array_equal(value, before[field], err_msg=field)
  fewer = morphable.builtin(resolution=SMALL, num_shape=7, num_expression=5, num_albedo=3)
  np.testing.assert_array_equal(fewer.shape_basis, before["shape_basis"][:7])
  np.testing.assert_array_equal(fewer.expression_basis, before["expression_basis"][:5])
  np.testing.assert_array_equal(fewer.albedo_basis, before["albedo_basis"][:3])


def test_sizes_and_dtypes(model, small):
  assert 3000 <= model.num_vertices <= 10000
  assert 800 <= small.num_vertices <= 1500
  assert (model.num_shape, model.num_expression, model.num_albedo) == (80, 64, 80)
  assert model.name.startswith("builtin")
  arrays = _np(model)
  for field in ("mean", "shape_basis", "expression_basis", "albedo_mean", "albedo_basis", "uv"):
    assert arrays[field].dtype == np.float32 and np.isfinite(arrays[field]).all(), field
  assert arrays["triangles"].dtype == np.int32 and arrays["landmarks"].dtype == np.int32
  assert arrays["uv"].shape == (model.num_vertices, 2)
  assert arrays["uv"].min() >= 0.0 and arrays["uv"].max() <= 1.0
  big = morphable.builtin(num_shape=builtin_face.MAX_SHAPE, num_albedo=builtin_face.MAX_ALBEDO)
  assert (big.num_shape, big.num_albedo) == (builtin_face.MAX_SHAPE, builtin_face.MAX_ALBEDO)


@pytest.mark.parametrize("kwargs", [dict(resolution=10), dict(resolution=37.5),
                                    dict(num_shape=builtin_face.MAX_SHAPE + 1),
                                    dict(num_expression=-1), dict(num_albedo=True)])
def test_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    morphable.builtin(**kwargs)


@pytest.mark.parametrize("resolution", [SMALL, builtin_face.DEFAULT_RESOLUTION])
def test_mesh_is_clean(resolution):
  m = morphable.builtin(resolution=resolution)
  v, f = np.asarray(m.mean, np.float64), np.asarray(m.triangles)
  assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0]))
  area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
  assert area.min() > 1e-2  # mm^2
  assert np.array_equal(np.unique(f), np.arange(m.num_vertices))  # no stray vertices.
  # Manifold with consistent orientation: every directed edge occurs once, every
  # undirected edge at most twice.
  directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
  assert len(np.unique(directed, axis=0)) == len(directed)
  _, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
  assert counts.max() == 2
  # One boundary loop: every boundary vertex has exactly two boundary edges.
  boundary = np.sort(directed, axis=1)
  edges, counts = np.unique(boundary, axis=0, return_counts=True)
  per_vertex = np.bincount(edges[counts == 1].ravel(), minlength=m.num_vertices)
  assert set(np.unique(per_vertex)) <= {0, 2}


def test_triangles_are_counter_clockwise_from_the_front(model):
  v, f = np.asarray(model.mean, np.float64), np.asarray(model.triangles)
  normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
  centres = v[f].mean(axis=1)
  total = normals.sum(axis=0)
  assert total[2] > 0.9 * np.linalg.norm(total)
  front = centres[:, 2] > 30
  assert np.mean(normals[front, 2] > 0) > 0.9
  face = front & (np.abs(centres[:, 0]) < 35) & (centres[:, 1] > -60) & (centres[:, 1] < 70)
  assert np.mean(normals[face, 2] > 0) > 0.98


def test_human_scale_and_proportions(model):
  v = np.asarray(model.mean, np.float64)
  lm = _landmarks(model)
  width = v[:, 0].max() - v[:, 0].min()
  assert 135 < width < 155
  assert 110 < lm[27, 1] - lm[8, 1] < 130          # nasion (28) to chin (9)
  assert 90 < lm[30, 2] < 110                      # nose tip z
  assert v[:, 1].max() > lm[27, 1] + 50            # a forehead above the nasion
  cheek = v[np.argmin(np.hypot(v[:, 0] - 30, v[:, 1] - lm[30, 1]) + 1e3 * (v[:, 2] < 0))]
  assert 18 < lm[30, 2] - cheek[2] < 35            # nose tip ahead of the cheeks
  centre = (v.max(axis=0) + v.min(axis=0)) / 2
  assert centre[0] == 0.0 and abs(centre[1]) < 30  # origin roughly at the head centre


def test_landmark_semantics(model, small):
  for m in (model, small):
    assert np.all(np.asarray(m.landmarks) >= 0)
    lm = _landmarks(m)
    for a, b in PAIRS:
      np.testing.assert_allclose(lm[a - 1] * [-1, 1, 1], lm[b - 1], atol=1e-4,
                                 err_msg=f"iBUG {a}/{b}")
      assert lm[a - 1, 0] < 0, f"iBUG {a} should be on the subject's right (-x)"
    for k in MIDLINE:
      assert lm[k - 1, 0] == 0.0, k
    # Nose tip is the most forward point, the chin the lowest; eyes above the nose
    # above the mouth, brows above the eyes.
    assert np.argmax(lm[:, 2]) == 30
    assert np.argmin(lm[:, 1]) == 8
    brows, eyes = lm[17:27, 1].mean(), lm[36:48, 1].mean()
    nose, mouth = lm[31:36, 1].mean(), lm[48:68, 1].mean()
    assert brows > eyes > lm[30, 1] > nose > mouth > lm[8, 1]
    assert np.all(np.diff(lm[27:31, 1]) < 0)      # ridge runs down to the tip
    assert np.all(np.diff(lm[0:9, 0]) > 0)        # jaw from the right ear side to the chin
    assert np.all(np.diff(lm[0:9, 1]) < 0)
    # Outer corners outside the inner ones; a closed mouth and closed eyes.
    assert lm[36, 0] < lm[39, 0] < 0 < lm[42, 0] < lm[45, 0]
    assert lm[48, 0] < lm[60, 0] < 0
    np.testing.assert_array_equal(lm[61:64], lm[[67, 66, 65]])
    np.testing.assert_array_equal(lm[37:39], lm[[41, 40]])
    assert lm[51, 1] > lm[62, 1] > lm[57, 1]       # upper lip, mouth line, lower lip


def _flat(basis):
  return np.asarray(basis, np.float64).reshape(basis.shape[0], -1)


@pytest.mark.parametrize("name", ["shape_basis", "expression_basis", "albedo_basis"])
def test_bases_orthogonal_and_ordered(model, name):
  b = _flat(getattr(model, name))
  gram = b @ b.T
  var = np.diag(gram)
  assert np.all(np.diff(var) <= 1e-6 * var[0])
  corr = gram / np.sqrt(np.outer(var, var))
  assert np.abs(corr - np.eye(len(b))).max() < 1e-3


def test_shape_basis_amplitudes_and_symmetry(model):
  v = np.asarray(model.mean, np.float64)
  s = np.asarray(model.shape_basis, np.float64)
  front = v[:, 2] > 30
  rms = np.sqrt((s ** 2).sum(-1).mean(-1))
  assert 1.0 < rms[0] < 5.0                        # mm, the first component
  per_vertex = np.sqrt((s ** 2).sum(-1).sum(0))    # 3-D std of a random face
  assert 2.5 < per_vertex[front].mean() < 6.0
  assert per_vertex.max() < 10.0
  mirror = _mirror_index(v)
  flipped = s[:, mirror] * np.array([-1.0, 1.0, 1.0])
  symmetric = np.sum(((s + flipped) / 2) ** 2) / np.sum(s ** 2)
  assert 0.75 < symmetric < 0.99                   # mostly, not perfectly, symmetric


def test_expression_basis_is_localized(model):
  v = np.asarray(model.mean, np.float64)
  e = np.asarray(model.expression_basis, np.float64)
  std = np.sqrt((e ** 2).sum(-1).sum(0))
  mouth = np.hypot(v[:, 0], v[:, 1] + 35) < 20
  forehead_top = (v[:, 1] > 85) & (np.abs(v[:, 0]) < 40)
  assert 1.5 < std[mouth].mean() < 10.0
  assert std[forehead_top].mean() < 0.3 * std[mouth].mean()


def test_albedo_mean_and_samples_in_range(model):
  mean = np.asarray(model.albedo_mean, np.float64)
  basis = np.asarray(model.albedo_basis, np.float64)
  assert mean.min() >= 0.05 and mean.max() <= 0.8
  skin = np.median(mean, axis=0)
  assert skin[0] > skin[1] > skin[2]               # reddish skin tone
  # Lips (between the outer contour and the mouth line) are redder and darker, brows
  # and nostrils darker.
  v = np.asarray(model.mean, np.float64)
  lm = _landmarks(model)
  def colour_at(x, y):
    return mean[np.argmin(np.hypot(v[:, 0] - x, v[:, 1] - y) + 1e3 * (v[:, 2] < 0))]
  for upper, lower in ((51, 62), (57, 66)):
    lip = colour_at(lm[upper, 0], (lm[upper, 1] + lm[lower, 1]) / 2)
    assert lip[1] < 0.8 * skin[1] and lip[0] / lip[1] > 1.1 * skin[0] / skin[1]
  assert np.all(colour_at(*lm[19, :2] + [0, -2]) < 0.7 * skin)  # brow
  for k in range(len(basis)):
    for sign in (-2.0, 2.0):
      sample = mean + sign * basis[k]
      assert sample.min() >= 0.0 and sample.max() <= 1.0, k
  coeffs = np.random.default_rng(0).normal(size=(16, len(basis)))
  samples = mean + np.einsum("bk,kvc->bvc", coeffs, basis)
  assert np.mean((samples < 0) | (samples > 1)) < 1e-3


def test_works_with_model_functions(small):
  verts = jax.jit(morphable.vertices)(small, np.zeros(small.num_shape, np.float32),
                                      np.zeros(small.num_expression, np.float32))
  np.testing.assert_array_equal(verts, small.mean)
  lm = morphable.landmark_positions(small, verts)
  assert lm.shape == (68, 3) and bool(morphable.landmark_mask(small).all())
