"""--encoder_init: a fresh stage-1 encoder trunk from a torchvision-format ResNet .pth."""

import hashlib
import json

import jax
import numpy as np
import pytest

from focus_jax.nets import encoder as encoder_lib
from focus_jax.nets.weights import WeightsError
from focus_jax.train import config as config_lib
from focus_jax.train import encoder_init


@pytest.fixture(scope="module")
def tiny_encoder():
  """The tiny config's encoder trunk (ResNet-18 layout, width 8, 2 stages) and fresh
  variables (32 px: the trunk's variables do not depend on the image size)."""
  enc = encoder_lib.tiny_encoder()
  variables = jax.jit(enc.init)(jax.random.key(0, impl="rbg"), np.zeros((1, 32, 32, 3)))
  return enc, jax.tree_util.tree_map(np.asarray, dict(variables))


def _torch_file(tmp_path, stages=(1, 1), name="resnet.pth"):
  torch = pytest.importorskip("torch", reason="PyTorch (test extra) writes the .pth file")
  from tests import torch_reference
  torch.manual_seed(0)
  tmodel = torch_reference.TvResNet(False, stages, width=8, num_classes=1000)
  torch_reference.randomize_batch_norm(tmodel)
  path = tmp_path / name
  torch.save(tmodel.state_dict(), path)
  return path, {k: v.numpy() for k, v in tmodel.state_dict().items()}


def _leaf(tree, dotted):
  for k in dotted.split("/"):
    tree = tree[k]
  return np.asarray(tree)


def test_encoder_init_loads_the_trunk_and_records_the_file(tmp_path, tiny_encoder):
  path, sd = _torch_file(tmp_path)
  cfg = config_lib.tiny(encoder_init=str(path))   # ResNet-18 layout, width 8, 2 stages
  enc, fresh = tiny_encoder
  out = encoder_init.apply(cfg, enc, fresh, str(tmp_path / "run"), verbose=False)
  p, bs = out["params"]["resnet"], out["batch_stats"]["resnet"]
  # Layout: conv [O, I, kh, kw] -> [kh, kw, I, O]; BN weight/bias -> scale/bias,
  # running mean/var -> batch_stats; layerN.i -> layerN_i; downsample.0/1 -> _conv/_bn.
  checks = {"conv1/kernel": sd["conv1.weight"].transpose(2, 3, 1, 0),
            "bn1/scale": sd["bn1.weight"], "bn1/bias": sd["bn1.bias"],
            "layer1_0/conv2/kernel": sd["layer1.0.conv2.weight"].transpose(2, 3, 1, 0),
            "layer2_0/downsample_conv/kernel":
                sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
            "layer2_0/bn2/scale": sd["layer2.0.bn2.weight"]}
  for name, want in checks.items():
    np.testing.assert_array_equal(_leaf(p, name), want, err_msg=name)
  np.testing.assert_array_equal(_leaf(bs, "bn1/mean"), sd["bn1.running_mean"])
  np.testing.assert_array_equal(_leaf(bs, "layer2_0/downsample_bn/var"),
                                sd["layer2.0.downsample.1.running_var"])
  # Every trunk tensor of the file is used: count the converted leaves against the keys
  # (conv/linear weight and BN weight/bias -> params, running stats -> batch_stats).
  n_params = len(jax.tree_util.tree_leaves({k: v for k, v in p.items() if k != "fc"}))
  n_stats = len(jax.tree_util.tree_leaves(bs))
  file_params = [k for k in sd if not k.startswith("fc.") and k.endswith(("weight", "bias"))]
  file_stats = [k for k in sd if k.endswith(("running_mean", "running_var"))]
  assert (n_params, n_stats) == (len(file_params), len(file_stats))
  # The head stays as designed: zero (the mean face at the first step), its shape ours.
  np.testing.assert_array_equal(_leaf(p, "fc/kernel"), 0.0)
  assert _leaf(p, "fc/kernel").shape == fresh["params"]["resnet"]["fc"]["kernel"].shape
  # The file and its checksum are recorded in the run folder.
  record = json.loads((tmp_path / "run" / encoder_init.RECORD).read_text())
  assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
  assert record["path"] == str(path)


def test_encoder_init_values_and_errors(tmp_path, monkeypatch, tiny_encoder):
  path, _ = _torch_file(tmp_path)
  cfg = config_lib.tiny()
  enc, fresh = tiny_encoder
  assert encoder_init.apply(cfg, enc, fresh) is fresh   # '' = random
  monkeypatch.setenv("FOCUS_JAX_RESNET_WEIGHTS", str(path))
  assert encoder_init.resolve("imagenet", 50) == path
  monkeypatch.delenv("FOCUS_JAX_RESNET_WEIGHTS")
  with pytest.raises(WeightsError, match="FOCUS_JAX_RESNET_WEIGHTS"):
    encoder_init.resolve("imagenet", 50)
  with pytest.raises(WeightsError, match="missing.pth"):
    encoder_init.resolve(str(tmp_path / "missing.pth"), 50)
  other, _ = _torch_file(tmp_path, stages=(1, 1, 1), name="other.pth")   # another layout
  with pytest.raises(WeightsError, match="unexpected"):
    encoder_init.apply(cfg.replace(encoder_init=str(other)), enc, fresh)
  # A resumed run may move the file: encoder_init is not part of the resume check.
  assert cfg.mismatches(cfg.replace(encoder_init="elsewhere.pth")) == []
