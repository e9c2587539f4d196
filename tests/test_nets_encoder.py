"""Encoder: ResNet trunk sizes, output layout/scaling/truncation, zero-init head,
train/eval BatchNorm, jit, and parity of the torchvision converter with PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.nets import convert, encoder, layers
from focus_jax.nets.weights import WeightsError
from focus_jax.render import shading


def _key(seed=0):
  # Threefry random kernels take many seconds to compile on CPU; RBG keys are quick.
  return jax.random.key(seed, impl="unsafe_rbg")


def _abstract_params(module, size=224):
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))


@pytest.mark.parametrize("depth,expected", [(18, 11_176_512), (34, 21_284_672),
                                            (50, 23_508_032)])
def test_resnet_trunk_parameter_counts(depth, expected):
  # torchvision's ResNet totals minus their 1000-way fc; eval_shape computes nothing.
  variables = _abstract_params(encoder.ResNet(depth=depth, num_outputs=None))
  assert layers.count_params(variables["params"]) == expected


def test_face_encoder_full_size_layout():
  enc = encoder.FaceEncoder()   # BFM 2017 counts, ResNet-50
  assert enc.num_outputs == 199 + 100 + 199 + 6 + 27
  variables = _abstract_params(enc)
  head = variables["params"]["resnet"]["fc"]
  assert head["kernel"].shape == (2048, enc.num_outputs)
  assert layers.count_params(variables["params"]) == 23_508_032 + 2049 * enc.num_outputs
  out = jax.eval_shape(enc.apply, variables, jnp.zeros((2, 224, 224, 3)))
  assert out.shape.shape == (2, 199) and out.expression.shape == (2, 100)
  assert out.albedo.shape == (2, 199) and out.light.shape == (2, 9, 3)
  assert out.angles.shape == (2, 3) and out.translation.shape == (2, 3)


@pytest.fixture(scope="module")
def tiny():
  enc = encoder.tiny_encoder()
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 32, 32, 3)), jnp.float32)
  variables = jax.jit(enc.init)(_key(), images)
  return enc, variables, images


def test_untrained_encoder_predicts_mean_face_default_pose_and_light(tiny):
  enc, variables, images = tiny
  out = jax.jit(enc.apply)(variables, images)
  for v in (out.shape, out.expression, out.albedo, out.angles, out.translation, out.raw):
    np.testing.assert_array_equal(np.asarray(v), 0.0)
  np.testing.assert_allclose(out.light, shading.default_light((2,)))
  assert float(out.light[0, 0, 0]) == pytest.approx(0.7 * 2 * np.pi)


def test_scaling_and_truncation(tiny):
  enc, variables, images = tiny
  raw = jnp.asarray(np.random.default_rng(3).normal(size=(2, enc.num_outputs)), jnp.float32)
  out = enc.postprocess(raw)
  ks, ke, ka = enc.num_shape, enc.num_expression, enc.num_albedo
  shape, expr, alb = raw[:, :ks], raw[:, ks:ks + ke], raw[:, ks + ke:ks + ke + ka]
  pose, light = raw[:, ks + ke + ka:ks + ke + ka + 6], raw[:, -27:]
  np.testing.assert_allclose(out.shape[:, :8], shape[:, :8])
  np.testing.assert_array_equal(out.shape[:, 8:], 0.0)
  np.testing.assert_allclose(out.expression[:, :4], expr[:, :4])
  np.testing.assert_array_equal(out.expression[:, 4:], 0.0)
  np.testing.assert_allclose(out.albedo[:, :8], 3.0 * alb[:, :8], rtol=1e-6)
  np.testing.assert_array_equal(out.albedo[:, 8:], 0.0)
  np.testing.assert_allclose(out.angles, 0.3 * pose[:, :3], rtol=1e-6)
  np.testing.assert_allclose(out.translation[:, :2], pose[:, 3:5])
  np.testing.assert_allclose(out.translation[:, 2], 0.005 * pose[:, 5], rtol=1e-6)
  # 27 SH numbers are R(9), G(9), B(9), added to the default light.
  np.testing.assert_allclose(out.light[:, :, 0] - shading.default_light()[:, 0], light[:, :9],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.light[:, 3, 2], light[:, 18 + 3], rtol=1e-6)


def test_train_mode_updates_batch_stats_and_gradients_flow(tiny):
  enc, variables, images = tiny

  def loss(params):
    out, updates = enc.apply({"params": params, "batch_stats": variables["batch_stats"]},
                             images, train=True, mutable=["batch_stats"])
    return jnp.sum(out.shape ** 2) + jnp.sum((out.light - 1.0) ** 2), updates

  (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  assert np.isfinite(float(value))
  before = variables["batch_stats"]["resnet"]["bn1"]["mean"]
  assert not np.allclose(updates["batch_stats"]["resnet"]["bn1"]["mean"], before)
  head = grads["resnet"]["fc"]["kernel"]
  assert np.abs(head).sum() > 0
  # switched-off components get no gradient: their head columns stay at zero.
  np.testing.assert_array_equal(head[:, 8:enc.num_shape], 0.0)


def test_imagenet_normalize_option(tiny):
  enc, variables, images = tiny
  params = jax.tree_util.tree_map(lambda x: x, variables["params"])
  head = params["resnet"]["fc"]
  params["resnet"]["fc"] = dict(head, kernel=jnp.ones_like(head["kernel"]))
  v = {"params": params, "batch_stats": variables["batch_stats"]}
  normalised = encoder.tiny_encoder(imagenet_normalize=True).apply(v, images)
  manual = enc.apply(v, (images - jnp.asarray(encoder.IMAGENET_MEAN))
                     / jnp.asarray(encoder.IMAGENET_STD))
  np.testing.assert_allclose(normalised.raw, manual.raw, rtol=1e-5, atol=1e-6)
  assert not np.allclose(normalised.raw, enc.apply(v, images).raw)


def test_missing_weights_file_gives_clear_error(tmp_path, monkeypatch):
  monkeypatch.delenv("FOCUS_JAX_RESNET_WEIGHTS", raising=False)
  with pytest.raises(WeightsError, match="torchvision.*FOCUS_JAX_RESNET_WEIGHTS"):
    encoder.init_variables(encoder.tiny_encoder(), _key(), 32, imagenet_weights=True)
  with pytest.raises(WeightsError, match="not found"):
    convert.load_torch_state_dict(tmp_path / "resnet50.pth")
  bad = tmp_path / "bad.pth"
  bad.write_bytes(b"not a checkpoint")
  with pytest.raises(WeightsError):
    convert.load_torch_state_dict(bad)


# ----------------------------------------------------------------- torchvision parity


@pytest.mark.parametrize("depth,width,size", [(18, 16, 48), (50, 64, 32)])
def test_torchvision_converter_matches_pytorch(depth, width, size, tmp_path):
  torch = pytest.importorskip("torch", reason="PyTorch (test extra) needed for converter parity")
  from tests import torch_reference
  torch.manual_seed(0)
  bottleneck = encoder.RESNET_CONFIGS[depth][0] == "bottleneck"
  sizes = encoder.RESNET_CONFIGS[depth][1]
  tmodel = torch_reference.TvResNet(bottleneck, sizes, width=width, num_classes=37)
  torch_reference.randomize_batch_norm(tmodel)
  tmodel.eval()
  x = np.random.default_rng(0).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = tmodel(torch.from_numpy(x)).numpy()

  # Through the torch-free .pth reader, as a user would load a checkpoint.
  # Both torch.save formats (zip, and the legacy stream of e.g. torchvision's original
  # ImageNet files) through the torch-free reader.
  path = tmp_path / "resnet.pth"
  torch.save(tmodel.state_dict(), path)
  torch.save(tmodel.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  state = convert.load_torch_state_dict(path)
  legacy = convert.load_torch_state_dict(tmp_path / "legacy.pth")
  for k, v in tmodel.state_dict().items():
    np.testing.assert_array_equal(state[k], v.numpy())
    np.testing.assert_array_equal(legacy[k], v.numpy())

  module = encoder.ResNet(depth=depth, width=width, num_outputs=37)
  template = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  variables = convert.variables_like(template, convert.resnet_variables_from_torch(state),
                                     "test ResNet")
  got = np.asarray(module.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
  scale = np.abs(expected).max()
  np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, scale), rtol=1e-4)


def test_encoder_init_from_torchvision_keeps_zero_head(tmp_path):
  torch = pytest.importorskip("torch", reason="PyTorch (test extra) needed to write a .pth")
  from tests import torch_reference
  enc = encoder.tiny_encoder()
  tmodel = torch_reference.TvResNet(False, (1, 1), width=8, num_classes=1000)
  torch_reference.randomize_batch_norm(tmodel)
  path = tmp_path / "tiny_imagenet.pth"
  torch.save(tmodel.state_dict(), path)
  images = jnp.zeros((1, 32, 32, 3))
  variables = jax.jit(enc.init)(_key(), images)
  loaded = encoder.encoder_variables_from_torchvision(path, enc, variables)
  np.testing.assert_array_equal(loaded["params"]["resnet"]["fc"]["kernel"], 0.0)
  np.testing.assert_array_equal(
      loaded["params"]["resnet"]["conv1"]["kernel"],
      tmodel.state_dict()["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  out = enc.apply(loaded, images)
  np.testing.assert_array_equal(out.shape, 0.0)
  # A checkpoint of another depth/width is refused with a message naming the mismatch.
  other = torch_reference.TvResNet(False, (1, 1, 1), width=8)
  torch.save(other.state_dict(), tmp_path / "other.pth")
  with pytest.raises(WeightsError, match="unexpected"):
    encoder.encoder_variables_from_torchvision(tmp_path / "other.pth", enc, variables)
