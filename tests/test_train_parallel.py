"""Data parallelism: a 2-device pmap step equals the 1-device step on the whole
batch; a two-process (jax.distributed, gloo) run keeps identical parameters.

Both run in subprocesses: the device count and jax.distributed are fixed when JAX
starts.
"""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

_PMAP = textwrap.dedent("""
    import sys, jax, numpy as np
    from focus_jax.train import config, parallel, steps
    from tests.train_setup import tiny_state_and_batch
    assert jax.local_device_count() == 2, jax.devices()
    cfg = config.tiny()
    nets, st, batch = tiny_state_and_batch(cfg, 4)
    results = {}
    for phase in sys.argv[1:]:
      fn = steps.make_step(cfg, nets, phase)
      one = parallel.pmap_step(fn, devices=jax.devices()[:1])
      two = parallel.pmap_step(fn)
      rep = lambda n: jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (n,) + x.shape), st)
      s1, m1 = one(rep(1), {k: v[None] for k, v in batch.items()}, nets.model, None)
      s2, m2 = two(rep(2), {k: v.reshape((2, 2) + v.shape[1:]) for k, v in batch.items()},
                   nets.model, None)
      a, b = parallel.unreplicate(s1), parallel.unreplicate(s2)
      # Both replicas of the 2-device state agree.
      for x in jax.tree_util.tree_leaves(jax.device_get(s2)):
        np.testing.assert_array_equal(np.asarray(x)[0], np.asarray(x)[1])
      worst = 0.0
      for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
        worst = max(worst, float(np.max(np.abs(np.asarray(y, float) - np.asarray(x, float)),
                                        initial=0.0)))
      np.testing.assert_allclose(float(m2["loss"][0]), float(m1["loss"][0]), rtol=1e-5)
      moved = max(float(np.max(np.abs(np.asarray(x, float) - np.asarray(y, float)), initial=0))
                  for x, y in zip(jax.tree_util.tree_leaves(a.encoder),
                                  jax.tree_util.tree_leaves(st.encoder)))
      assert moved > 1e-4, moved
      print(phase, "max |2-device - 1-device| =", worst, "step size", moved)
    print("PMAP-EQUAL")
""")


def _pmap_equal(*phases):
  env = dict(os.environ, PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-c", _PMAP, *phases], env=env, capture_output=True,
                        text=True, timeout=900)
  assert "PMAP-EQUAL" in proc.stdout, proc.stdout + proc.stderr[-4000:]


def test_two_device_pmap_step_equals_one_device_full_batch():
  _pmap_equal("pretrain")


@pytest.mark.slow
def test_two_device_pmap_em_encoder_step_equals_one_device():
  # The masked reconstruction is a ratio of global sums (steps.global_ratio).
  _pmap_equal("em_encoder")


_HOST = textwrap.dedent("""
    import sys, jax, numpy as np
    from focus_jax.train import config, parallel, trainer
    port, pid, data, work = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    parallel.initialize(f"localhost:{port}", 2, pid)
    assert jax.process_count() == 2 and jax.device_count() == 2
    cfg = config.tiny(num_steps=3, progress=False, checkpoint_every=3, image_every=100)
    r = trainer.train(cfg, work, data)
    leaves = jax.tree_util.tree_leaves((r.state.encoder, r.state.encoder_opt))
    np.savez(f"{work}/params_p{pid}.npz", *[np.asarray(x) for x in leaves])
    print("HOST-DONE", pid, r.step, r.state.data.tolist())
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_run_keeps_identical_parameters(tmp_path):
  from tests.test_train import _write_tiny  # pylint: disable=import-outside-toplevel
  data = _write_tiny(tmp_path / "data")
  work = tmp_path / "run"
  work.mkdir()
  env = dict(os.environ, PYTHONPATH=str(REPO))
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-c", _HOST, str(port), str(i), str(data),
                             str(work)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and "HOST-DONE" in out, out + err[-4000:]
  a, b = (np.load(work / f"params_p{i}.npz") for i in (0, 1))
  assert len(a.files) == len(b.files) > 10
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k])
  # Each process read its own shard: both pipeline positions are in the checkpoint.
  assert "HOST-DONE 0 3 [[0, 6, 0], [0, 6, 0]]" in outs[0][0]
