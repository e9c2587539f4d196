"""Every network under pmap, on two simulated CPU devices (a subprocess, since the
device count is fixed when JAX starts)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from focus_jax.nets import encoder, identity, unet
    assert jax.device_count() == 2, jax.devices()
    key = lambda s: jax.random.key(s, impl="unsafe_rbg")
    rng = np.random.default_rng(0)

    # Encoder, training mode, BatchNorm synchronised over the pmap axis: the two
    # devices together must behave like one device with the whole batch.
    images = jnp.asarray(rng.uniform(size=(4, 32, 32, 3)), jnp.float32)
    enc = encoder.tiny_encoder(bn_axis_name="batch")
    plain = encoder.tiny_encoder()
    v = jax.jit(plain.init)(key(0), images)
    params = jax.tree_util.tree_map(lambda x: x + 0.0, v["params"])
    params["resnet"]["fc"]["kernel"] = 0.01 * jnp.ones_like(params["resnet"]["fc"]["kernel"])
    v = {"params": params, "batch_stats": v["batch_stats"]}
    step = lambda m: lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"])
    (ref, ref_stats) = jax.jit(step(plain))(v, images)
    (out, stats) = jax.pmap(step(enc), axis_name="batch", in_axes=(None, 0))(
        v, images.reshape(2, 2, 32, 32, 3))
    np.testing.assert_allclose(out.raw.reshape(4, -1), ref.raw, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(stats["batch_stats"]["resnet"]["bn1"]["mean"][0],
                               ref_stats["batch_stats"]["resnet"]["bn1"]["mean"], rtol=1e-4,
                               atol=1e-6)

    # UNet, eval and training (dropout rng per device).
    net = unet.tiny_unet()
    x = jnp.asarray(rng.uniform(size=(4, 32, 32, 6)), jnp.float32)
    uv = jax.jit(net.init)(key(1), x)
    ref = jax.jit(net.apply)(uv, x)
    got = jax.pmap(net.apply, in_axes=(None, 0))(uv, x.reshape(2, 2, 32, 32, 6))
    np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=1e-5, atol=1e-6)
    train = lambda v, x, k: net.apply(v, x, train=True, rngs={"dropout": k},
                                      mutable=["batch_stats"])[0]
    keys = jax.random.split(key(2), 2)
    y = jax.pmap(train, in_axes=(None, 0, 0))(uv, x.reshape(2, 2, 32, 32, 6), keys)
    assert y.shape == (2, 2, 32, 32, 1) and bool(jnp.isfinite(y).all())

    # Identity networks: the IdentityNet pytree broadcast to both devices.
    for kind, module in (("dlib", identity.DlibResNet(levels=((4, False, 1), (8, True, 0)),
                                                      embedding_size=8)),
                         ("arcface", identity.IResNet(stage_sizes=(1, 1), widths=(4, 8),
                                                      num_features=8))):
      idn = identity.random_identity(kind, key(3), module)
      imgs = jnp.asarray(rng.uniform(size=(4, 48, 48, 3)), jnp.float32)
      lm = jnp.asarray(rng.uniform(14, 34, size=(4, 68, 2)), jnp.float32)
      f = lambda n, i, l: n(i, l).embedding
      ref = jax.jit(f)(idn, imgs, lm)
      got = jax.pmap(f, in_axes=(None, 0, 0))(idn, imgs.reshape(2, 2, 48, 48, 3),
                                              lm.reshape(2, 2, 68, 2))
      np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=1e-4, atol=1e-5)
    print("PMAP-OK")
""")


def test_networks_under_pmap_on_two_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  env["JAX_PLATFORMS"] = "cpu"
  root = Path(__file__).resolve().parents[1]
  env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=root, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and "PMAP-OK" in proc.stdout, proc.stderr[-4000:]
