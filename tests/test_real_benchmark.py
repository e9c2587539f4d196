"""The semi-real benchmark's parts: realistic occluders (exact layers, placed by the
landmarks, deterministic), the landmark-hull metric, the people split, and a smoke run
of benchmarks/real.py (slow)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from focus_jax.data import real_occluders as ro
from focus_jax.eval import mask_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")


def toy_landmarks(size=128, centre=(64.0, 60.0), d=None):
  """A plausible frontal iBUG-68 face (pixels): jaw, brows, nose, eyes, mouth."""
  d = 0.28 * size if d is None else d
  cx, cy = centre
  pts = []
  for k in range(17):                                   # jaw, ear to ear under the chin
    t = np.pi * k / 16
    pts.append((cx - 0.95 * d * np.cos(t), cy - 0.15 * d + 1.35 * d * np.sin(t)))
  for side in (-1, 1):                                  # brows
    for k in range(5):
      x = cx + side * (0.85 - 0.175 * k) * d if side < 0 else cx + (0.15 + 0.175 * k) * d
      pts.append((x, cy - 0.85 * d - 0.08 * d * np.sin(np.pi * k / 4)))
  pts += [(cx, cy - (0.55 - 0.125 * k) * d) for k in range(4)]          # nose ridge
  pts += [(cx + (k - 2) * 0.1 * d, cy + 0.05 * d) for k in range(5)]    # nostrils
  for ex in (cx - 0.5 * d, cx + 0.5 * d):                               # eyes
    for k in range(6):
      t = np.pi + k * np.pi / 3
      pts.append((ex + 0.2 * d * np.cos(t), cy - 0.5 * d + 0.06 * d * np.sin(t)))
  for k in range(12):                                   # outer lips from the left corner
    t = np.pi + k * np.pi / 6
    pts.append((cx + 0.4 * d * np.cos(t), cy + 0.45 * d + 0.15 * d * np.sin(t)))
  for k in range(8):                                    # inner lips
    t = np.pi + k * np.pi / 4
    pts.append((cx + 0.3 * d * np.cos(t), cy + 0.45 * d + 0.06 * d * np.sin(t)))
  return np.array(pts, np.float64)


def toy_photo(lm, size=128, seed=0):
  """A grey background with a skin-coloured face over the landmark hull (plus noise)."""
  rng = np.random.default_rng(seed)
  photo = np.full((size, size, 3), 0.45, np.float32)
  hull = mask_metrics.landmark_hull(lm, (size, size))
  photo[hull] = (0.82, 0.62, 0.5)
  return np.clip(photo + rng.normal(0, 0.02, photo.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def face():
  lm = toy_landmarks()
  return lm, toy_photo(lm)


def _at(mask, point):
  x, y = point
  return bool(mask[int(np.floor(y)), int(np.floor(x))])


# ----------------------------------------------------------------------------- occluders


@pytest.mark.parametrize("family", ro.FAMILIES)
def test_occluder_layer_is_exact(face, family):
  lm, photo = face
  occ = ro.make_occluder(family, np.random.default_rng([1, 2]), photo, lm)
  assert occ.family == family and occ.description.startswith(family)
  assert occ.colour in ro.COLOUR_CLASSES
  assert occ.alpha.shape == photo.shape[:2] and occ.rgb.shape == photo.shape
  assert np.isfinite(occ.rgb).all() and occ.rgb.min() >= 0 and occ.rgb.max() <= 1
  assert occ.alpha.min() >= 0 and occ.alpha.max() <= 1
  out = ro.composite(photo, occ)
  a = occ.alpha[..., None]
  np.testing.assert_allclose(out, photo * (1 - a) + occ.rgb * a, atol=1e-6)
  clear = occ.alpha == 0
  assert clear.any() and (occ.alpha > 0.9).any()
  np.testing.assert_array_equal(out[clear], photo[clear])        # untouched where alpha = 0
  # a pixel moves from the photo towards the occluder by exactly its alpha
  assert (np.abs(out - occ.rgb) <= (1 - a) + 1e-6).all()
  assert (np.abs(out - photo) <= a + 1e-6).all()
  # the binary truth is alpha >= 0.5: changed pixels outside it are only the soft rim
  np.testing.assert_array_equal(occ.mask, occ.alpha >= 0.5)
  changed = np.abs(out - photo).max(-1) > 0
  assert not (changed & ~occ.mask & (occ.alpha > 0.5)).any()
  hull = mask_metrics.landmark_hull(lm, photo.shape[:2])
  assert occ.mask[hull].any()


@pytest.mark.parametrize("family", ro.FAMILIES)
def test_occluder_moves_with_the_landmarks(face, family):
  lm, photo = face
  dx, dy = 7, 4
  moved_photo = np.roll(photo, (dy, dx), (0, 1))
  a = ro.make_occluder(family, np.random.default_rng(5), photo, lm).alpha
  b = ro.make_occluder(family, np.random.default_rng(5), moved_photo, lm + (dx, dy)).alpha
  # compare away from the borders (occluders may leave the image)
  np.testing.assert_allclose(b[20 + dy:-20 + dy, 20 + dx:-20 + dx], a[20:-20, 20:-20],
                             atol=2e-3)


def test_occluders_sit_where_they_belong(face):
  lm, photo = face
  mouth, chin = lm[48:68].mean(0), lm[8] + (0, -3)
  eyes = (lm[36:42].mean(0), lm[42:48].mean(0))
  for seed in range(3):
    rng = lambda: np.random.default_rng(seed)  # noqa: E731
    for family in ("surgical_mask", "cloth_mask"):
      m = ro.make_occluder(family, rng(), photo, lm).mask
      assert _at(m, mouth) and _at(m, lm[30]) and not any(_at(m, e) for e in eyes), family
    m = ro.make_occluder("sunglasses", rng(), photo, lm).mask
    assert all(_at(m, e) for e in eyes) and not _at(m, mouth)
    m = ro.make_occluder("scarf", rng(), photo, lm).mask
    assert _at(m, chin) and not any(_at(m, e) for e in eyes)


def test_benchmark_occluders_are_fixed_per_photo(face):
  lm, photo = face
  a = ro.benchmark_occluders(photo, lm, "img7.jpg", index=1, count=4, seed=0)
  b = ro.benchmark_occluders(photo, lm, "img7.jpg", index=1, count=4, seed=0)
  assert [o.family for o in a] == [ro.FAMILIES[(4 + k) % len(ro.FAMILIES)] for k in range(4)]
  for x, y in zip(a, b):
    assert x.description == y.description and x.colour == y.colour
    np.testing.assert_array_equal(x.alpha, y.alpha)
    np.testing.assert_array_equal(x.rgb, y.rgb)
  hull = mask_metrics.landmark_hull(lm, photo.shape[:2])
  for o in a:
    assert ro.MIN_COVERAGE <= o.mask[hull].mean() <= ro.MAX_COVERAGE
  other = ro.benchmark_occluders(photo, lm, "img8.jpg", index=1, count=4, seed=0)
  assert any(not np.array_equal(x.alpha, y.alpha) for x, y in zip(a, other))


def test_synthetic_family_matches_the_generator(face):
  """The synthetic family is the existing generator's exact combined layer."""
  from focus_jax.data import occluders
  lm, photo = face
  geo = ro.face_geometry(photo, lm)
  alpha, rgb, _ = ro.synthetic(np.random.default_rng(3), geo)
  rng = np.random.default_rng(3)
  target = rng.uniform(0.15, 0.45)            # the family draws its coverage first
  ref, _, _, _ = occluders.occlude(rng, photo, geo.hull, geo.frame, target,
                                   kinds=("shape", "hand", "mask", "glasses"), max_layers=2)
  np.testing.assert_allclose(photo * (1 - alpha[..., None]) + rgb * alpha[..., None], ref,
                             atol=2e-5)


def test_unknown_family_and_bad_landmarks_are_named(face):
  lm, photo = face
  with pytest.raises(ValueError, match="unknown occluder family 'umbrella'"):
    ro.make_occluder("umbrella", np.random.default_rng(0), photo, lm)
  with pytest.raises(ValueError, match="68 finite landmarks"):
    ro.make_occluder("hand", np.random.default_rng(0), photo, lm[:5])


# ----------------------------------------------------------------------------- metric


def test_landmark_hull_by_hand():
  square = np.array([[1, 1], [5, 1], [5, 4], [1, 4], [3, 2]], np.float64)   # + an inner point
  hull = mask_metrics.landmark_hull(square, (6, 6))
  want = np.zeros((6, 6), bool)
  want[1:4, 1:5] = True                                  # centres 1.5..4.5 x 1.5..3.5
  np.testing.assert_array_equal(hull, want)
  on_edge = mask_metrics.landmark_hull([[1.5, 1.5], [4.5, 1.5], [4.5, 3.5], [1.5, 3.5]], (6, 6))
  np.testing.assert_array_equal(on_edge, want)           # centres on the hull count
  tri = mask_metrics.landmark_hull([[0, 0], [4, 0], [0, 4]], (4, 4))
  assert tri.sum() == 10 and tri[0, 3] and not tri[3, 3]  # centres with x + y <= 4
  with pytest.raises(ValueError, match="one line"):
    mask_metrics.landmark_hull([[0, 0], [1, 1], [2, 2]], (4, 4))


def test_hull_mask_scores_by_hand():
  lm = np.array([[1, 1], [5, 1], [5, 4], [1, 4]], np.float64)   # hull: rows 1-3, cols 1-4
  occluder = np.zeros((6, 6), bool)
  occluder[1:4, 1] = True                                # 3 hull pixels occluded
  occluder[0, 0] = True                                  # outside the hull: ignored
  pred = np.ones((6, 6), bool)
  pred[1:4, 1] = False                                   # finds the occluder ...
  pred[1, 2] = False                                     # ... plus one face pixel
  pred[5, :] = False                                     # outside the hull: ignored
  s = mask_metrics.hull_mask_scores(pred, occluder, lm)
  assert s["hull_pixels"] == 12
  assert s["precision"] == pytest.approx(1.0)
  assert s["recall"] == pytest.approx(8 / 9)
  assert s["f1"] == pytest.approx(16 / 17)
  assert s["occluder_iou"] == pytest.approx(3 / 4)
  assert s["all_inlier_f1"] == pytest.approx(6 / 7)      # precision 9/12, recall 1
  assert s["outlier_share"] == pytest.approx(4 / 12)
  assert s["false_outlier_share"] == pytest.approx(1 / 9)
  assert s["occluded_share"] == pytest.approx(3 / 12)
  swapped = mask_metrics.hull_mask_scores(occluder, occluder, lm)   # skin called outlier
  assert swapped["f1"] == 0.0 and swapped["occluder_iou"] == 0.0
  with pytest.raises(ValueError, match="same"):
    mask_metrics.hull_mask_scores(pred[:5], occluder, lm)


# ----------------------------------------------------------------------------- split


def _load_real_split():
  sys.path.insert(0, BENCH)
  try:
    import real_split  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BENCH)
  return real_split


def test_split_keeps_people_in_one_half():
  real_split = _load_real_split()
  rows = real_split.read_split()
  names = [n for n, _, _ in rows]
  assert len(names) == len(set(names))
  half_of = {}
  for _, person, half in rows:
    assert half_of.setdefault(person, half) == half, f"{person} is in both halves"
  counts = {h: sum(h == hh for *_, hh in rows) for h in real_split.HALVES}
  assert min(counts.values()) >= 0.4 * len(rows)


def test_split_covers_the_shared_photos(shared_dir):
  folder = shared_dir / "data" / "real_faces"
  if not folder.is_dir():
    pytest.skip(f"{folder} missing (shared real faces)")
  real_split = _load_real_split()
  photos = real_split.list_photos(str(folder))
  assert len(photos) == 60
  assert sorted(n for n, _, _ in real_split.read_split()) == sorted(photos)


def test_split_halves_are_balanced_people_groups():
  real_split = _load_real_split()
  half = real_split.halves(["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2)
  assert set(half.values()) == set(real_split.HALVES)
  load = {h: 0 for h in real_split.HALVES}
  for p, n in (("a", 5), ("b", 4), ("c", 3), ("d", 2)):
    load[half[p]] += n
  assert sorted(load.values()) == [7, 7]


# ----------------------------------------------------------------------------- the script


def _load_bench():
  spec = importlib.util.spec_from_file_location("real_bench", os.path.join(BENCH, "real.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_benchmark_skips_without_the_photos(tmp_path, capsys):
  bench = _load_bench()
  assert bench.run(["real.py", "--data", str(tmp_path / "absent"), "--out",
                    str(tmp_path / "o")]) is None
  assert "skipped" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path, shared_dir):
  if not (shared_dir / "data" / "real_faces").is_dir():
    pytest.skip("shared real_faces photos missing")
  from focus_jax.data import detect
  if not detect.available():
    pytest.skip("dlib / face-recognition-models not installed")
  bench = _load_bench()
  out = tmp_path / "real"
  report = bench.run(["real.py", "--limit", "2", "--half", "heldout", "--per_photo", "2",
                      "--occluded_sample", "2", "--out", str(out), "--iterations", "6",
                      "--fit_batch", "4", "--size", "96"])
  data = json.loads((out / "real.json").read_text())
  assert len(data["cases"]) == 2 * 2 * 2 == len(report["cases"])
  for r in data["cases"]:
    assert r["half"] == "heldout" and 0.0 <= r["f1"] <= 1.0 and 0.0 <= r["occluder_iou"] <= 1.0
    assert 0.0 < r["occluded_share"] < 1.0
  assert data["summary"]["heldout/unoccluded"]["n"] == 4
  assert data["unoccluded"]["heldout"]["n"] == 2
  text = (out / "real.md").read_text()
  assert "| heldout | dlib |" in text
  for f in ("real_worst.png", "real_examples.png", "real_unoccluded.png",
            "real_occluded_faces.png"):
    assert (out / f).stat().st_size < 1_000_000
