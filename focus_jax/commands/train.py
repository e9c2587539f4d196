"""``focus-jax train``: run the FOCUS training pipeline for one configuration.

[misfit prior] -> stage 1 encoder pre-training -> stage 2 pseudo masks -> stage 3
UNet pre-training -> stage 4 joint EM -> [test-time adaptation on --target_dir].
Run directories: WORKDIR/{prior,pretrain,pseudo,unet,em,adapt}; rerunning the
command resumes every stage from its checkpoints (the same as
experiments/run_pipeline.py).

The configuration: --config=tiny (64 px, toy networks: minutes on a CPU),
--config=paper (the reference: 224 px, ResNet-50, UNet width 64) or a flag file
(one --flag=value per line, e.g. experiments/configs/tiny.flags); every training
flag given on the command line overrides it (--seed and --model too).

Example (the whole tiny pipeline on synthetic data, minutes on a CPU):
  focus-jax synth --out data/synth --num 64 --size 64
  focus-jax train --config tiny --data_dir data/synth --workdir runs/tiny
"""

import dataclasses
import json
import os

from absl import flags

# common defines --seed and --model first, so the training flags reuse them.
from focus_jax.commands import common  # pylint: disable=unused-import
# The training flags are the TrainConfig fields (one source of truth). This import
# pulls in the training package (flax/optax/orbax, ~0.5 s of `focus-jax --help`).
from focus_jax.train import flags as train_flags

SUMMARY = "Train the FOCUS networks: all stages for a config (tiny, paper or a flag file)."
USAGE = ("focus-jax train --config tiny|paper|FLAGFILE --data_dir DIR --workdir DIR "
         "[--target_dir DIR] [--TRAINING_FLAG=VALUE ...]")

CONFIG = flags.DEFINE_string(
    "config", "paper", "train: 'tiny', 'paper' or a flag file with one --flag=value per line "
    "(e.g. experiments/configs/tiny.flags); training flags given on the command line "
    "override it.")
WORKDIR = flags.DEFINE_string(
    "workdir", None, "train: run directory (checkpoints, metrics.csv, TensorBoard events, "
    "image tiles per stage); a rerun resumes from its checkpoints.")
DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "train: dataset folder: reference layout (images + "
    "<split>_landmarks.csv, e.g. from `focus-jax synth`) or a folder of face photos "
    "(landmarks detected with dlib and cached).")
SPLIT = flags.DEFINE_string("split", "train", "train: dataset split (ignored for plain photo "
                            "folders).")
TARGET_DIR = flags.DEFINE_string(
    "target_dir", None, "train: optional target set for test-time adaptation after EM "
    "(its predictions are exported to WORKDIR/adapt/export).")
PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", None, "train: stage-1 encoder steps "
                                      "(default: the config's pretrain_num_steps; tiny 40, "
                                      "paper 300000).", lower_bound=1)
UNET_STEPS = flags.DEFINE_integer("unet_steps", None, "train: stage-3 UNet steps (default: "
                                  "unet_num_steps; tiny 30, paper 30000).", lower_bound=1)
EM_STEPS = flags.DEFINE_integer("em_steps", None, "train: stage-4 EM steps, UNet and encoder "
                                "blocks together (default: em_num_steps; tiny 40).",
                                lower_bound=1)
ADAPT_STEPS = flags.DEFINE_integer("adapt_steps", None, "train: test-time adaptation steps "
                                   "with --target_dir (default: adapt_num_steps; tiny 16).",
                                   lower_bound=1)
DRY_RUN = flags.DEFINE_bool("dry_run", False, "train: print the resolved configuration and "
                            "the stage plan as JSON, then exit without training.")
PRIOR_FACES = flags.DEFINE_integer("prior_faces", 0, "train: synthetic fits for the misfit "
                                   "prior (0 = no prior); the prior then shapes the pseudo "
                                   "masks and the EM UNet losses (--unet_prior).", lower_bound=0)

# One flag per TrainConfig field (--seed and --model are the shared ones), plus the
# multi-host flags and --compilation_cache.
train_flags.define_config_flags()
train_flags.define_distributed_flags()
flags.adopt_module_key_flags(train_flags)


def _base_config(spec: str, config_module):
  """The TrainConfig of --config (a preset name or a flag file)."""
  if spec in ("tiny", "paper"):
    return getattr(config_module, spec)()
  if not os.path.isfile(spec):
    raise flags.Error(f"--config: expected 'tiny', 'paper' or a flag file, got {spec!r} "
                      "(no such file)")
  fv = flags.FlagValues()
  train_flags.define_config_flags(flag_values=fv)
  try:
    fv(["focus-jax train", f"--flagfile={spec}"])
  except flags.Error as e:
    raise flags.Error(f"--config {spec}: {e}") from e
  try:
    return train_flags.config_from_flags("pretrain", flag_values=fv)
  except ValueError as e:
    raise flags.Error(f"--config {spec}: {e}") from e


def resolve_config():
  """--config, overridden by every training flag given on the command line."""
  from focus_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  base = _base_config(CONFIG.value, config_lib)
  changes = {}
  for field in dataclasses.fields(base):
    if field.name == "stage":
      continue
    if flags.FLAGS[field.name].present:     # --seed and --model: the shared flags
      value = flags.FLAGS[field.name].value
      if field.name == "encoder_stages":
        try:
          value = tuple(int(x) for x in value) if value else None
        except ValueError:
          raise flags.Error(f"--encoder_stages: expected integers, got {value}") from None
      changes[field.name] = value
  try:
    return base.replace(**changes)
  except ValueError as e:
    raise flags.Error(str(e)) from e


def main(args):
  if args:
    raise flags.Error(f"train takes no positional arguments, got {args}")
  for flag in (WORKDIR, DATA_DIR):
    if not flag.value:
      raise flags.Error(f"--{flag.name} is required: {USAGE}")
  config = resolve_config()
  steps = {stage: flag.value or getattr(config, f"{stage}_num_steps")
           for stage, flag in (("pretrain", PRETRAIN_STEPS), ("unet", UNET_STEPS),
                               ("em", EM_STEPS), ("adapt", ADAPT_STEPS))}
  adapt_steps = steps["adapt"]
  if not TARGET_DIR.value:
    steps.pop("adapt")
  plan = dict(config=config.to_dict(), steps=steps, workdir=WORKDIR.value,
              data_dir=DATA_DIR.value, split=SPLIT.value, target_dir=TARGET_DIR.value,
              prior_faces=PRIOR_FACES.value)
  print(json.dumps(plan, indent=1))
  if DRY_RUN.value:
    return
  steps.setdefault("adapt", adapt_steps)
  from focus_jax.train import stages  # pylint: disable=import-outside-toplevel
  train_flags.setup_runtime()
  result = stages.run_pipeline(config, WORKDIR.value, DATA_DIR.value, steps=steps,
                               target_dir=TARGET_DIR.value, prior_faces=PRIOR_FACES.value,
                               split=SPLIT.value)
  print(json.dumps(result, indent=1, default=str))
