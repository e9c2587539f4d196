"""Identity networks: ArcFace iResNet (converter parity with PyTorch), dlib's ResNet
(file reader, parity with dlib-bin on real photos), landmark alignment, jit/grad."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.nets import align, dlib_reader, identity, layers, weights
from focus_jax.nets.weights import WeightsError


def _key(seed=0):
  return jax.random.key(seed, impl="unsafe_rbg")


def _cos(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# ----------------------------------------------------------------- ArcFace


def test_arcface_r50_shapes_and_parameter_count():
  module = identity.IResNet()
  v = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3)))
  # = the numel of insightface's iresnet50 state_dict (checked against PyTorch below).
  assert layers.count_params(v["params"]) + layers.count_params(v["batch_stats"]) == 43_628_992
  out = jax.eval_shape(module.apply, v, jnp.zeros((2, 112, 112, 3)))
  assert out["embedding"].shape == (2, 512)
  assert out["shallow"].shape == (2, 56, 56, 64)


def test_arcface_converter_matches_pytorch(tmp_path):
  torch = pytest.importorskip("torch", reason="PyTorch (test extra) needed for converter parity")
  from tests import torch_reference
  torch.manual_seed(0)
  sizes = (1, 2, 2, 1)   # iResNet-50 widths and head, fewer blocks (CPU time)
  tmodel = torch_reference.IResNetTorch(sizes)
  torch_reference.randomize_batch_norm(tmodel)
  tmodel.eval()
  full = torch_reference.IResNetTorch((3, 4, 14, 3))
  assert sum(v.numel() for k, v in full.state_dict().items()
             if not k.endswith("num_batches_tracked")) == 43_628_992
  x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
  with torch.no_grad():
    emb = tmodel(torch.from_numpy(x)).numpy()
    shallow = tmodel(torch.from_numpy(x), shallow=True).numpy().transpose(0, 2, 3, 1)
  path = tmp_path / "backbone.pth"
  torch.save(tmodel.state_dict(), path)
  net = identity.load_arcface(weights=path, stage_sizes=sizes)
  out = jax.jit(net.module.apply)(net.variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  for got, want in ((out["embedding"], emb), (out["shallow"], shallow)):
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()), rtol=1e-4)


def test_arcface_missing_weights_error(monkeypatch, tmp_path):
  monkeypatch.delenv(weights.ENV_ARCFACE, raising=False)
  with pytest.raises(WeightsError, match="backbone.pth.*FOCUS_JAX_ARCFACE_WEIGHTS"):
    identity.load("arcface")
  with pytest.raises(WeightsError, match="not found"):
    identity.load("arcface", weights=tmp_path / "nope.pth")


# ----------------------------------------------------------------- alignment


def test_similarity_transform_recovers_a_similarity():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 100, (3, 7, 2)).astype(np.float32)
  angle, scale, t = rng.uniform(-1, 1, 3), rng.uniform(0.5, 2, 3), rng.uniform(-20, 20, (3, 2))
  lin = scale[:, None, None] * np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1),
                                         np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
  dst = np.einsum("bij,bnj->bni", lin, src) + t[:, None]
  m = np.asarray(align.similarity_transform(src, dst))
  np.testing.assert_allclose(m[..., :2], lin, atol=1e-4)
  np.testing.assert_allclose(m[..., 2], t, atol=1e-2)
  np.testing.assert_allclose(np.asarray(align.invert_affine(jnp.asarray(m)))[..., :2],
                             np.linalg.inv(lin), atol=1e-4)


def test_arcface_alignment_matches_the_reference_estimate():
  skimage_transform = pytest.importorskip("skimage.transform")
  rng = np.random.default_rng(1)
  lm = rng.uniform(60, 160, (2, 68, 2)).astype(np.float32)
  m = np.asarray(align.arcface_transform(jnp.asarray(lm)))
  for b in range(2):
    # the reference: skimage similarity from the 5 points to the template, in OpenCV's
    # integer-centre pixels, then warp with it.
    five = np.asarray(align.five_points(lm[b])) - 0.5
    if hasattr(skimage_transform.SimilarityTransform, "from_estimate"):
      tform = skimage_transform.SimilarityTransform.from_estimate(five, align.ARCFACE_TEMPLATE_112)
    else:
      tform = skimage_transform.SimilarityTransform()
      tform.estimate(five, align.ARCFACE_TEMPLATE_112)
    crop_cv = np.stack(np.meshgrid(np.arange(112.0), np.arange(112.0)), -1).reshape(-1, 2)
    img_cv = tform.inverse(crop_cv)
    ours = np.asarray(align.apply_affine(jnp.asarray(m[b]), crop_cv + 0.5)) - 0.5
    np.testing.assert_allclose(ours, img_cv, atol=2e-3)


def test_warp_affine_identity_shift_fill_and_gradient():
  rng = np.random.default_rng(2)
  img = jnp.asarray(rng.uniform(size=(1, 12, 10, 3)), jnp.float32)
  ident = jnp.asarray([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
  np.testing.assert_allclose(align.warp_affine(img, ident, (12, 10)), img, atol=1e-6)
  shift = ident.at[0, 0, 2].set(3.0).at[0, 1, 2].set(-2.0)   # crop (x, y) <- image (x+3, y-2)
  out = np.asarray(align.warp_affine(img, shift, (12, 10), fill=-1.0))
  np.testing.assert_allclose(out[0, 2:, :7], np.asarray(img)[0, :10, 3:], atol=1e-6)
  assert np.all(out[0, :2] == -1.0) and np.all(out[0, :, 7:] == -1.0)
  half = ident.at[0, 0, 2].set(0.5)                           # halfway between columns
  out = np.asarray(align.warp_affine(img, half, (12, 10)))
  np.testing.assert_allclose(out[0, :, :9], 0.5 * (img[0, :, :9] + img[0, :, 1:]), atol=1e-6)
  grad = jax.grad(lambda im: jnp.sum(align.warp_affine(im, half, (12, 10))))(img)
  np.testing.assert_allclose(np.asarray(grad).sum(), 12 * 9 * 3 + 12 * 0.5 * 3, rtol=1e-5)


# ----------------------------------------------------------------- wrapper: jit, grad


@pytest.fixture(scope="module")
def tiny_nets():
  dlib_tiny = identity.DlibResNet(levels=((4, False, 1), (8, True, 1), (8, True, 0)),
                                  embedding_size=16)
  arc_tiny = identity.IResNet(stage_sizes=(1, 1), widths=(4, 8), num_features=16)
  return dict(dlib=identity.random_identity("dlib", _key(0), dlib_tiny),
              arcface=identity.random_identity("arcface", _key(1), arc_tiny))


def _face_batch(b=2, size=64):
  rng = np.random.default_rng(3)
  images = rng.uniform(size=(b, size, size, 3)).astype(np.float32)
  # the ArcFace template as 68 landmarks is enough for both alignments to be regular.
  lm = rng.uniform(0.3 * size, 0.7 * size, (b, 68, 2)).astype(np.float32)
  five = align.ARCFACE_TEMPLATE_112 / 112 * 0.5 * size + 0.25 * size
  lm[:, 36] = lm[:, 39] = five[0]
  lm[:, 42] = lm[:, 45] = five[1]
  lm[:, 30], lm[:, 48], lm[:, 54] = five[2], five[3], five[4]
  return jnp.asarray(images), jnp.asarray(lm)


@pytest.mark.parametrize("kind", ["dlib", "arcface"])
def test_identity_net_under_jit_with_image_gradients(tiny_nets, kind):
  net = tiny_nets[kind]
  images, lm = _face_batch()

  def loss(net, images, lm):
    f = net(images, lm)
    return jnp.sum(f.embedding[0] * f.embedding[1]) + jnp.mean(f.shallow), f

  @jax.jit
  def run(net, images, lm):
    grad = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)
    (_, f), grads = grad(net, images, lm)
    (_, _), (_, g_lm_on) = grad(net.replace(landmark_gradient=True), images, lm)
    return f, grads, g_lm_on

  feats, (g_img, g_lm), g_lm_on = run(net, images, lm)
  np.testing.assert_allclose(np.linalg.norm(feats.embedding, axis=-1), 1.0, rtol=1e-5)
  assert feats.shallow.ndim == 4 and feats.shallow.shape[0] == 2
  assert np.isfinite(np.asarray(g_img)).all() and np.abs(g_img).sum() > 0
  np.testing.assert_array_equal(g_lm, 0.0)   # the reference aligns on detached landmarks
  assert np.isfinite(np.asarray(g_lm_on)).all() and np.abs(g_lm_on).sum() > 0


def test_unknown_identity_kind():
  with pytest.raises(ValueError, match="dlib"):
    identity.load("vgg")


# ----------------------------------------------------------------- dlib


def _dlib_weights_or_skip():
  p = weights.face_recognition_models_file(weights.DLIB_FILE)
  if p is None:
    pytest.skip("face-recognition-models not installed (pip install face-recognition-models)")
  return p


def test_dlib_reader_parses_the_whole_file():
  path = _dlib_weights_or_skip()
  net = dlib_reader.read_dlib_net(path)
  assert net["loss"]["name"] == "loss_metric_2"
  assert net["loss"]["margin"] == pytest.approx(0.04)
  assert net["input"]["size"] == (150, 150)
  np.testing.assert_allclose(net["input"]["mean_rgb"], identity.DLIB_MEAN_RGB, atol=1e-3)
  types = [layer["type"] for layer in net["layers"]]
  assert types.count("con") == 29 and types[-1] == "fc" and len(types) == 108
  n = sum(v.size for layer in net["layers"] for v in layer.values() if isinstance(v, np.ndarray))
  variables = identity.dlib_variables_from_layers(net, identity.DlibResNet())
  assert layers.count_params(variables["params"]) == n == 5_614_592


def test_dlib_reader_rejects_bad_files(tmp_path):
  path = _dlib_weights_or_skip()
  data = path.read_bytes()
  cut = tmp_path / "truncated.dat"
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(WeightsError, match="truncated"):
    dlib_reader.read_dlib_net(cut)
  other = tmp_path / "other.dat"
  other.write_bytes(b"\x01\x01\x01\x05hello")
  with pytest.raises(WeightsError):
    dlib_reader.read_dlib_net(other)


def test_dlib_missing_weights_error(monkeypatch, tmp_path):
  monkeypatch.setenv(weights.ENV_DLIB, str(tmp_path / "missing.dat"))
  with pytest.raises(WeightsError, match="FOCUS_JAX_DLIB_FACE_MODEL"):
    identity.load_dlib()
  monkeypatch.delenv(weights.ENV_DLIB)
  monkeypatch.setattr(weights, "face_recognition_models_file", lambda name: None)
  with pytest.raises(WeightsError, match="pip install face-recognition-models"):
    identity.load_dlib()


@pytest.fixture(scope="module")
def dlib_setup():
  dlib = pytest.importorskip("dlib", reason="dlib-bin (test extra) needed for dlib parity")
  skdata = pytest.importorskip("skimage.data", reason="scikit-image needed for sample photos")
  from skimage import transform
  _dlib_weights_or_skip()
  predictor = weights.face_recognition_models_file("shape_predictor_68_face_landmarks.dat")
  if predictor is None:
    pytest.skip("face-recognition-models lacks the 68-point predictor")
  detector = dlib.get_frontal_face_detector()
  sp = dlib.shape_predictor(str(predictor))
  facerec = dlib.face_recognition_model_v1(str(weights.resolve_dlib_weights()))
  astronaut = skdata.astronaut()
  photos = [astronaut, astronaut[:, ::-1].copy(),
            (transform.rotate(astronaut, 15, preserve_range=True)).astype(np.uint8)]
  cases = []
  for img in photos:
    dets = detector(img, 1)
    assert len(dets) >= 1
    best = max(dets, key=lambda r: r.area())
    shape = sp(img, best)
    lm = np.array([[p.x, p.y] for p in shape.parts()], np.float32) + 0.5  # our pixel centres
    cases.append(dict(image=img, shape=shape, landmarks=lm,
                      chip=dlib.get_face_chip(img, shape, size=150, padding=0.25),
                      descriptor=np.array(facerec.compute_face_descriptor(img, shape))))
  return dict(dlib=dlib, facerec=facerec, cases=cases, net=identity.load_dlib())


def test_dlib_network_matches_dlib_on_its_own_chips(dlib_setup):
  net, facerec = dlib_setup["net"], dlib_setup["facerec"]
  chips = np.stack([c["chip"] for c in dlib_setup["cases"]])
  want = np.stack([np.array(facerec.compute_face_descriptor(c)) for c in chips])
  got = np.asarray(jax.jit(net.module.apply)(net.variables,
                                             jnp.asarray(chips / 255.0, jnp.float32))["embedding"])
  assert np.abs(got - want).max() < 1e-4
  assert _cos(got, want).min() > 0.99999


def test_dlib_pipeline_matches_dlib_descriptor_on_real_photos(dlib_setup):
  net = dlib_setup["net"]
  run = jax.jit(lambda net, img, lm: (net.descriptor(img, lm), net.crop(img, lm)))
  for case in dlib_setup["cases"]:
    img = jnp.asarray(case["image"][None] / 255.0, jnp.float32)
    desc, crop = run(net, img, jnp.asarray(case["landmarks"][None]))
    # our differentiable crop = dlib's chip up to dlib's rounding to uint8
    assert np.abs(np.asarray(crop[0]) * 255.0 - case["chip"]).mean() < 1.0
    assert _cos(desc[0], case["descriptor"]) >= 0.999
