"""Training augmentation (focus_jax.data.augment): the reference's shift / scale / rotation /
flip ranges, and the landmarks moving exactly with the image."""

import numpy as np
import pytest

from focus_jax.data import augment

S = 64


def _dot_image(points, size=S, sigma=1.2):
  """[S, S, 3] black image with a Gaussian dot at each (x, y) point (project coords)."""
  ys, xs = np.mgrid[0:size, 0:size] + 0.5
  img = np.zeros((size, size), np.float64)
  for x, y in points:
    img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
  return np.repeat(np.clip(img, 0, 1)[..., None], 3, -1).astype(np.float32)


def _centroid(img, near, radius=5.0):
  ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]] + 0.5
  w = img[..., 0] * (((xs - near[0]) ** 2 + (ys - near[1]) ** 2) < radius ** 2)
  return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


def _landmarks(rng):
  lm = rng.uniform(20, 44, size=(68, 2)).astype(np.float32)
  lm[8] = (40.0, 26.0)   # a point off the centre: where the dot goes
  return lm


@pytest.mark.parametrize("flip", [False, True])
def test_dot_at_a_landmark_lands_at_the_transformed_landmark(flip):
  rng = np.random.default_rng(3)
  lm = _landmarks(rng)
  for aug in [augment.Augmentation(shift=(3.0, -2.0), scale=1.08, angle=9.0, flip=flip),
              augment.Augmentation(shift=(-3.0, 1.0), scale=0.91, angle=-7.5, flip=flip)]:
    ex = dict(image=_dot_image([lm[8]]), landmarks=lm, name="x")
    out = augment.augment_example(ex, aug)
    # After a flip the chin (8) keeps its label; take a non-symmetric point too.
    assert out["name"] == "x"
    np.testing.assert_allclose(_centroid(out["image"], out["landmarks"][8]),
                               out["landmarks"][8], atol=0.15)
    j = 36   # an eye corner: after a flip it is labelled as the other eye's corner
    ex = dict(image=_dot_image([lm[j]]), landmarks=lm)
    out = augment.augment_example(ex, aug)
    k = augment.MIRROR_68[j] if flip else j
    np.testing.assert_allclose(_centroid(out["image"], out["landmarks"][k]),
                               out["landmarks"][k], atol=0.15)


def test_mask_moves_with_the_image_and_stays_binary():
  rng = np.random.default_rng(0)
  img = rng.uniform(size=(S, S, 3)).astype(np.float32)
  mask = np.zeros((S, S), np.float32)
  mask[20:40, 24:44] = 1.0
  aug = augment.Augmentation(shift=(2.0, 1.0), scale=1.05, angle=6.0, flip=True)
  out = augment.augment_example(dict(image=img, landmarks=_landmarks(rng), pseudo=mask),
                                aug)
  assert set(np.unique(out["pseudo"])) <= {0.0, 1.0}
  expected = augment.transform_image(aug, mask, order=1)
  assert np.mean(out["pseudo"] != (expected >= 0.5)) == 0
  # The square's corners, moved by the landmark map, bound the warped mask.
  corners = augment.transform_landmarks(
      aug, S, np.array([[24, 20], [44, 20], [24, 40], [44, 40]] * 17, np.float32))
  ys, xs = np.nonzero(out["pseudo"])
  assert xs.min() + 0.5 >= corners[:, 0].min() - 1 and xs.max() + 0.5 <= corners[:, 0].max() + 1
  assert ys.min() + 0.5 >= corners[:, 1].min() - 1 and ys.max() + 0.5 <= corners[:, 1].max() + 1


def test_flip_twice_is_the_identity():
  rng = np.random.default_rng(1)
  img = rng.uniform(size=(S, S, 3)).astype(np.float32)
  lm = _landmarks(rng)
  flip = augment.Augmentation(shift=(0.0, 0.0), scale=1.0, angle=0.0, flip=True)
  once = augment.augment_example(dict(image=img, landmarks=lm), flip)
  np.testing.assert_allclose(once["image"], img[:, ::-1], atol=1e-5)
  twice = augment.augment_example(once, flip)
  np.testing.assert_allclose(twice["image"], img, atol=1e-5)
  np.testing.assert_allclose(twice["landmarks"], lm, atol=1e-4)
  # A flipped point x goes to S - x; the labels swap left/right.
  np.testing.assert_allclose(once["landmarks"][augment.MIRROR_68, 0], S - lm[:, 0], atol=1e-4)


def test_mirror_table_is_the_ibug_left_right_involution():
  m = augment.MIRROR_68
  assert sorted(m) == list(range(68))
  np.testing.assert_array_equal(m[m], np.arange(68))
  fixed = set(np.flatnonzero(m == np.arange(68)))
  assert fixed == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}   # the midline points
  assert m[0] == 16 and m[17] == 26 and m[36] == 45 and m[39] == 42 and m[48] == 54
  assert m[31] == 35 and m[60] == 64 and m[41] == 46


@pytest.mark.parametrize("size,max_shift", [(224, 10), (64, 3)])
def test_sampled_ranges_are_the_references(size, max_shift):
  rng = np.random.default_rng(5)
  draws = [augment.sample(rng, size) for _ in range(2000)]
  shifts = np.array([d.shift for d in draws])
  assert np.all(shifts == np.round(shifts)) and np.abs(shifts).max() == max_shift
  assert set(np.unique(shifts)) == set(range(-max_shift, max_shift + 1))
  scales = np.array([d.scale for d in draws])
  assert scales.min() >= 0.9 and scales.max() <= 1.1 and np.ptp(scales) > 0.19
  angles = np.array([d.angle for d in draws])
  assert np.abs(angles).max() <= 10.0 and np.ptp(angles) > 19.0
  assert 0.45 < np.mean([d.flip for d in draws]) < 0.55


def test_identity_augmentation_changes_nothing():
  rng = np.random.default_rng(2)
  img = rng.uniform(size=(S, S, 3)).astype(np.float32)
  lm = _landmarks(rng)
  out = augment.augment_example(dict(image=img, landmarks=lm), augment.IDENTITY)
  np.testing.assert_allclose(out["image"], img, atol=1e-5)
  np.testing.assert_allclose(out["landmarks"], lm, atol=1e-5)


def test_transform_refuses_other_sizes():
  f = augment.make_transform(S)
  with pytest.raises(ValueError, match="64"):
    f(dict(image=np.zeros((32, 32, 3), np.float32), landmarks=np.zeros((68, 2))),
      np.random.default_rng(0))


# ------------------------------------------------------------- pasted occluders (stage 3)


@pytest.mark.parametrize("kind", ["cutout", "cutmix"])
def test_pasted_occluder_mask_matches_the_pasted_pixels(kind):
  from focus_jax.data import cutout
  rng = np.random.default_rng(7)
  img = rng.uniform(0.2, 0.8, size=(S, S, 3)).astype(np.float32)
  pseudo = np.zeros((S, S), np.float32)
  pseudo[8:56, 8:56] = 1.0
  for seed in range(5):
    out = cutout.occlude_example(dict(image=img, pseudo=pseudo, name="x"),
                                 np.random.default_rng(seed), kind)
    changed = np.any(np.abs(out["image"] - img) > 1e-6, axis=-1)
    box = cutout.box_mask(cutout.random_box(np.random.default_rng(seed), S), S) > 0
    assert changed.sum() > 0
    np.testing.assert_array_equal(changed, box)           # pixels pasted = the box
    np.testing.assert_array_equal(out["pseudo"], pseudo * ~box)   # box labelled outlier
    if kind == "cutout":
      assert np.all(out["image"][box] == 0)
    assert out["name"] == "x" and out["image"].dtype == np.float32


def test_occluder_box_ranges_are_the_references():
  from focus_jax.data import cutout
  rng = np.random.default_rng(0)
  boxes = np.array([cutout.random_box(rng, 224) for _ in range(3000)])
  x0, y0, w, h = boxes.T
  assert x0.min() == 33 and x0.max() == 167 and y0.min() == 33 and y0.max() == 167
  assert w.min() == 21 and w.max() == 88 and (x0 + w).max() <= 222
  assert np.all(h >= 21) and np.all(h <= 88)


def test_occluder_transform_probability_and_none():
  from focus_jax.data import cutout
  assert cutout.make_transform("none") is None
  with pytest.raises(ValueError, match="unet_occluders"):
    cutout.make_transform("hands")
  f = cutout.make_transform("cutout")
  img = np.full((S, S, 3), 0.5, np.float32)
  pasted = [not np.array_equal(f(dict(image=img), np.random.default_rng(i))["image"], img)
            for i in range(800)]
  assert 0.2 < np.mean(pasted) < 0.3


# ------------------------------------------------------------- wiring into the training data


class _Faces:
  """A tiny in-memory source: a dot at landmark 36 of each example, a pseudo mask."""

  def __init__(self, n=8):
    rng = np.random.default_rng(0)
    self.lms = [_landmarks(rng) for _ in range(n)]
    for lm in self.lms:
      lm[36] = (24.0, 30.0)

  def __len__(self):
    return len(self.lms)

  def load(self, i):
    pseudo = np.zeros((S, S), np.float32)
    pseudo[16:48, 16:48] = 1.0
    return dict(image=_dot_image([self.lms[i][36]]), landmarks=self.lms[i], pseudo=pseudo)


def _batches(config, n=2, state=None):
  from focus_jax.train import data as data_lib
  pipe = data_lib.make_pipeline(_Faces(), config, 4, state=state)
  with pipe:
    out = [next(pipe) for _ in range(n)]
    return out, pipe.state()


def test_training_pipeline_augments_only_when_asked_and_resumes_exactly():
  from focus_jax.train import config as config_lib
  from focus_jax.train import data as data_lib
  base = config_lib.tiny(num_threads=1, prefetch=0)
  assert data_lib.training_transform(base) is None            # tiny: no augmentation
  plain, _ = _batches(base)
  src = _Faces()
  for b in plain:
    np.testing.assert_array_equal(b["landmarks"], [src.lms[i] for i in b["index"]])
  cfg = base.replace(augment=True)
  aug, state = _batches(cfg)
  moved = 0
  for b in aug:
    for img, lm, idx in zip(b["image"], b["landmarks"], b["index"]):
      moved += not np.allclose(lm, src.lms[idx])
      # The dot (landmark 36, or 45 when flipped) is where the landmarks say.
      k = 36 if np.allclose(_centroid(img, lm[36]), lm[36], atol=0.2) else 45
      np.testing.assert_allclose(_centroid(img, lm[k]), lm[k], atol=0.2)
    assert set(np.unique(b["pseudo"])) <= {0.0, 1.0}
  assert moved >= 6
  again, _ = _batches(cfg)                                     # same seed: same batches
  np.testing.assert_array_equal(again[1]["image"], aug[1]["image"])
  first, mid = _batches(cfg, n=1)                              # resume after one batch
  resumed, _ = _batches(cfg, n=1, state=mid)
  np.testing.assert_array_equal(resumed[0]["landmarks"], aug[1]["landmarks"])
  # Stage 3 with pasted occluders: outlier in the pseudo mask where the image changed.
  occ, _ = _batches(base.replace(stage="unet", unet_occluders="cutout"), n=2)
  pasted = np.concatenate([b["pseudo"] for b in occ]).sum((1, 2)) < 32 * 32
  assert pasted.any() and not pasted.all()
  with pytest.raises(ValueError, match="unet_occluders"):
    base.replace(unet_occluders="hands")
