"""The built-in model's identity space (focus_jax.morphable.builtin_identity) and the
identity observability probe (benchmarks/identity_probe.py)."""

import json

import numpy as np
import pytest

from tests import benchmark_modules
from focus_jax import morphable
from focus_jax.morphable import builtin_face, builtin_identity

SMALL = 37


@pytest.fixture(scope="module")
def full():
  """The default-resolution model with every shape component (120)."""
  return morphable.builtin(num_shape=builtin_face.MAX_SHAPE)


def _rms(basis, num_vertices):
  b = np.asarray(basis, np.float64)
  return np.sqrt((b ** 2).sum((1, 2)) / num_vertices)


def test_target_rms_is_the_surrey_spectrum_then_a_decreasing_tail():
  t = builtin_identity.target_rms(120)
  assert t.shape == (120,)
  np.testing.assert_array_equal(t[:8], builtin_identity.SFM_ALIGNED_RMS_MM)
  assert np.all(np.diff(t) < 0) and t[-1] > 0
  np.testing.assert_array_equal(builtin_identity.target_rms(3), t[:3])
  assert 3.4 < t[0] < 3.6 and t[0] / t[1] > 2.0    # one dominant mode, as in the SFM


@pytest.mark.parametrize("resolution", [SMALL, builtin_face.DEFAULT_RESOLUTION])
def test_shape_spectrum_is_real_3dmm_like(resolution):
  m = morphable.builtin(resolution=resolution, num_shape=builtin_face.MAX_SHAPE)
  s = np.asarray(m.shape_basis, np.float64)
  rms = _rms(s, m.num_vertices)
  # Component k moves the vertices by target_rms(k) mm rms (up to the 2^-16 rounding).
  np.testing.assert_allclose(rms, builtin_identity.target_rms(len(s)), rtol=2e-3)
  assert 3.3 < rms[0] < 3.8 and 1.4 < rms[1] < 1.9 and 1.0 < rms[2] < 1.5
  var = rms ** 2
  assert 0.70 < var[:5].sum() / var.sum() < 0.80    # SFM (aligned): 73 % of 63 components
  assert var[:5].sum() / var.sum() > 2 * 5 / 120   # far from flat
  v = np.asarray(m.mean, np.float64)
  per_vertex = np.sqrt((s ** 2).sum(-1).sum(0))  # 3-D std of a random face (mm)
  assert 3.5 < per_vertex[v[:, 2] > 30].mean() < 6.5  # SFM aligned: mean 4.7 mm


def test_shape_components_have_no_similarity_part(full):
  v = np.asarray(full.mean, np.float64)
  q = builtin_identity.similarity_basis(v)
  flat = np.asarray(full.shape_basis, np.float64).reshape(full.num_shape, -1)
  part = np.linalg.norm(flat @ q, axis=1) / np.linalg.norm(flat, axis=1)
  assert part.max() < 1e-3
  # And the projection does remove a similarity: a scaled, shifted, rotated copy.
  field = 0.02 * (v - v.mean(0)) + np.array([1.0, -2.0, 0.5]) + np.cross([0.0, 0.01, 0.0], v)
  left = builtin_identity.remove_similarity(field[None], v)
  assert np.abs(left).max() < 1e-9 * np.abs(field).max() + 1e-9


def test_leading_components_are_global_and_smooth(full):
  """The first five move most of the face, and vary slowly along mesh edges (unlike the
  9-35 mm bumps of the tail)."""
  v = np.asarray(full.mean, np.float64)
  f = np.asarray(full.triangles)
  s = np.asarray(full.shape_basis, np.float64)
  face = (v[:, 2] > 40) & (np.abs(v[:, 0]) < 50)
  edges = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1),
                    axis=0)
  length = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)

  def roughness(k):   # rms displacement change per mm of edge, over rms displacement.
    d = np.linalg.norm(s[k, edges[:, 0]] - s[k, edges[:, 1]], axis=1) / length
    return np.sqrt(np.mean(d ** 2)) / np.sqrt(np.mean((s[k] ** 2).sum(-1)))

  lead = [roughness(k) for k in range(5)]
  tail = [roughness(k) for k in range(60, 65)]
  assert max(lead) < 0.5 * min(tail)
  for k in range(5):
    moved = np.linalg.norm(s[k][face], axis=1)
    assert np.mean(moved > 0.2 * moved.max()) > 0.4, k


def test_identity_modes_named_fields():
  v = builtin_face._template(SMALL)[0]
  modes = builtin_identity.identity_modes(v)
  assert modes.shape == (22, len(v), 3) and np.isfinite(modes).all()
  # 19 mirror-symmetric modes (u(Mp) = M u(p)), then 3 asymmetric ones.
  from scipy import spatial
  mirror = spatial.cKDTree(v).query(v * [-1.0, 1.0, 1.0])[1]
  flipped = modes[:, mirror] * np.array([-1.0, 1.0, 1.0])
  asym = np.linalg.norm((modes - flipped).reshape(22, -1), axis=1) / np.linalg.norm(
      modes.reshape(22, -1), axis=1)
  assert asym[:19].max() < 1e-6 and asym[19:].min() > 0.5


def test_sfm_constants_match_the_surrey_model(shared_dir):
  """The hard-coded spectrum is the Surrey Face Model's, similarity-aligned (read in
  place from ../shared; skipped without it)."""
  path = shared_dir / "models" / "sfm" / "sfm_shape_3448.bin"
  if not path.exists():
    pytest.skip(f"Surrey Face Model not found at {path} (shared data not available)")
  from focus_jax.morphable import eos_bin
  sfm = eos_bin.load_eos_model(str(path))
  mean = np.asarray(sfm.mean, np.float64)
  flat = np.asarray(sfm.shape_basis, np.float64).reshape(sfm.num_shape, -1)
  q = builtin_identity.similarity_basis(mean)
  resid = flat - (flat @ q) @ q.T
  rms = np.linalg.svd(resid, compute_uv=False) / np.sqrt(len(mean))
  np.testing.assert_allclose(rms[:8], builtin_identity.SFM_ALIGNED_RMS_MM, atol=6e-4)
  tail = builtin_identity.target_rms(62)[8:]
  assert np.abs(np.log(tail / rms[8:62])).max() < np.log(1.2)


# ---------------------------------------------------------------------------------
# The probe script.


@pytest.fixture(scope="module")
def probe():
  return benchmark_modules.load("identity_probe")


def test_r2_scores(probe):
  rng = np.random.default_rng(0)
  true = rng.normal(size=(50, 3)) * [1.0, 5.0, 0.1]
  np.testing.assert_allclose(probe.r2_scores(true, true), 1.0)
  np.testing.assert_allclose(probe.r2_scores(np.broadcast_to(true.mean(0), true.shape), true),
                             0.0, atol=1e-12)
  noisy = probe.r2_scores(true + rng.normal(size=true.shape) * [1.0, 5.0, 0.1], true)
  assert np.all((noisy > -2.0) & (noisy < 0.5))
  with pytest.raises(ValueError, match="r2_scores"):
    probe.r2_scores(true[:, :2], true)


def test_landmark_features_ignore_position_and_size(probe):
  rng = np.random.default_rng(1)
  lm = rng.normal(size=(4, 68, 2)) * 10 + 50
  angles = rng.normal(size=(4, 3))
  a = probe.landmark_features(lm, angles)
  b = probe.landmark_features(3.0 * lm + 7.0, angles)
  assert a.shape == (4, 139)
  np.testing.assert_allclose(a, b, atol=1e-9)
  # Ridge regression recovers a linear target from these features.
  x = rng.normal(size=(200, 5))
  y = x @ rng.normal(size=(5, 2))
  assert np.all(probe.ridge_r2(x[:150], y[:150], x[150:], y[150:], alpha=1e-6) > 0.999)


def test_probe_smoke(probe, tmp_path):
  """A 32² run on a few faces writes the JSON entry and the markdown table."""
  out, js = tmp_path / "p.md", tmp_path / "p.json"
  res = probe.main(["--label", "smoke", "--sizes", "32", "--train", "12", "--test", "6",
                    "--steps", "2", "--batch", "4", "--width", "4", "--stages", "1",
                    "--components", "3", "--json", str(js), "--out", str(out)])
  r = res["sizes"]["32"]
  assert len(r["shape_r2"]) == 3 and len(r["angle_r2"]) == 3
  assert np.isfinite(r["shape_r2"]).all() and np.isfinite(r["landmark_ridge_r2"]).all()
  assert json.loads(js.read_text())["smoke"]["num_shape"] == 20
  text = out.read_text()
  assert "## smoke" in text and "| 32² | encoder: shape R² |" in text


def test_ideal_observer_reads_landmarks(probe):
  """The landmarks' ideal observer recovers the leading components almost exactly from
  noiseless landmarks at a known pose, loses some with noise and an unknown pose, and
  scores ≈ 0 when the landmarks are pure noise."""
  from focus_jax import morphable
  from focus_jax.data import synthetic
  m = morphable.builtin(resolution=25, num_shape=12, num_expression=6, num_albedo=4)
  gen = synthetic.SyntheticFaces(m, synthetic.SyntheticConfig(size=64), seed=4)
  params = [gen.params(i) for i in range(60)]
  exact = probe.ideal_observer_r2(m, params, 64, noise_px=0.0, known_pose=True, components=3)
  noisy = probe.ideal_observer_r2(m, params, 64, noise_px=0.5, components=3)
  assert np.all(exact > 0.9), exact
  assert np.all(noisy < exact) and np.all(noisy > 0.0), noisy
  blind = probe.ideal_observer_r2(m, params, 64, noise_px=300.0, components=3)
  assert np.all(np.abs(blind) < 0.1), blind


def test_probe_ideal_only_smoke(probe, tmp_path):
  """--ideal_only renders and trains nothing and writes only the ideal-observer row."""
  out, js = tmp_path / "p.md", tmp_path / "p.json"
  res = probe.main(["--label", "ideal", "--ideal_only", "--sizes", "32", "--train", "3",
                    "--test", "20", "--components", "3", "--json", str(js), "--out", str(out)])
  r = res["sizes"]["32"]
  assert set(r) == {"ideal_observer_r2", "ideal_noise_px"} and len(r["ideal_observer_r2"]) == 3
  text = out.read_text()
  assert "ideal observer, pose unknown" in text and "encoder: shape R²" not in text
