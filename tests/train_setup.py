"""Set-up shared by the training tests, in this process and in subprocesses.

* :func:`tiny_state_and_batch`: a fresh tiny TrainState whose encoder head is
  non-zero, and a batch of synthetic faces (tests/test_train_bfloat16.py,
  tests/test_train_parallel.py).
* :func:`micro`, :data:`MICRO_FLAGS`: the cheapest training configuration that still
  has every piece (32² crops, a 1-stage ResNet, a 2-level UNet, the built-in model at
  resolution 25, batch 2, EM cycles of 2 UNet + 3 encoder steps), as a TrainConfig
  and as the same flags for the ``experiments/`` scripts. One configuration for every
  default-run training test, so that each step function is compiled once per session
  (:func:`compilation_cache`, :func:`subprocess_env`).
* :func:`run_script`: an ``experiments/`` script in a subprocess.

Imported inside the subprocesses (``PYTHONPATH`` = the repository), so it imports
nothing from pytest.
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from focus_jax.data import synthetic
from focus_jax.train import checkpoint as ckpt_lib
from focus_jax.train import config as config_lib
from focus_jax.train import state as state_lib

REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = REPO / "experiments" / "configs" / "tiny.flags"

# The tiny preset made cheaper to compile (see the module docstring); the training
# tests' run directories never write image tiles or intermediate checkpoints unless
# a test asks for them.
MICRO_CHANGES = dict(image_size=32, batch_size=2, model_resolution=25, encoder_stages=(1,),
                     unet_width=4, unet_depth=2, em_unet_steps=2, em_encoder_steps=3,
                     progress=False, image_every=1000, checkpoint_every=1000,
                     keep_checkpoints=10)
MICRO_FLAGS = (f"--flagfile={TINY_FLAGS}", "--image_size=32", "--batch_size=2",
               "--model_resolution=25", "--encoder_stages=1", "--unet_width=4",
               "--unet_depth=2", "--em_unet_steps=2", "--em_encoder_steps=3", "--noprogress",
               "--image_every=1000", "--checkpoint_every=1000", "--keep_checkpoints=10")


def micro(**changes) -> config_lib.TrainConfig:
  """The micro training configuration (tiny preset + :data:`MICRO_CHANGES`)."""
  return config_lib.tiny(**{**MICRO_CHANGES, **changes})


_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@contextlib.contextmanager
def compilation_cache(path):
  """JAX's persistent compilation cache in ``path`` for every compilation inside the
  block (also the quick ones), then the previous settings again.

  A program compiled once by any process sharing ``path`` (see :func:`subprocess_env`)
  is loaded, not compiled again: the training tests rebuild the same step functions in
  many runs and processes. Nested blocks with the same ``path`` are no-ops.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=import-outside-toplevel
  old = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  if old["jax_compilation_cache_dir"] == str(path):
    yield
    return
  new = dict(zip(_CACHE_OPTIONS, (str(path), 0.0, 0)))
  for name, value in new.items():
    jax.config.update(name, value)
  cc.reset_cache()
  try:
    yield
  finally:
    for name, value in old.items():
      jax.config.update(name, value)
    cc.reset_cache()


def subprocess_env(cache=None, devices: int = 0) -> dict:
  """Environment of a test subprocess: the repository on ``PYTHONPATH``, CPU only, the
  persistent compilation cache ``cache`` (if given) and ``devices`` host devices
  (0: JAX's default, one)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  if cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  if devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def run_script(script: str, *args, cache=None, micro_flags: bool = True,
               timeout: float = 900) -> subprocess.CompletedProcess:
  """Runs ``experiments/<script>`` (with :data:`MICRO_FLAGS` first, unless
  ``micro_flags`` is False) as a user does; raises AssertionError with its stderr if it
  fails."""
  cmd = [sys.executable, str(REPO / "experiments" / script)]
  cmd += list(MICRO_FLAGS) if micro_flags else []
  cmd += [str(a) for a in args]
  proc = subprocess.run(cmd, env=subprocess_env(cache), capture_output=True, text=True,
                        timeout=timeout, cwd=REPO)
  if proc.returncode != 0:
    raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-4000:]}")
  return proc


def saved_state(workdir, config):
  """(step, host TrainState) of the newest checkpoint in ``workdir``."""
  nets = state_lib.make_networks(config)
  template = state_lib.to_host(state_lib.init_state(config, nets))
  ck = ckpt_lib.Checkpointer(str(Path(workdir) / "checkpoints"), config)
  try:
    return ck.restore_latest(template)
  finally:
    ck.close()


def tiny_state_and_batch(config, num: int, seed: int = 3, pseudo: bool = False):
  """(networks, host TrainState, batch) for ``config`` (a tiny TrainConfig).

  The encoder head is set to small non-zero values (a zero head predicts the mean
  face whatever the image, so no gradient would reach the trunk). The batch holds
  ``num`` synthetic faces of ``config.image_size``: ``image`` [num, S, S, 3],
  ``landmarks`` [num, 68, 2] px and, with ``pseudo``, ``pseudo`` [num, S, S] (the
  true visible-skin masks standing in for pseudo masks).
  """
  nets = state_lib.make_networks(config)
  st = state_lib.to_host(state_lib.init_state(config, nets))
  head = st.encoder["params"]["resnet"]["fc"]
  head["kernel"] = np.asarray(0.01 * np.sin(np.arange(head["kernel"].size)).reshape(
      head["kernel"].shape), np.float32)
  gen = synthetic.SyntheticFaces(nets.model, synthetic.SyntheticConfig(size=config.image_size),
                                 seed=seed, batch_size=num)
  samples = gen.generate(range(num))
  batch = dict(image=np.stack([s.image for s in samples]).astype(np.float32),
               landmarks=np.stack([s.landmarks for s in samples]).astype(np.float32))
  if pseudo:
    batch["pseudo"] = np.stack([s.visible_mask for s in samples]).astype(np.float32)
  return nets, st, batch
