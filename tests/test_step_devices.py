"""Every training step across devices, processes and compute dtypes (micro config).

* Two devices: each step function (pretrain, UNet, EM-UNet, EM-encoder) under pmap on
  two CPU devices, one example each, takes the step one device takes on both examples
  (BatchNorm statistics, gradients and the global loss ratios are reduced over the
  devices). The UNet's dropout draws its masks per device (the key is folded with the
  device index), so the two layouts drop different units: the UNet phases are
  compared with dropout off.
* Two processes (jax.distributed, gloo): a stage-1 run of two processes with one
  device each keeps bit-identical parameters on both, records both hosts' data
  positions, and follows the one-process run of the same batches.
* bfloat16: each step runs with bf16 activations, finite, close to float32, and keeps
  parameters and optimiser states in float32.

The inputs are the micro runs' final states and a batch of their data, the way the
trainer feeds them (tests.train_fixtures).
"""

import json
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from focus_jax.train import checkpoint as ckpt_lib
from focus_jax.train import data as data_lib
from focus_jax.train import logs
from focus_jax.train import parallel
from focus_jax.train import state as state_lib
from focus_jax.train import steps as steps_lib
from tests import train_setup
from tests.train_fixtures import compile_cache, jax_cache_dir, micro_data, micro_runs  # pylint: disable=unused-import

pytestmark = pytest.mark.usefixtures("compile_cache")

# phase -> the micro run whose final state it starts from (its stage sets the
# optimiser: EM fine-tunes the encoder at em_encoder_lr).
RUN_OF = dict(pretrain="pretrain", unet="unet", em_unet="em", em_encoder="em")
# Two-device gradient error / largest gradient entry allowed (measured: ~5e-7, and
# 5e-5 for em_unet, whose neighbour term takes a minimum over shifts: where two shifts
# nearly tie, rounding picks either, and their gradients differ; 2e-7 without it).
GRAD_TOL = dict(pretrain=1e-5, unet=1e-5, em_unet=5e-4, em_encoder=1e-5)


def _restore(workdir, config):
  nets = state_lib.make_networks(config)
  template = state_lib.to_host(state_lib.init_state(config, nets))
  ck = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), config)
  try:
    return ck.restore_latest(template)[1]
  finally:
    ck.close()


def _first_batch(runs, config):
  pseudo = data_lib.load_pseudo(str(runs["pseudo"])) if config.stage == "unet" else None
  source = data_lib.AlignedSource(data_lib.open_data(str(runs["data"]), "train"),
                                  config.image_size, pseudo)
  with data_lib.make_pipeline(source, config, config.batch_size) as pipe:
    return parallel.numeric(next(pipe))


@pytest.fixture(scope="module")
def step_inputs(micro_runs, tmp_path_factory):
  """phase -> (config, host TrainState, batch); also saved as ``<phase>.npz`` (state
  leaves ``s0..``, batch entries ``b_<key>``) in the returned ``folder``."""
  folder = tmp_path_factory.mktemp("step_inputs")
  out = dict(folder=folder)
  for phase, run in RUN_OF.items():
    cfg = train_setup.micro(stage=run)
    st, batch = _restore(micro_runs[run], cfg), _first_batch(micro_runs, cfg)
    out[phase] = (cfg, st, batch)
    arrays = {f"s{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(st))}
    arrays.update({f"b_{k}": v for k, v in batch.items()})
    np.savez(folder / f"{phase}.npz", **arrays)
  return out


# ------------------------------------------------------------------ two devices

_TWO_DEVICES = textwrap.dedent("""
    import json, sys, jax, numpy as np, optax
    from focus_jax.train import parallel, state as state_lib, steps
    from tests import train_setup
    assert jax.local_device_count() == 2, jax.devices()
    folder, report = sys.argv[1], {}
    leaves_of = lambda t: [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(t)]
    for phase, stage in json.loads(sys.argv[2]).items():
      cfg = train_setup.micro(stage=stage)
      nets = state_lib.make_networks(cfg)
      if phase in ("unet", "em_unet"):      # per-device dropout masks differ by layout
        nets = nets._replace(unet=nets.unet.clone(dropout_rate=0.0))
      with np.load(f"{folder}/{phase}.npz") as z:
        template = state_lib.to_host(state_lib.init_state(cfg, nets))
        leaves, treedef = jax.tree_util.tree_flatten(template)
        st = jax.tree_util.tree_unflatten(treedef, [z[f"s{i}"] for i in range(len(leaves))])
        batch = {k[2:]: z[k] for k in z.files if k.startswith("b_")}
      # Plain SGD at rate 1: the parameter change is the (device-averaged) gradient. Adam
      # would divide it by its own running size, which for parameters whose gradient is
      # rounding noise (a convolution bias before BatchNorm) magnifies the noise to a
      # step of the learning rate.
      sgd = optax.sgd(1.0)
      nets = nets._replace(encoder_tx=sgd, unet_tx=sgd)
      st = st.replace(encoder_opt=sgd.init(st.encoder["params"]),
                      unet_opt=sgd.init(st.unet["params"]))
      fn = steps.make_step(cfg, nets, phase)
      rep = lambda n: jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (n,) + x.shape), st)
      s1, m1 = parallel.pmap_step(fn, devices=jax.devices()[:1])(
          rep(1), parallel.shard(batch, 1), nets.model, None)
      s2, m2 = parallel.pmap_step(fn)(rep(2), parallel.shard(batch, 2), nets.model, None)
      s1, s2, m1, m2 = jax.device_get((s1, s2, m1, m2))
      # Both replicas of the two-device state hold the same bits.
      for x in jax.tree_util.tree_leaves(s2):
        np.testing.assert_array_equal(np.asarray(x)[0], np.asarray(x)[1])
      a, b = parallel.unreplicate(s1), parallel.unreplicate(s2)
      which = steps.trained_network(phase)
      other = "unet" if which == "encoder" else "encoder"
      # The frozen network is untouched on both; the counters agree.
      for x, y, z in zip(leaves_of(getattr(a, other)), leaves_of(getattr(b, other)),
                         leaves_of(getattr(st, other))):
        np.testing.assert_array_equal(x, z)
        np.testing.assert_array_equal(y, z)
      assert int(a.step) == int(b.step) == int(st.step) + 1
      # Gradients: the largest difference relative to the largest gradient entry.
      before = leaves_of(getattr(st, which)["params"])
      g1 = [p - q for p, q in zip(before, leaves_of(getattr(a, which)["params"]))]
      g2 = [p - q for p, q in zip(before, leaves_of(getattr(b, which)["params"]))]
      scale = max(float(np.max(np.abs(g))) for g in g1)
      grad_err = max(float(np.max(np.abs(x - y))) for x, y in zip(g1, g2)) / scale
      # BatchNorm statistics of the trained network: relative to each statistic's size.
      stats_err = max(float(np.max(np.abs(x - y) / (np.abs(x) + 1e-3)))
                      for x, y in zip(leaves_of(getattr(a, which)["batch_stats"]),
                                      leaves_of(getattr(b, which)["batch_stats"])))
      metrics = {k: [float(np.asarray(m1[k])[0]), float(np.asarray(m2[k])[0])] for k in m1}
      report[phase] = dict(grad_scale=scale, grad_err=grad_err, stats_err=stats_err,
                           metrics=metrics)
      print(phase, json.dumps(report[phase]), flush=True)
    print("REPORT", json.dumps(report))
""")



def test_two_devices_take_the_one_device_step_for_every_phase(step_inputs, jax_cache_dir):
  proc = subprocess.run(
      [sys.executable, "-c", _TWO_DEVICES, str(step_inputs["folder"]), json.dumps(RUN_OF)],
      env=train_setup.subprocess_env(jax_cache_dir, devices=2), capture_output=True,
      text=True, timeout=1800)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")]
  assert proc.returncode == 0 and lines, proc.stdout + proc.stderr[-4000:]
  report = json.loads(lines[0][len("REPORT "):])
  assert sorted(report) == sorted(steps_lib.PHASES)
  for phase, r in report.items():
    assert r["grad_scale"] > 1e-4, (phase, r)       # the step has something to compare
    # float32 sums in another order: losses agree to a relative 1e-5, BatchNorm
    # statistics to 1e-5 of their size, gradients (and their norm) to GRAD_TOL of the
    # largest entry.
    tol = GRAD_TOL[phase]
    assert r["grad_err"] < tol and r["stats_err"] < 1e-5, (phase, r)
    for term, (one, two) in r["metrics"].items():
      rtol = tol if term == "grad_norm" else 1e-5
      assert np.isfinite(one) and abs(two - one) <= rtol * abs(one) + 1e-7, (phase, term,
                                                                            one, two)
    assert r["metrics"]["finite"] == [1.0, 1.0], phase


# ------------------------------------------------------------------ bfloat16


def test_bfloat16_steps_are_finite_close_to_float32_and_keep_float32_state(step_inputs):
  for phase in steps_lib.PHASES:
    cfg, st, batch = step_inputs[phase]
    res = {}
    for dt in ("float32", "bfloat16"):
      c = cfg.replace(compute_dtype=dt)
      nets = state_lib.make_networks(c)
      fn = parallel.pmap_step(steps_lib.make_step(c, nets, phase))
      s, m = fn(parallel.replicate(st), parallel.put_sharded(parallel.shard(batch, 1)),
                nets.model, None)
      s, m = parallel.unreplicate(s), {k: float(np.asarray(v)[0]) for k, v in
                                       jax.device_get(m).items()}
      res[dt] = (s, m)
    (s32, f32), (s16, bf16) = res["float32"], res["bfloat16"]
    assert bf16["finite"] == 1.0 and f32["finite"] == 1.0, (phase, bf16)
    # Parameters, statistics and optimiser states stay float32 under bf16 activations.
    for x in jax.tree_util.tree_leaves((s16.encoder, s16.unet, s16.encoder_opt, s16.unet_opt)):
      assert not np.issubdtype(x.dtype, np.floating) or x.dtype == np.float32, (phase, x.dtype)
    for term, value in f32.items():
      if term in ("finite", "grad_norm"):
        continue
      # bf16 keeps ~3 significant digits; through a ResNet/UNet and a renderer the
      # losses agree to a few per cent.
      assert abs(bf16[term] - value) <= 0.05 * abs(value) + 1e-3, (phase, term, value,
                                                                     bf16[term])
    assert abs(bf16["grad_norm"] - f32["grad_norm"]) <= 0.25 * f32["grad_norm"], (
        phase, f32["grad_norm"], bf16["grad_norm"])
    # The bf16 step did move the trained network (as far as the float32 one).
    which = steps_lib.trained_network(phase)
    step = lambda s: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(
        jax.tree_util.tree_leaves(getattr(s, which)["params"]),
        jax.tree_util.tree_leaves(getattr(st, which)["params"])))
    assert step(s16) > 0.5 * step(s32) > 0, phase


# ------------------------------------------------------------------ two processes

_HOST = textwrap.dedent("""
    import sys, jax, numpy as np
    from focus_jax.train import parallel, trainer
    from tests import train_setup
    port, pid, data, work, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    parallel.initialize(f"localhost:{port}", 2, pid)
    assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
    r = trainer.train(train_setup.micro(stage="pretrain", num_steps=steps), work, data)
    leaves = jax.tree_util.tree_leaves((r.state.encoder, r.state.encoder_opt))
    np.savez(f"{work}/state_p{pid}.npz", *[np.asarray(x) for x in leaves],
             loss=np.asarray(r.history["loss"]), data=r.state.data)
    print("HOST-DONE", pid, r.step)
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_keep_identical_parameters_and_follow_one_process(micro_runs,
                                                                        jax_cache_dir,
                                                                        tmp_path):
  whole = micro_runs["results"]["pretrain"]
  num = whole.step
  work = tmp_path / "run"
  work.mkdir()
  env = train_setup.subprocess_env(jax_cache_dir)
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-c", _HOST, str(port), str(i),
                             str(micro_runs["data"]), str(work), str(num)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in (0, 1)]
  try:
    outs = [p.communicate(timeout=900) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and "HOST-DONE" in out, out + err[-4000:]
  a, b = (np.load(work / f"state_p{i}.npz") for i in (0, 1))
  assert len(a.files) == len(b.files) > 20
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Each process read its own shard (one example per step, epochs of 2 per process:
  # step 5 took the first of epoch 2), and the checkpoint holds both positions.
  assert num == 5 and a["data"].tolist() == [[2, 1, 0], [2, 1, 0]]
  # One process on one device saw the same global batches (5 faces: the same pairs
  # each epoch), so the two-process run follows it up to float rounding.
  np.testing.assert_allclose(a["loss"], whole.history["loss"], rtol=1e-5)
  one = [np.asarray(x) for x in jax.tree_util.tree_leaves((whole.state.encoder,
                                                           whole.state.encoder_opt))]
  for i, x in enumerate(one):
    np.testing.assert_allclose(a[f"arr_{i}"], x, rtol=1e-4, atol=1e-5)
