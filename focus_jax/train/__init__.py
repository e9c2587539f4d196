"""Training FOCUS: configs, TrainState, pmapped step functions, checkpoints, the loop.

* :mod:`~focus_jax.train.config` — :class:`TrainConfig` (+ ``paper()``/``tiny()`` presets);
* :mod:`~focus_jax.train.state` — :class:`TrainState` pytree, networks and optimisers;
* :mod:`~focus_jax.train.steps` — pure step functions of every phase, inference;
* :mod:`~focus_jax.train.parallel` — pmap / multi-host helpers (jax.distributed);
* :mod:`~focus_jax.train.checkpoint` — orbax checkpoints with config check and fallback;
* :mod:`~focus_jax.train.logs` — CSV, TensorBoard event files, image tiles;
* :mod:`~focus_jax.train.trainer` — the loop (:func:`train`) and :func:`predict_dataset`;
* :mod:`~focus_jax.train.flags` — the absl flags shared by ``experiments/``.
"""

from focus_jax.train.config import TrainConfig, paper, tiny
from focus_jax.train.state import TrainState
from focus_jax.train.trainer import TrainingDiverged, predict_dataset, train

__all__ = ["TrainConfig", "TrainState", "TrainingDiverged", "paper", "predict_dataset",
           "tiny", "train"]
