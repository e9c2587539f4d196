"""Training FOCUS: configs, TrainState, pmapped step functions, checkpoints, the loop.

* :mod:`~focus_jax.train.config` — :class:`TrainConfig` (+ ``paper()``/``tiny()`` presets);
* :mod:`~focus_jax.train.state` — :class:`TrainState` pytree, networks and optimisers;
* :mod:`~focus_jax.train.steps` — pure step functions of every phase (the networks' forward
  pass and inference: :mod:`focus_jax.autoencoder`);
* :mod:`~focus_jax.train.schedules` — learning rates per step (the reference's EM rates);
* :mod:`~focus_jax.train.parallel` — pmap / multi-host helpers (jax.distributed);
* :mod:`~focus_jax.train.checkpoint` — orbax checkpoints with config check and fallback;
* :mod:`~focus_jax.train.logs` — CSV, TensorBoard event files, image tiles;
* :mod:`~focus_jax.train.trainer` — the loop (:func:`train`) and :func:`predict_dataset`;
* :mod:`~focus_jax.train.flags` — the absl flags shared by ``experiments/``.
"""

import importlib

# Loaded on first use, so that importing focus_jax.train.flags (the CLI does) stays cheap.
_LAZY = {"TrainConfig": "config", "paper": "config", "tiny": "config", "TrainState": "state",
         "TrainingDiverged": "trainer", "predict_dataset": "trainer", "train": "trainer"}
__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(f"focus_jax.train.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'focus_jax.train' has no attribute {name!r}")
