"""The misfit prior measured on real photos: the packaged file, its builder, and
``focus-jax fit``'s default use of it."""

import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from focus_jax import fitting, morphable, prior as prior_lib
from focus_jax.commands import fit as fit_cmd
from focus_jax.render import camera
from focus_jax.render import render as render_lib
from tests import face_scenes


@pytest.fixture(scope="module", autouse=True)
def parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def test_packaged_prior_fits_the_builtin_model_only():
  model = morphable.builtin()
  p = prior_lib.packaged_for(model)
  assert p is not None, f"{prior_lib.REAL_FACES_PRIOR} is missing from the package"
  assert p.model_name == model.name and p.sigma_scale.shape == (model.num_vertices,)
  assert np.isfinite(p.sigma_scale).all()
  assert p.sigma_scale.min() == 1.0 and p.sigma_scale.max() <= 3.0
  # Real skin is fitted worse than the synthetic σ everywhere, most at eyes/brows/lips:
  # a wide spread of multipliers, not a constant.
  assert 1.0 < np.median(p.sigma_scale) < 3.0 and (p.sigma_scale == 1.0).any()
  lm = np.asarray(model.landmarks)
  eyes, cheeks = lm[36:48], lm[[2, 14]]
  assert p.sigma_scale[eyes].mean() > p.sigma_scale[cheeks].mean()
  # Another model (another mesh) gets no prior from it.
  assert prior_lib.packaged_for(morphable.builtin(resolution=37)) is None


def test_load_refuses_non_finite_multipliers(tmp_path):
  path = tmp_path / "bad.npz"
  np.savez(path, sigma_scale=np.array([1.0, np.nan], np.float32), rms=np.zeros(2, np.float32),
           count=np.zeros(2, np.int32), model_name=np.asarray("m"))
  with pytest.raises(ValueError, match="bad.npz.*finite"):
    prior_lib.load(path)


def test_load_refuses_truncated_and_foreign_files(tmp_path):
  data = open(prior_lib.REAL_FACES_PRIOR, "rb").read()
  (tmp_path / "truncated.npz").write_bytes(data[:len(data) // 2])
  (tmp_path / "text.npz").write_bytes(b"not a prior")
  for name in ("truncated.npz", "text.npz"):
    with pytest.raises(ValueError, match=f"{name}.*not a focus-jax prior file"):
      prior_lib.load(tmp_path / name)


def test_fit_command_uses_the_packaged_prior_for_the_builtin_model(tmp_path):
  with flagsaver.flagsaver(size=64, fit_batch=1):
    rec = fit_cmd.make_reconstructor()
    np.testing.assert_array_equal(rec.prior.sigma_scale,
                                  prior_lib.packaged_for(rec.model).sigma_scale)
  with flagsaver.flagsaver(size=64, fit_batch=1, misfit_prior="none"):
    assert fit_cmd.make_reconstructor().prior is None
  small = tmp_path / "small.npz"
  morphable.save(face_scenes.small_model(), small)
  with flagsaver.flagsaver(size=64, fit_batch=1, model=str(small)):
    assert fit_cmd.make_reconstructor().prior is None     # another model: no prior


def test_build_prior_from_photos_widens_sigma_where_the_skin_is_unexplained():
  """Faces whose image-left half is painted green in every photo: the builder must
  give that half's vertices the largest multipliers and leave the other half near 1."""
  model = face_scenes.small_model()
  intr = camera.Intrinsics.reference(64)
  crops, lms, xs = [], [], []
  for seed in range(4):
    s = face_scenes.face_photo(height=64, width=64, shape_seed=seed)
    img = np.array(s["image"], np.float32)
    img[:, :28] = np.where(s["face"][:, :28, None], [0.1, 0.9, 0.1], img[:, :28])
    crops.append(img)
    lms.append(s["landmarks"])
    xs.append(np.asarray(render_lib.project_vertices(jnp.asarray(s["vertices_camera"]), intr))[:, 0])
  cfg = fitting.FitConfig(rounds=2, steps=5, max_vertices=0)
  p = fitting.build_prior_from_photos(model, np.stack(crops), np.stack(lms), config=cfg,
                                      batch=2, min_count=3, smooth=0)
  assert p.sigma_scale.shape == (model.num_vertices,) and np.isfinite(p.sigma_scale).all()
  seen = p.count >= 3
  x = np.median(np.stack(xs), 0)          # true image column of every vertex
  painted, clean = seen & (x < 22), seen & (x > 34)
  assert painted.sum() > 10 and clean.sum() > 10
  assert np.median(p.sigma_scale[painted]) > 2.0
  assert np.median(p.sigma_scale[clean]) < np.median(p.sigma_scale[painted]) - 0.5
  with pytest.raises(ValueError, match="crops"):
    fitting.build_prior_from_photos(model, np.zeros((2, 8, 8, 3)), np.zeros((3, 68, 2)))
