"""absl flags shared by the ``experiments/`` entry points.

Every :class:`~focus_jax.train.config.TrainConfig` field is a flag of the same name
(defaults = the paper configuration); ``--flagfile=experiments/configs/tiny.flags``
(or ``paper.flags``) sets a whole configuration, later flags override it. Plus the
run flags (``--workdir``, ``--data_dir``, ...) and the multi-host flags.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from absl import flags

from focus_jax.train.config import TrainConfig

HELP = dict(
    image_size="Side of the square training crop in pixels (reference 224).",
    model="'builtin' (the built-in face model) or a morphable-model file "
          "(BFM 2017 .h5, BFM 2009/Deep3D .mat, eos .bin, focus-jax .npz).",
    model_resolution="Grid resolution of the built-in model (85: ~6k vertices; 37: ~1.2k).",
    num_shape="Shape components kept (the encoder regresses this many).",
    num_expression="Expression components kept.",
    num_albedo="Albedo components kept.",
    encoder_depth="ResNet depth of the encoder: 18, 34, 50 or 101.",
    encoder_width="Channels of the encoder's stem and first stage (64 = torchvision).",
    encoder_stages="Blocks per ResNet stage, comma separated (empty: torchvision's layout "
                   "for the depth; '1,1' = a 2-stage toy).",
    translation_scale="Millimetres per raw encoder output of the x/y translation (reference 1).",
    depth_scale="Millimetres per raw encoder output of the z translation (reference 0.005).",
    unet_width="Channels of the UNet's first block (reference 64).",
    unet_depth="UNet levels (reference 5; the image size must divide by 2^(depth-1)).",
    identity="Face-recognition net for the perceptual/preserve/dist terms: dlib (weights "
             "from pip face-recognition-models), arcface (needs --identity_weights) or none.",
    identity_weights="Weights file of the identity net ('' = default location).",
    batch_size="Global batch size (all devices of all hosts; reference 12).",
    optimizer="adadelta (the reference's) or adam.",
    encoder_lr="Encoder learning rate (reference Adadelta 0.1).",
    unet_lr="UNet learning rate (reference Adadelta 0.03).",
    em_encoder_lr="Encoder learning rate of the EM and adaptation stages (0 = --encoder_lr, "
                  "the reference).",
    lr_decay="Learning-rate factor applied every --lr_decay_steps (reference 0.99).",
    lr_decay_steps="Steps between learning-rate decays (staircase; reference 5000).",
    photo_loss="Stage 1 photometric term: robust (the reference's occlusion-robust "
               "likelihood) or l2 (mean squared RGB error over the face pixels / 2 sigma^2, "
               "no outlier rejection: a MoFA-style anchor, not in the reference).",
    w_photo="Stage 1: weight of the robust photometric likelihood (0.5).",
    w_landmark="Weight of the 68-landmark loss, in 224-pixel units (5e-4).",
    w_perceptual="Weight of the perceptual identity loss (0.25).",
    w_reg="Weight of the coefficient regularisation (0.1).",
    w_rec="EM encoder: weight of the masked reconstruction (0.5).",
    w_enc_area="EM encoder: weight of the area term (0.06).",
    w_area="UNet: weight of the area term (0.5).",
    w_binary="UNet: weight of the binary term (10).",
    w_preserve="UNet: weight of the preserve term (0.25).",
    w_dist="UNet: weight of the dist term (3).",
    w_neighbour="UNet: weight of the neighbour term (15).",
    augment="Training augmentation of the reference: random shift (+-10 px at 224), scale "
            "(0.9-1.1), rotation (+-10 deg) and flip of image, landmarks and masks.",
    unet_occluders="Stage 3: none (the reference), or cutout / cutmix rectangles pasted into "
                   "a quarter of the examples and labelled outlier.",
    encoder_init="Fresh stage-1 encoder trunk: '' (random), imagenet ($FOCUS_JAX_RESNET_WEIGHTS) "
                 "or a torchvision ResNet .pth path; converted at start, sha256 logged.",
    bfm_crop="BFM 2017 models: face (geometric face crop) or a .npy/.txt vertex list (e.g. "
             "the reference's idxes_crop.pkl points, extracted by you).",
    bfm_landmarks="BFM 2017 models: auto (eos table next to the file), reference (the "
                  "reference's 68 points; needs its crop list as --bfm_crop) or a table path.",
    bfm_origin="BFM 2017 models: '' (the file's origin) or reference (moved by -100 mm in z).",
    unet_prior="Misfit prior .npz (experiments/build_prior.py) for the EM UNet losses: the "
               "neighbour term divides each pixel's residual by the prior's sigma multiplier "
               "('' = none).",
    em_unet_steps="EM cycle: UNet steps (encoder frozen) per cycle (reference 5000).",
    em_encoder_steps="EM cycle: encoder steps (UNet frozen) per cycle (reference 25000).",
    em_lr_schedule="EM/adapt learning rates: own (each optimiser from its --*_lr, decayed by "
                   "its own updates) or reference (both continue stage 1's rate x0.8, the "
                   "UNet's x0.06 more, decayed x0.99 / x0.95 on every global EM step).",
    em_lr_pretrain_steps="Stage-1 length the reference EM rates continue from (300000).",
    em_step_offset="Global EM step of this stage's step 0 (set by the trainer for adapt with "
                   "--adapt_continue).",
    adapt_continue="Adaptation continues the --init_from EM run's global step (EM phase and "
                   "learning rates), as the reference; else it starts at step 0.",
    em_mask_gradient="EM encoder step: the gradient flows through the UNet mask M into the "
                     "render (the reference); else M is a constant.",
    identity_inputs="Identity-net inputs: reference (the black-background render R*F; "
                    "preserve/dist on I*M*F and R*M*F) or composite (the render over the "
                    "target; I*M and that render times M).",
    identity_render_landmarks="Landmarks aligning the render for the identity net: predicted "
                              "(the render's own, the reference) or target.",
    unet_bce="Stage-3 loss: face (BCE with logits over the face pixels) or reference (BCE "
             "with logits of the UNet's sigmoid output, all pixels: a double sigmoid).",
    render_mode="Training renders: hard (exact visibility) or soft (SoftRas).",
    antialias="Hard renders: analytic silhouette antialiasing (silhouette gradients).",
    compute_dtype="float32, or bfloat16 activations (parameters, losses, optimiser states "
                  "stay float32) for GPUs/TPUs.",
    seed="Seed of initialisation, dropout and data order.",
    num_steps="Steps of this stage (a resumed run continues up to this many); 0 = the "
              "stage's --<stage>_num_steps.",
    pretrain_num_steps="Stage-1 length when --num_steps is 0, and in run_pipeline (300000).",
    unet_num_steps="Stage-3 length when --num_steps is 0, and in run_pipeline (30000).",
    em_num_steps="Stage-4 EM length when --num_steps is 0, and in run_pipeline (120000).",
    adapt_num_steps="Adaptation length when --num_steps is 0, and in run_pipeline (30000).",
    require_reference_model="Refuse --model=builtin (paper.flags: the reference trains on "
                            "BFM 2017).",
    log_every="Steps between metric logs (the only host-device syncs).",
    image_every="Steps between image tiles (target, render overlay, mask).",
    checkpoint_every="Steps between checkpoints (one is also written at the end).",
    keep_checkpoints="How many checkpoints to keep.",
    max_bad_steps="Stop after this many non-finite steps in a row.",
    prefetch="Batches the input thread prepares ahead.",
    num_threads="Parallel image loads per batch.",
    cache_mb="Host memory [MiB] for decoded, aligned training examples: a dataset that "
             "fits is read from disk once (0: no cache; the cache never changes results).",
    progress="Show a progress bar.",
    fault_step="Testing: from this step on the loss is NaN (-1: never).",
)

_SKIP = ("stage",)


def define_config_flags(flag_values=None) -> None:
  """Defines one flag per TrainConfig field (idempotent)."""
  fv = flags.FLAGS if flag_values is None else flag_values
  defaults = TrainConfig()
  for f in dataclasses.fields(TrainConfig):
    if f.name in _SKIP or f.name in fv:
      continue
    value = getattr(defaults, f.name)
    help_ = HELP.get(f.name, f.name)
    if f.name == "encoder_stages":
      flags.DEFINE_list(f.name, [], help_, flag_values=fv)
    elif isinstance(value, bool):
      flags.DEFINE_bool(f.name, value, help_, flag_values=fv)
    elif isinstance(value, int):
      flags.DEFINE_integer(f.name, value, help_, flag_values=fv)
    elif isinstance(value, float):
      flags.DEFINE_float(f.name, value, help_, flag_values=fv)
    else:
      flags.DEFINE_string(f.name, value, help_, flag_values=fv)


def define_run_flags(init_from: bool = True, pseudo: bool = False) -> None:
  """--workdir, --data_dir, --split, (--init_from, --pseudo_dir), multi-host flags."""
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.csv, TensorBoard "
                      "events, image tiles. A run resumes from its newest checkpoint.",
                      required=True)
  flags.DEFINE_string("data_dir", None, "Dataset folder: reference layout (images + "
                      "<split>_landmarks.csv, e.g. from experiments/make_synthetic.py) or a "
                      "folder of face photos (landmarks detected with dlib and cached).",
                      required=True)
  flags.DEFINE_string("split", "train", "Dataset split (ignored for plain photo folders).")
  if init_from:
    flags.DEFINE_string("init_from", None, "--workdir of the previous stage: network weights "
                        "are taken from its newest checkpoint (ignored when resuming).")
  if pseudo:
    flags.DEFINE_string("pseudo_dir", None, "Folder with the pseudo masks of "
                        "make_pseudo_masks.py.", required=True)
  define_distributed_flags()


def define_distributed_flags() -> None:
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a multi-host "
                      "run (jax.distributed); unset = one process.")
  flags.DEFINE_integer("num_processes", 1, "Processes of a multi-host run.")
  flags.DEFINE_integer("process_id", 0, "This process's rank in a multi-host run.")
  flags.DEFINE_string("compilation_cache", os.environ.get("FOCUS_JAX_COMPILATION_CACHE", ""),
                      "Folder of JAX's persistent compilation cache (saves minutes of "
                      "XLA:CPU compilation when a stage is rerun or resumed); '' = off. "
                      "Default $FOCUS_JAX_COMPILATION_CACHE.")


def config_from_flags(stage: str, flag_values=None) -> TrainConfig:
  """The TrainConfig of the parsed flags, for ``stage``."""
  fv = flags.FLAGS if flag_values is None else flag_values
  values = {}
  for f in dataclasses.fields(TrainConfig):
    if f.name in _SKIP:
      continue
    v = fv[f.name].value
    if f.name == "encoder_stages":
      v = tuple(int(x) for x in v) if v else None
    values[f.name] = v
  return TrainConfig(stage=stage, **values)


def setup_runtime() -> None:
  """Host memory, compilation cache and jax.distributed from the parsed flags (call
  first in main, before any computation: see host_memory.keep_freed_memory)."""
  import jax  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  from focus_jax import host_memory  # pylint: disable=import-outside-toplevel
  from focus_jax.train import parallel  # pylint: disable=import-outside-toplevel
  host_memory.keep_freed_memory()
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # orbax logs every file operation at INFO
  cache = flags.FLAGS.compilation_cache
  if cache:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  parallel.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                      flags.FLAGS.process_id)


def main_for(stage: str, body: Callable[[TrainConfig], object]) -> Callable[[list], None]:
  """The ``main(argv)`` of an ``experiments/`` entry point, for ``absl.app.run``.

  It refuses positional arguments, calls :func:`setup_runtime`, builds the
  TrainConfig of ``stage`` from the parsed flags and runs ``body(config)`` under
  :func:`run_main` (focus-jax errors end the process with their one-line message).
  """

  def main(argv):
    from absl import app  # pylint: disable=import-outside-toplevel
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_runtime()
    config = config_from_flags(stage)
    run_main(lambda: body(config))

  return main


def run_main(fn) -> None:
  """Calls ``fn()``; focus-jax errors (bad data, config mismatch, divergence) end the
  process with their one-line message instead of a traceback."""
  import sys  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import FocusError  # pylint: disable=import-outside-toplevel
  try:
    fn()
  except FocusError as e:
    sys.exit(f"error: {e}")
