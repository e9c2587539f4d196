"""Orbax checkpoints of a whole TrainState plus its TrainConfig.

Layout: ``<workdir>/checkpoints/<step>/{state,config}`` (orbax CheckpointManager:
written to a temporary folder and renamed when complete, so a crash mid-save
leaves no half checkpoint under a step name; the oldest beyond ``keep`` are
deleted).

Restoring (:meth:`Checkpointer.restore_latest`) walks the steps newest first: a
checkpoint that cannot be read (truncated or corrupt files) is moved aside to
``<step>.corrupt-<time>`` (kept for inspection; the resumed run writes that step
again) with a warning, and the previous one is tried; a checkpoint written with
another configuration is refused with :class:`ConfigMismatchError`, naming the fields.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from focus_jax.autoencoder import checkpoints as ckpt_io
from focus_jax.errors import CheckpointError, FocusError
from focus_jax.train.config import TrainConfig


class ConfigMismatchError(FocusError, ValueError):
  """A checkpoint was written by a run with a different configuration."""


def describe_mismatch(path: str, diffs) -> str:
  lines = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diffs[:8])
  more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
  return (f"the checkpoint in {path} was written with a different configuration: {lines}"
          f"{more}. Resume with the same flags (or flag file), or give a new --workdir.")


class Checkpointer:
  """Saves and restores TrainStates of one run directory.

  Args:
    directory: the checkpoint folder (``<workdir>/checkpoints``).
    config: this run's config (saved with every checkpoint, checked on restore).
  """

  def __init__(self, directory: str, config: TrainConfig):
    self.directory = os.path.abspath(directory)
    self.config = config
    self.manager = ckpt_io.manager(self.directory, config.keep_checkpoints)

  def steps(self) -> list:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state_host) -> None:
    """Saves a host (NumPy) TrainState at ``step`` (all processes must call this)."""
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_host),
        config=ocp.args.JsonSave(self.config.to_dict())), force=True)
    self.manager.wait_until_finished()

  def read_config(self, step: int) -> dict:
    return self.manager.restore(int(step), args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]

  def restore_latest(self, template) -> Optional[Tuple[int, object]]:
    """(step, state) of the newest readable checkpoint, or None when there is none.

    Args:
      template: a host TrainState of the right structure (shapes and dtypes).

    Raises:
      ConfigMismatchError: the newest readable checkpoint has another config.
    """
    for step in reversed(self.steps()):
      path = os.path.join(self.directory, str(step))
      try:
        saved = self.read_config(step)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      diffs = self.config.mismatches(saved)
      if diffs:
        raise ConfigMismatchError(describe_mismatch(path, diffs))
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template)))["state"]
        restored = jax.tree_util.tree_map(np.asarray, restored)
        _check_finite_structure(restored, template, path)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      return step, restored
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable step folder to ``<step>.corrupt-<time>`` (process 0), so that
    the resumed run can save that step again, and says so."""
    path = os.path.join(self.directory, str(step))
    # No '_' in the name: orbax would read "<anything>_<digits>" as a step.
    target = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
    n = 1
    while os.path.exists(target):
      target, n = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{n}", n + 1
    text = str(error).strip()
    why = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    where = "left in place"
    if jax.process_index() == 0:
      try:
        os.replace(path, target)
        where = f"moved aside to {target}"
      except OSError as e:
        where = f"left in place (cannot move it: {e.strerror})"
    warnings.warn(f"checkpoint {path} is unreadable ({why[:300]}); {where}; falling back "
                  "to the previous checkpoint", stacklevel=3)
    self.manager.reload()

  def close(self) -> None:
    self.manager.close()


def _check_finite_structure(restored, template, path):
  a = jax.tree_util.tree_structure(restored)
  b = jax.tree_util.tree_structure(template)
  if a != b:
    raise CheckpointError(f"{path}: state structure differs from this run's")
  for x, y in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(template)):
    if np.shape(x) != np.shape(y):
      raise CheckpointError(f"{path}: array of shape {np.shape(x)} where {np.shape(y)} "
                            "was expected")
