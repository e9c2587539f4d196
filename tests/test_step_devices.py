"""Every training step across devices, processes and compute dtypes (micro config).

* Two devices: each step function (pretrain, UNet, EM-UNet, EM-encoder) under pmap on
  two CPU devices, one example each, takes the step one device takes on both examples
  (BatchNorm statistics, gradients and the global loss ratios are reduced over the
  devices): same gradients, statistics and losses up to float rounding. The UNet's dropout draws its masks per device (the key is folded with the
  device index), so the two layouts drop different units: the UNet phases are
  compared with dropout off.
* Two processes (jax.distributed, gloo): a stage-1 run of two processes with one
  device each keeps bit-identical parameters on both, records both hosts' data
  positions, and follows the one-process run of the same batches.
* bfloat16: the steps run with bf16 activations, finite, close to float32, and keep
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
# Two-device gradient error / largest gradient entry allowed (measured: 5e-7 to 1e-6;
# for em_unet 5e-5 and 1.4e-4 on two data sets: its neighbour term takes a minimum
# over shifts, where two shifts nearly tie rounding picks either, and their gradients
# differ; 2e-7 without the term). Measured effect of reduction bugs on these inputs:
# a per-device ratio for steps.global_ratio moves the gradient by 2e-4 to 5e-4 and the
# loss by 1e-4 (relative); BatchNorm statistics of one device, 0.25 and 1e-2. Under
# em_unet's looser bound its loss terms, compared to 1e-5, still catch the former.
# (Adam's parameter change is not compared: it divides each gradient entry by its own
# running size, which for entries that are rounding noise — a convolution bias before
# BatchNorm — turns the noise into a step of the learning rate.)
GRAD_TOL = dict(pretrain=1e-5, unet=1e-5, em_unet=1e-3, em_encoder=1e-5)


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
    import json, sys, jax, numpy as np
    from focus_jax.train import parallel, state as state_lib, steps
    from tests import train_setup
    assert jax.local_device_count() == 2, jax.devices()
    folder = sys.argv[1]
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
      fn = parallel.pmap_step(steps.make_step(cfg, nets, phase))
      s2, m2 = jax.device_get(fn(parallel.replicate(st), parallel.shard(batch, 2), nets.model,
                                 None))
      # Both replicas of the two-device state hold the same bits.
      for x in jax.tree_util.tree_leaves(s2):
        np.testing.assert_array_equal(np.asarray(x)[0], np.asarray(x)[1])
      out = {f"s{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(
          parallel.unreplicate(s2)))}
      out.update({f"m_{k}": np.asarray(v)[0] for k, v in m2.items()})
      np.savez(f"{folder}/{phase}_two.npz", **out)
      print(phase, "done", flush=True)
    print("TWO-DEVICES-DONE")
""")


def _adam_gradient(before, after):
  """The gradient an Adam step used, from its first moments: mu' = b1·mu + (1 - b1)·g."""
  (old,), (new,) = ([s for s in opt if hasattr(s, "mu")] for opt in (before, after))
  b1 = 0.9                                         # optax.adam's default
  return [(np.asarray(n, np.float64) - b1 * np.asarray(o, np.float64)) / (1 - b1)
          for o, n in zip(jax.tree_util.tree_leaves(old.mu), jax.tree_util.tree_leaves(new.mu))]


def test_two_devices_take_the_one_device_step_for_every_phase(step_inputs, jax_cache_dir):
  folder = step_inputs["folder"]
  proc = subprocess.Popen(
      [sys.executable, "-c", _TWO_DEVICES, str(folder), json.dumps(RUN_OF)],
      env=train_setup.subprocess_env(jax_cache_dir, devices=2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  try:
    # One device, the whole batch, meanwhile in this process (the trainer's programs for
    # the encoder phases).
    one = {}
    for phase in steps_lib.PHASES:
      cfg, st, batch = step_inputs[phase]
      nets = state_lib.make_networks(cfg)
      if phase in ("unet", "em_unet"):
        nets = nets._replace(unet=nets.unet.clone(dropout_rate=0.0))
      fn = parallel.pmap_step(steps_lib.make_step(cfg, nets, phase))
      s, m = fn(parallel.replicate(st), parallel.put_sharded(parallel.shard(batch, 1)),
                nets.model, None)
      one[phase] = (parallel.unreplicate(s), {k: float(np.asarray(v)[0]) for k, v in
                                             jax.device_get(m).items()})
    out, err = proc.communicate(timeout=1800)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0 and "TWO-DEVICES-DONE" in out, out + err[-4000:]
  for phase in steps_lib.PHASES:
    cfg, st, _ = step_inputs[phase]
    a, m1 = one[phase]
    with np.load(folder / f"{phase}_two.npz") as z:
      treedef = jax.tree_util.tree_structure(a)
      b = jax.tree_util.tree_unflatten(treedef, [z[f"s{i}"]
                                                 for i in range(treedef.num_leaves)])
      m2 = {k[2:]: float(z[k]) for k in z.files if k.startswith("m_")}
    which = steps_lib.trained_network(phase)
    other = "unet" if which == "encoder" else "encoder"
    # The frozen network is untouched by both; the counters agree.
    for x, y, z in zip(*(jax.tree_util.tree_leaves(getattr(t, other)) for t in (a, b, st))):
      np.testing.assert_array_equal(x, z)
      np.testing.assert_array_equal(y, z)
    assert int(a.step) == int(b.step) == int(st.step) + 1
    assert m1["finite"] == m2["finite"] == 1.0, phase
    # float32 sums in another order: the gradients (read from Adam's first moments)
    # agree to GRAD_TOL of their largest entry, BatchNorm statistics to 1e-4 of their
    # size (variances are E[x²] - E[x]²; measured up to 3e-5), the losses to a relative
    # 1e-5 (the gradient norm to GRAD_TOL).
    g1 = _adam_gradient(getattr(st, f"{which}_opt"), getattr(a, f"{which}_opt"))
    g2 = _adam_gradient(getattr(st, f"{which}_opt"), getattr(b, f"{which}_opt"))
    scale = max(float(np.max(np.abs(g))) for g in g1)
    assert scale > 1e-3, phase                     # the step has something to compare
    grad_err = max(float(np.max(np.abs(x - y))) for x, y in zip(g1, g2)) / scale
    print(f"{phase}: two-device gradient error {grad_err:.2g} of the largest entry")
    assert grad_err < GRAD_TOL[phase], (phase, grad_err)
    for x, y in zip(*(jax.tree_util.tree_leaves(getattr(t, which)["batch_stats"])
                      for t in (a, b))):
      np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-7, err_msg=phase)
    for term, v1 in m1.items():
      rtol = GRAD_TOL[phase] if term == "grad_norm" else 1e-5
      assert np.isfinite(v1) and abs(m2[term] - v1) <= rtol * abs(v1) + 1e-7, (
          phase, term, v1, m2[term])


# ------------------------------------------------------------------ bfloat16


def test_bfloat16_steps_are_finite_close_to_float32_and_keep_float32_state(step_inputs):
  # Every network mode in bf16: encoder training (pretrain, em_encoder) and inference
  # (unet), UNet training (unet) and inference (em_encoder). em_unet runs the UNet as
  # the unet phase does, with float32 losses on its float32 output, and its compilation
  # is the dearest: left out.
  for phase in ("pretrain", "unet", "em_encoder"):
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
