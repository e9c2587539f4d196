"""UNet: parameter count of the reference size, parity with an independent PyTorch UNet
(values, training-mode statistics, gradients), output range and scaling, dropout
placement, train/eval BatchNorm, gradients under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focus_jax.nets import layers, unet


def _key(seed=0):
  return jax.random.key(seed, impl="unsafe_rbg")


def test_reference_size_parameter_count():
  variables = jax.eval_shape(unet.UNet().init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 6)))
  assert layers.count_params(variables["params"]) == 34_528_769   # ≈ 34.5 M as the reference
  out = jax.eval_shape(unet.UNet().apply, variables, jnp.zeros((2, 224, 224, 6)))
  assert out.shape == (2, 224, 224, 1)
  # Widths 64 -> 1024 in the encoder.
  assert variables["params"]["down5"]["conv2"]["kernel"].shape == (3, 3, 1024, 1024)
  assert variables["params"]["up_block1"]["conv1"]["kernel"].shape == (3, 3, 128, 64)


def test_width_and_depth_are_configurable():
  small = jax.eval_shape(unet.UNet(base_width=8, depth=4).init, jax.random.PRNGKey(0),
                         jnp.zeros((1, 64, 64, 6)))
  assert small["params"]["down4"]["conv2"]["kernel"].shape == (3, 3, 64, 64)
  assert "down5" not in small["params"]
  with pytest.raises(ValueError, match="divisible"):
    jax.eval_shape(unet.UNet(depth=5).init, jax.random.PRNGKey(0), jnp.zeros((1, 40, 40, 6)))


@pytest.fixture(scope="module")
def tiny():
  net = unet.tiny_unet()
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 6)), jnp.float32)
  variables = jax.jit(net.init)(_key(), x)
  return net, variables, x


def test_eval_output_is_a_mask_with_logit_scale_five(tiny):
  net, variables, x = tiny
  one = unet.tiny_unet(logit_scale=1.0)

  @jax.jit
  def run(v, x):
    return (net.apply(v, x), net.apply(v, x), net.apply(v, x, return_logits=True),
            one.apply(v, x, return_logits=True))

  y, y_again, logits, logits_one = run(variables, x)
  assert y.shape == (2, 32, 32, 1)
  assert float(y.min()) > 0.0 and float(y.max()) < 1.0
  np.testing.assert_array_equal(y, y_again)   # eval mode: no dropout
  np.testing.assert_allclose(jax.nn.sigmoid(logits), y, rtol=1e-6)
  np.testing.assert_allclose(logits, 5.0 * logits_one, rtol=1e-5, atol=1e-6)


def test_dropout_only_in_the_two_deepest_blocks(tiny):
  net, variables, x = tiny
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    import flax.linen as nn
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
      seen.append(context.module.scope.path[0])
    return next_fun(*args, **kwargs)

  import flax.linen as nn
  with nn.intercept_methods(interceptor):   # traced only, nothing is compiled.
    jax.eval_shape(lambda v: net.apply(v, x, train=True, rngs={"dropout": _key(1)},
                                       mutable=["batch_stats"]), variables)
  assert sorted(seen) == ["down2", "down3"]   # depth 3: the two deepest encoder blocks.


def test_training_step_under_jit(tiny):
  net, variables, x = tiny
  target = (x[..., :1] > 0.5).astype(jnp.float32)

  @jax.jit
  def step(params, batch_stats, key):
    def loss(p):
      y, upd = net.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                         rngs={"dropout": key}, mutable=["batch_stats"])
      eps = 1e-6
      bce = -jnp.mean(target * jnp.log(y + eps) + (1 - target) * jnp.log(1 - y + eps))
      return bce, upd["batch_stats"]
    return jax.value_and_grad(loss, has_aux=True)(params)

  (value, stats), grads = step(variables["params"], variables["batch_stats"], _key(2))
  (value2, _), _ = step(variables["params"], variables["batch_stats"], _key(3))
  assert np.isfinite(float(value)) and float(value) != float(value2)   # dropout masks differ
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  assert np.abs(grads["out"]["kernel"]).sum() > 0
  assert not np.allclose(stats["down1"]["bn1"]["mean"], variables["batch_stats"]["down1"]["bn1"]["mean"])


def test_matches_an_independent_pytorch_unet():
  """The tiny UNet against a plain PyTorch one with the same weights (random BN
  statistics): eval outputs and logits; training mode (batch statistics, no
  dropout) outputs, running statistics and the gradients of every parameter."""
  torch = pytest.importorskip("torch", reason="PyTorch (test extra) needed for UNet parity")
  from tests import torch_reference
  torch.manual_seed(0)
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(2, 32, 32, 6)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  nchw = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)

  tmodel = torch_reference.UNetTorch(base=4, depth=3, dropout=0.5).eval()
  torch_reference.randomize_batch_norm(tmodel)
  with torch.no_grad():             # a head that spreads the output over (0, 1)
    tmodel.out.weight.mul_(20.0)
    tmodel.out.bias.sub_(tmodel(xt, logits=True).mean() / tmodel.logit_scale)
  variables = torch_reference.unet_variables(tmodel)
  net = unet.tiny_unet()
  want_shapes = jax.eval_shape(net.init, _key(), x)
  got_shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  assert jax.tree_util.tree_structure(got_shapes) == jax.tree_util.tree_structure(
      dict(want_shapes))
  assert jax.tree_util.tree_leaves(got_shapes) == jax.tree_util.tree_leaves(dict(want_shapes))
  with torch.no_grad():
    y_t, logits_t = nchw(tmodel(xt)), nchw(tmodel(xt, logits=True))
  y, logits = jax.jit(lambda v, x: (net.apply(v, x), net.apply(v, x, return_logits=True)))(
      variables, x)
  assert 0.05 < float(np.std(y_t)) and 1.0 < float(np.abs(logits_t).max())   # not saturated
  np.testing.assert_allclose(np.asarray(logits), logits_t, atol=2e-5 * np.abs(logits_t).max())
  np.testing.assert_allclose(np.asarray(y), y_t, atol=1e-5)

  # Training mode without dropout (PyTorch's dropout masks cannot be reproduced).
  tmodel = torch_reference.UNetTorch(base=4, depth=3, dropout=0.0).train()
  torch_reference.randomize_batch_norm(tmodel)
  variables = torch_reference.unet_variables(tmodel)
  net = unet.tiny_unet(dropout_rate=0.0)
  weights = rng.normal(size=(2, 32, 32, 1)).astype(np.float32)
  out_t = tmodel(xt)
  torch.sum(out_t * torch.from_numpy(weights.transpose(0, 3, 1, 2).copy())).backward()

  @jax.jit
  def step(params, stats):
    def loss(p):
      out, upd = net.apply({"params": p, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"])
      return jnp.sum(out * weights), (out, upd["batch_stats"])
    return jax.grad(loss, has_aux=True)(params)

  grads, (out, stats) = step(variables["params"], variables["batch_stats"])
  np.testing.assert_allclose(np.asarray(out), nchw(out_t), atol=1e-5)
  after = torch_reference.unet_variables(tmodel)["batch_stats"]
  for path, got in jax.tree_util.tree_leaves_with_path(stats):
    keys = [k.key for k in path]
    before, want = variables["batch_stats"], after
    for key in keys:
      before, want = before[key], want[key]
    if keys[-1] == "var":
      # Flax folds the biased batch variance into the running one, PyTorch the
      # unbiased: a factor n / (n - 1) on the new part, n = the batch's pixels at
      # that level (2·8·8 or more here; irrelevant at training sizes).
      level = int(keys[0][-1]) - 1
      n = x.shape[0] * (x.shape[1] >> level) * (x.shape[2] >> level)
      want = 0.9 * before + (want - 0.9 * before) * (n - 1) / n
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6, err_msg=str(keys))
  torch_grads = {}
  for name, p in tmodel.named_parameters():
    torch_grads[name] = p.grad.numpy()
  largest = max(np.abs(g).max() for g in torch_grads.values())
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    keys = [k.key for k in path]
    name = ".".join(keys[:-1]) + "." + {"kernel": "weight", "scale": "weight",
                                        "bias": "bias"}[keys[-1]]
    want = torch_grads[name]
    if keys[-1] == "kernel":
      want = want.transpose(2, 3, 1, 0)
    if keys[-1] == "bias" and keys[0] != "out" and keys[-2].startswith("conv"):
      # A conv bias before a training-mode BN: the batch mean cancels it, its exact
      # gradient is 0 and both sides hold rounding noise.
      assert np.abs(want).max() < 1e-4 * largest and np.abs(g).max() < 1e-4 * largest, name
      continue
    scale = np.abs(want).max()
    assert scale > 1e-3 * largest, name
    np.testing.assert_allclose(np.asarray(g), want, atol=1e-4 * scale, err_msg=name)
