"""UNet: parameter count of the reference size, shapes, output range and scaling,
dropout placement, train/eval BatchNorm, gradients under jit."""

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
