"""Five-point similarity alignment to the canonical crop, and back."""

import numpy as np
import pytest

from focus_jax.data import align


def _landmarks_with_five_points(points5):
  """68 landmarks whose five_points() are ``points5`` (eye corners +-3 px around the centre)."""
  lm = np.tile(np.mean(points5, 0), (68, 1))
  for corners, centre in (((36, 39), points5[0]), ((42, 45), points5[1])):
    lm[corners[0]] = centre - [3.0, 0.0]
    lm[corners[1]] = centre + [3.0, 0.0]
  lm[30], lm[48], lm[54] = points5[2], points5[3], points5[4]
  return lm


def _random_similarity(rng):
  angle, scale = rng.uniform(-0.5, 0.5), rng.uniform(0.5, 2.5)
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[scale * c, -scale * s, rng.uniform(-40, 40)],
                   [scale * s, scale * c, rng.uniform(-40, 40)]])


def test_template_landmarks_map_to_themselves():
  for size in (224, 112, 64):
    lm = _landmarks_with_five_points(align.template(size))
    al = align.estimate(lm, (size, size), size=size)
    np.testing.assert_allclose(al.matrix, np.eye(2, 3), atol=1e-9)
    np.testing.assert_allclose(al.to_crop(align.template(size)), align.template(size),
                               atol=1e-9)
    np.testing.assert_allclose(align.five_points(al.to_crop(lm)), align.template(size),
                               atol=1e-9)


def test_alignment_recovers_a_similarity_and_inverse_round_trips():
  rng = np.random.default_rng(0)
  for _ in range(5):
    m = _random_similarity(rng)                     # crop -> photo
    photo_lm = align.apply(m, _landmarks_with_five_points(align.template(224)))
    al = align.estimate(photo_lm, (300, 400))
    np.testing.assert_allclose(al.inverse, m, atol=1e-8)
    pts = rng.uniform(0, 300, (10, 2))
    np.testing.assert_allclose(al.to_original(al.to_crop(pts)), pts, atol=1e-8)
    np.testing.assert_allclose(align.invert(align.invert(al.matrix)), al.matrix, atol=1e-10)


def test_scale_translation_only():
  rng = np.random.default_rng(1)
  photo_lm = align.apply(_random_similarity(rng), _landmarks_with_five_points(align.template()))
  al = align.estimate(photo_lm, (200, 200), rotation=False)
  assert al.matrix[0, 1] == 0 and al.matrix[1, 0] == 0 and al.matrix[0, 0] > 0


def test_warp_pixel_convention():
  rng = np.random.default_rng(2)
  img = rng.uniform(size=(20, 30, 3)).astype(np.float32)
  # identity
  np.testing.assert_allclose(align.warp(img, np.eye(2, 3), (20, 30)), img, atol=1e-6)
  # output (i, j) reads input at (x + 3, y + 5): an integer shift
  shifted = align.warp(img, np.array([[1.0, 0, 3], [0, 1, 5]]), (10, 20))
  np.testing.assert_allclose(shifted, img[5:15, 3:23], atol=1e-6)
  # 2x upsampling: output pixel (row 9, col 11) has its centre at (11.5, 9.5), which reads
  # the input at (5.75, 4.75), i.e. index (col 5.25, row 4.25): bilinear 3:1 weights.
  up = align.warp(img[..., 0], np.array([[0.5, 0, 0], [0, 0.5, 0]]), (40, 60))
  a = img[..., 0]
  expected = (0.75 * (0.75 * a[4, 5] + 0.25 * a[4, 6])
              + 0.25 * (0.75 * a[5, 5] + 0.25 * a[5, 6]))
  np.testing.assert_allclose(up[9, 11], expected, atol=1e-5)


def test_landmarks_follow_image_content():
  """A bright dot at a landmark's pixel lands at that landmark in the crop."""
  rng = np.random.default_rng(3)
  m = _random_similarity(rng)
  m[:, :2] *= 1.0 / np.sqrt(abs(np.linalg.det(m[:, :2])))   # scale 1: a sharp dot survives
  m[:, 2] = [150, 120]
  photo_lm = align.apply(m, _landmarks_with_five_points(align.template()))
  img = np.zeros((300, 300, 3), np.float32)
  target = np.array([210.5, 140.5])                          # centre of pixel (row 140, col 210)
  img[140, 210] = 1.0
  ex = align.align_example(img, np.pad(photo_lm, ((0, 0), (0, 0))))
  al = ex["alignment"]
  crop_pt = al.to_crop(target)
  row, col = np.unravel_index(np.argmax(ex["image"][..., 0]), ex["image"].shape[:2])
  assert abs(col + 0.5 - crop_pt[0]) <= 0.75 and abs(row + 0.5 - crop_pt[1]) <= 0.75


def test_uncrop_maps_a_crop_back_onto_the_photo():
  rng = np.random.default_rng(4)
  ys, xs = np.mgrid[0:120, 0:160].astype(np.float32)
  photo = np.stack([xs / 160, ys / 120, 0.5 + 0 * xs], -1)   # smooth: bilinear is exact
  m = _random_similarity(rng)
  m[:, :2] /= 2.0 * np.sqrt(abs(np.linalg.det(m[:, :2])))    # photo px per crop px = 0.5
  m[:, 2] = [80, 60]
  al = align.estimate(align.apply(m, _landmarks_with_five_points(align.template(64))),
                      photo.shape[:2], size=64)
  crop = al.crop(photo)
  back, inside = al.uncrop(crop, background=np.zeros_like(photo))
  assert inside.sum() > 100
  interior = inside & np.roll(inside, 2, 0) & np.roll(inside, -2, 0) & np.roll(inside, 2, 1) \
      & np.roll(inside, -2, 1)
  np.testing.assert_allclose(back[interior], photo[interior], atol=2e-3)
  assert (back[~inside] == 0).all()
  mask_back, _ = al.uncrop(np.ones((64, 64), np.float32), order=0)
  assert set(np.unique(mask_back)) <= {0.0, 1.0}


def test_template_is_the_mean_face_at_zero_pose():
  from focus_jax import morphable
  model = morphable.builtin(resolution=25)
  np.testing.assert_allclose(align.template_from_model(model), align.TEMPLATE_224, atol=4.0)


def test_five_points_rejects_wrong_shape():
  with pytest.raises(ValueError, match="68, 2"):
    align.five_points(np.zeros((5, 2)))
