"""The network variables of a training run's newest readable checkpoint (orbax).

Layout (written by :mod:`focus_jax.train.checkpoint`):
``<workdir>/checkpoints/<step>/{state,config}``; only the encoder and UNet variables
and the run's :class:`~focus_jax.train.config.TrainConfig` are taken from it.
"""

from __future__ import annotations

import os
import warnings
from typing import Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from focus_jax.errors import CheckpointError
from focus_jax.train.config import TrainConfig


def manager(directory: str, keep: int = 0) -> ocp.CheckpointManager:
  """The orbax manager of a checkpoint folder (items ``state`` and ``config``; keeps the
  newest ``keep``, all for 0; synchronous saves)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "config"))


def load_networks(workdir_or_dir: str) -> Tuple[dict, dict, TrainConfig, int]:
  """The network variables of another stage's newest readable checkpoint.

  Args:
    workdir_or_dir: that stage's ``--workdir`` (or its ``checkpoints`` folder).

  Returns:
    (encoder variables, unet variables, that run's TrainConfig, step), NumPy.

  Raises:
    CheckpointError: no readable checkpoint there.
  """
  directory = workdir_or_dir
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if not os.path.isdir(directory):
    raise CheckpointError(f"--init_from: no checkpoint folder at {workdir_or_dir} (run the "
                          "previous stage first, or point at its --workdir)")
  mgr = manager(directory)
  try:
    for step in reversed(sorted(mgr.all_steps())):
      try:
        out = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), config=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        warnings.warn(f"checkpoint {directory}/{step} is unreadable ({type(e).__name__}: {e}); "
                      "trying the previous one", stacklevel=2)
        continue
      state = jax.tree_util.tree_map(np.asarray, out["state"])
      return (state["encoder"], state["unet"], TrainConfig.from_dict(out["config"]), step)
  finally:
    mgr.close()
  raise CheckpointError(f"--init_from: no readable checkpoint in {directory}")
