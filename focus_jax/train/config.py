"""The training configuration: one frozen dataclass for every stage, JSON round trip.

A :class:`TrainConfig` fixes everything that shapes the networks, the data, the
losses and the optimisers (see ../shared/DESIGN.md §1 for the reference values,
which are the defaults here = the *paper* configuration, except the fields of
:data:`PAPER_CHANGES`, whose defaults keep focus-jax's earlier behaviour). Checkpoints store it;
a run refuses to resume a checkpoint whose config differs in any field that is
not in :data:`RUN_FIELDS` (fields that only change how long or how verbosely a
run goes on).

Two presets: :func:`paper` (224², ResNet-50, UNet width 64, batch 12) and
:func:`tiny` (64², tiny nets, built-in model at resolution 37, no identity net:
the whole pipeline runs on a laptop CPU in minutes). The flag files
``experiments/configs/{paper,tiny}.flags`` set the same values from the command
line.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Tuple

# Fields that may change between a run and its resumption (length, logging,
# checkpoint cadence, fault injection for tests); every other field must match.
RUN_FIELDS = frozenset({
    "num_steps", "log_every", "image_every", "checkpoint_every", "keep_checkpoints",
    "max_bad_steps", "prefetch", "num_threads", "cache_mb", "progress", "fault_step",
    "encoder_init",   # read at a fresh stage-1 start only (its sha256 is in the workdir)
    "pretrain_num_steps", "unet_num_steps", "em_num_steps", "adapt_num_steps",
    "require_reference_model",
})

STAGES = ("pretrain", "unet", "em", "adapt")
# Fields added after the first checkpoints were written: absent = default.
_ADDED = frozenset({"em_encoder_lr", "unet_prior", "translation_scale", "depth_scale",
                    "augment", "unet_occluders", "encoder_init", "bfm_crop", "bfm_landmarks",
                    "bfm_origin",
                    "em_lr_schedule", "em_lr_pretrain_steps", "em_step_offset",
                    "adapt_continue", "em_mask_gradient", "identity_inputs",
                    "identity_render_landmarks", "unet_bce", "photo_loss"})
# Stage lengths of the reference (S1 saves enc_net_300000, which S4 loads; S3 saves
# unet_mask_030000, which S4 loads). EM and adaptation stop after 130 epochs in the
# reference (data-dependent); 4 EM cycles and 1 adaptation cycle are focus-jax's choice.
REFERENCE_STEPS = dict(pretrain=300000, unet=30000, em=120000, adapt=30000)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Static configuration of a training stage (hashable; closes over jitted steps).

  Attributes (units in brackets):
    stage: 'pretrain' (stage 1, encoder with the robust loss), 'unet' (stage 3,
      UNet on pseudo masks), 'em' (stage 4, alternating blocks) or 'adapt'
      (test-time EM on a target set; same steps as 'em').
    image_size: side of the square training crop [px]; the camera is the
      reference camera scaled to it.
    model: 'builtin' or a morphable-model file; model_resolution: grid size of
      the built-in model; num_shape/num_expression/num_albedo: components kept
      (the encoder regresses exactly these).
    encoder_depth, encoder_width, encoder_stages: the ResNet trunk (stages None =
      torchvision's layout for the depth).
    translation_scale, depth_scale: [mm per raw head unit] of the encoder's x/y and z
      translation (reference 1 and 0.005). An optimiser step moves a head output by
      about the learning rate, so at the reference scales and Adam lr 2e-3 the tiny
      encoder cannot move the face by the ±10 mm (x/y) and tens of mm (z) a 64² crop
      needs in a few hundred steps, and its shape coefficients absorb the misplacement.
    unet_width, unet_depth: the segmentation UNet.
    identity: 'dlib', 'arcface' or 'none' (perceptual/preserve/dist terms off);
      identity_weights: weights file ('' = the default location).
    batch_size: global batch (all devices of all hosts).
    optimizer: 'adadelta' (the reference's; PyTorch's rho 0.9, eps 1e-6) or 'adam'
      (moves much faster in the few dozen steps of the tiny configuration).
    encoder_lr, unet_lr: learning rates; × lr_decay every lr_decay_steps
      (staircase) for both.
    em_encoder_lr: the encoder's learning rate in stages 'em' and 'adapt' with
      em_lr_schedule 'own' (0 = encoder_lr; ignored by 'reference'); fine-tuning with the UNet's masks at the pre-training rate undoes
      part of stage 1 in the tiny configuration.
    photo_loss: stage 1's photometric term: 'robust' (the reference's occlusion-robust
      likelihood, losses.robust_photometric) or 'l2' (mean squared RGB error over the
      face pixels in units of 2σ², no outlier rejection, losses.l2_photometric: a
      MoFA-style encoder, the lower anchor of benchmarks/train.py; not in the reference).
    w_*: loss weights (pretrain: photo, landmark, perceptual, reg; EM encoder:
      rec, perceptual, reg, landmark, enc_area; UNet: area, binary, preserve, dist,
      neighbour).
    augment: training examples get the reference's random shift / scale / rotation /
      flip (focus_jax.data.augment; image, landmarks and pseudo masks alike).
    unet_occluders: stage 3: 'none' (the reference's Step3 loader), or 'cutout' /
      'cutmix' rectangles pasted into a quarter of the examples, labelled outlier
      (the reference's unused experimental loaders; focus_jax.data.cutout).
    encoder_init: a fresh stage-1 run's ResNet trunk: '' (random), 'imagenet'
      ($FOCUS_JAX_RESNET_WEIGHTS) or a torchvision .pth path (focus_jax.train.encoder_init).
    bfm_crop, bfm_landmarks, bfm_origin: BFM 2017 .h5 models: vertex crop ('face' =
      the geometric face crop, or a .npy/.txt vertex list), landmark table ('auto' =
      the eos table next to the file, 'reference' = the reference's 68 points, which
      need its crop list as bfm_crop, or a table path), origin ('' = the file's,
      'reference' = moved by -100 mm in z); see focus_jax.morphable.bfm.load_bfm2017.
    unet_prior: misfit prior .npz (focus_jax.prior, experiments/build_prior.py) used by
      the EM UNet losses: the neighbour term's per-pixel residual is divided by the
      prior's σ multiplier, so systematically hard-to-fit skin is not pushed to
      'outlier' ('' = none).
    em_unet_steps, em_encoder_steps: EM cycle: this many UNet steps (encoder
      frozen) then this many encoder steps (UNet frozen).
    em_lr_schedule: 'own' (each optimiser decays its rate by its own update count,
      starting at encoder_lr / em_encoder_lr and unet_lr) or 'reference' (S4: both
      rates continue stage 1's, lr(g) = encoder_lr · lr_decay^(em_lr_pretrain_steps //
      lr_decay_steps) · 0.8 · d^(g // lr_decay_steps) with d = lr_decay for the encoder
      and, × 0.06, d = 0.95 for the UNet; g = the global EM step, so both rates decay
      on every step whichever network trains; see focus_jax.train.schedules).
    em_lr_pretrain_steps: stage-1 length the 'reference' EM rates continue from [steps].
    em_step_offset: global EM step of this stage's step 0 (phase and 'reference'
      rates); the trainer sets it for 'adapt' with adapt_continue.
    adapt_continue: 'adapt' continues the EM run it starts from (--init_from): its
      global step, hence its place in the EM cycle and its learning rates, as the
      reference's test-time adaptation (S4 --pretrained_model); False: from step 0.
    em_mask_gradient: EM encoder step: the gradient flows through the UNet's mask M
      into the render (the reference); False: M is a constant.
    identity_inputs: what the identity net sees: 'reference' = the black-background
      render R·F (perceptual) and R·M·F, I·M·F (dist, preserve); 'composite' = the
      render composited over the target (perceptual), times M, and I·M.
    identity_render_landmarks: landmarks that align the render for the identity net
      (perceptual, dist): 'predicted' (the render's own, the reference) or 'target'.
    unet_bce: stage-3 loss: 'face' = BCE with logits over the face pixels (focus-jax's
      correction) or 'reference' = BCE-with-logits applied to the UNet's sigmoid output
      (a double sigmoid), mean over all pixels (S3).
    render_mode: 'hard' or 'soft' rasterisation for training renders.
    antialias: hard mode: analytic silhouette antialiasing (silhouette gradients
      for the face mask F; costs ~3x compile time on CPU, so the tiny config drops it).
    compute_dtype: 'float32' or 'bfloat16' (activations; parameters, losses and
      optimiser state stay float32).
    seed: initialisation, dropout and data-order seed.
    num_steps: steps of this stage (0: the stage's <stage>_num_steps); log_every,
      image_every, checkpoint_every: cadences [steps]; keep_checkpoints: how many to keep.
    pretrain_num_steps, unet_num_steps, em_num_steps, adapt_num_steps: each stage's
      length when num_steps is 0 (and in run_pipeline); defaults REFERENCE_STEPS.
    require_reference_model: refuse the built-in model (paper.flags sets it: the
      reference trains on BFM 2017).
    max_bad_steps: stop after this many non-finite steps in a row.
    prefetch, num_threads: input pipeline (batches ahead, parallel loads).
    cache_mb: host memory for decoded, aligned examples [MiB] (0: none).
    progress: draw a progress bar.
    fault_step: test hook: from this step on the loss is NaN (-1: never).
  """
  stage: str = "pretrain"
  image_size: int = 224
  model: str = "builtin"
  model_resolution: int = 85
  num_shape: int = 80
  num_expression: int = 64
  num_albedo: int = 80
  encoder_depth: int = 50
  encoder_width: int = 64
  encoder_stages: Optional[Tuple[int, ...]] = None
  translation_scale: float = 1.0
  depth_scale: float = 0.005
  unet_width: int = 64
  unet_depth: int = 5
  identity: str = "dlib"
  identity_weights: str = ""
  batch_size: int = 12
  optimizer: str = "adadelta"
  encoder_lr: float = 0.1
  unet_lr: float = 0.03
  em_encoder_lr: float = 0.0
  lr_decay: float = 0.99
  lr_decay_steps: int = 5000
  photo_loss: str = "robust"
  w_photo: float = 0.5
  w_landmark: float = 5e-4
  w_perceptual: float = 0.25
  w_reg: float = 0.1
  w_rec: float = 0.5
  w_enc_area: float = 0.06
  w_area: float = 0.5
  w_binary: float = 10.0
  w_preserve: float = 0.25
  w_dist: float = 3.0
  w_neighbour: float = 15.0
  unet_prior: str = ""
  augment: bool = False
  unet_occluders: str = "none"
  encoder_init: str = ""
  bfm_crop: str = "face"
  bfm_landmarks: str = "auto"
  bfm_origin: str = ""
  em_unet_steps: int = 5000
  em_encoder_steps: int = 25000
  em_lr_schedule: str = "own"
  em_lr_pretrain_steps: int = REFERENCE_STEPS["pretrain"]
  em_step_offset: int = 0
  adapt_continue: bool = False
  em_mask_gradient: bool = False
  identity_inputs: str = "composite"
  identity_render_landmarks: str = "target"
  unet_bce: str = "face"
  render_mode: str = "hard"
  antialias: bool = True
  compute_dtype: str = "float32"
  seed: int = 0
  num_steps: int = 0
  pretrain_num_steps: int = REFERENCE_STEPS["pretrain"]
  unet_num_steps: int = REFERENCE_STEPS["unet"]
  em_num_steps: int = REFERENCE_STEPS["em"]
  adapt_num_steps: int = REFERENCE_STEPS["adapt"]
  require_reference_model: bool = False
  log_every: int = 50
  image_every: int = 1000
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  max_bad_steps: int = 20
  prefetch: int = 2
  num_threads: int = 4
  cache_mb: int = 2048
  progress: bool = True
  fault_step: int = -1

  def __post_init__(self):
    problems = []
    if self.stage not in STAGES:
      problems.append(f"stage must be one of {STAGES}, got {self.stage!r}")
    if self.identity not in ("dlib", "arcface", "none"):
      problems.append(f"identity must be dlib, arcface or none, got {self.identity!r}")
    if self.compute_dtype not in ("float32", "bfloat16"):
      problems.append(f"compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}")
    if self.optimizer not in ("adadelta", "adam"):
      problems.append(f"optimizer must be adadelta or adam, got {self.optimizer!r}")
    if self.render_mode not in ("hard", "soft"):
      problems.append(f"render_mode must be hard or soft, got {self.render_mode!r}")
    factor = 2 ** (self.unet_depth - 1)
    if self.image_size % factor:
      problems.append(f"image_size {self.image_size} must be divisible by {factor} "
                      f"(UNet depth {self.unet_depth})")
    if self.translation_scale <= 0 or self.depth_scale <= 0:
      problems.append(f"translation_scale and depth_scale must be positive, got "
                      f"{self.translation_scale} and {self.depth_scale}")
    if self.em_encoder_lr < 0:
      problems.append(f"em_encoder_lr must be >= 0 (0 = encoder_lr), got {self.em_encoder_lr}")
    if self.unet_occluders not in ("none", "cutout", "cutmix"):
      problems.append(f"unet_occluders must be none, cutout or cutmix, got "
                      f"{self.unet_occluders!r}")
    if self.bfm_origin not in ("", "reference"):
      problems.append(f"bfm_origin must be '' or 'reference', got {self.bfm_origin!r}")
    if self.cache_mb < 0:
      problems.append(f"cache_mb must be >= 0 (0 = no cache), got {self.cache_mb}")
    for name, allowed in (("em_lr_schedule", ("own", "reference")),
                          ("identity_inputs", ("composite", "reference")),
                          ("identity_render_landmarks", ("target", "predicted")),
                          ("unet_bce", ("face", "reference")),
                          ("photo_loss", ("robust", "l2"))):
      if getattr(self, name) not in allowed:
        problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
    for name in ("num_steps", "em_step_offset"):
      if getattr(self, name) < 0:
        problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
    for name in ("batch_size", "pretrain_num_steps", "unet_num_steps", "em_num_steps",
                 "adapt_num_steps", "em_lr_pretrain_steps", "log_every", "image_every", "checkpoint_every",
                 "keep_checkpoints", "max_bad_steps", "lr_decay_steps"):
      if getattr(self, name) < 1:
        problems.append(f"{name} must be positive, got {getattr(self, name)}")
    if self.em_unet_steps < 0 or self.em_encoder_steps < 0 or (
        self.em_unet_steps + self.em_encoder_steps == 0):
      problems.append("em_unet_steps + em_encoder_steps must be positive")
    if problems:
      raise ValueError("TrainConfig: " + "; ".join(problems))

  # ------------------------------------------------------------------ helpers

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    if d["encoder_stages"] is not None:
      d["encoder_stages"] = list(d["encoder_stages"])
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict) -> "TrainConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"TrainConfig: unknown fields {sorted(unknown)}")
    d = dict(d)
    if d.get("encoder_stages") is not None:
      d["encoder_stages"] = tuple(int(s) for s in d["encoder_stages"])
    return cls(**d)

  def encoder_lr_of_stage(self) -> float:
    """The encoder's learning rate in this config's stage (em_encoder_lr in EM/adapt)."""
    if self.stage in ("em", "adapt") and self.em_encoder_lr > 0:
      return self.em_encoder_lr
    return self.encoder_lr

  def stage_steps(self) -> int:
    """Steps of this config's stage: num_steps, or (0) the stage's <stage>_num_steps."""
    return self.num_steps or getattr(self, f"{self.stage}_num_steps")

  def em_phase(self, step: int) -> str:
    """'unet' or 'encoder': which network this stage's step ``step`` (0-based) trains;
    the cycle runs on the global EM step ``step + em_step_offset``."""
    cycle = self.em_unet_steps + self.em_encoder_steps
    return "unet" if (step + self.em_step_offset) % cycle < self.em_unet_steps else "encoder"

  def mismatches(self, other: "TrainConfig | dict") -> list:
    """[(field, self value, other value)] for fields that must agree to resume."""
    a = self.to_dict()
    b = other.to_dict() if isinstance(other, TrainConfig) else dict(other)
    # A field newer than the other config counts as its default (e.g. em_encoder_lr).
    b = {**{k: v for k, v in TrainConfig().to_dict().items() if k in _ADDED}, **b}
    return [(k, b.get(k, "<missing>"), a[k]) for k in sorted(a)
            if k not in RUN_FIELDS and _norm(a[k]) != _norm(b.get(k, "<missing>"))]


def _norm(v):
  return list(v) if isinstance(v, tuple) else v


# The reference's values of the fields whose TrainConfig() default keeps focus-jax's
# earlier behaviour (a checkpoint written before a field existed reads as its default).
# EM cycle: S4 trains the UNet while ct % 30000 <= 5000 (5001 steps), then the encoder.
PAPER_CHANGES = dict(em_lr_schedule="reference", adapt_continue=True, em_mask_gradient=True,
                     identity_inputs="reference", identity_render_landmarks="predicted",
                     em_unet_steps=5001, em_encoder_steps=24999,
                     augment=True, bfm_origin="reference")


def paper(**changes) -> TrainConfig:
  """The reference configuration (DESIGN.md §1, docs/FIDELITY.md): 224², ResNet-50,
  UNet 64, batch 12, :data:`PAPER_CHANGES`."""
  return TrainConfig().replace(**{**PAPER_CHANGES, **changes})


def tiny(**changes) -> TrainConfig:
  """A CPU configuration: 64², ResNet-18 width 8 (2 stages), UNet width 8 depth 3
  (width 4 does not learn the pseudo masks in 100 steps; see benchmarks/results/train.md),
  built-in model at resolution 37 with 20/10/20 components, no identity net, batch 4,
  Adam (lr 2e-3: Adadelta at lr 0.1 barely moves in a few dozen steps), EM cycles of 3 UNet
  + 5 encoder steps.

  EM UNet weights area 1.0 / binary 2.0 (reference 0.5 / 10): the tiny fits leave most
  skin pixels above 1.5σ, so the pre-trained UNet labels most of the face outlier, and
  the binary term (per face pixel ~9× the area term at weight 10) then drives every
  pixel to the majority class through the output bias: the mask collapses to all
  outlier within 20 steps. With area 1.0 a face pixel's break-even residual for the
  neighbour term (15) is about the robust likelihood's 3σ, and binary 2.0 no longer
  outweighs area in the bias direction. EM fine-tunes the encoder at lr 5e-4: at 2e-3 the
  encoder's fits (3D error, robust-likelihood masks) get worse than stage 1's
  (benchmarks/results/train.md).

  The encoder's translation outputs are in units of 10 mm (x/y) and 50 mm (z) rather
  than the reference's 1 and 0.005 mm (``translation_scale``, ``depth_scale``): at
  the reference scales the head cannot learn the face's position and distance in a
  few hundred Adam steps, and the shape coefficients absorb the misplacement. The
  coefficient regularisation is 3.0 (reference 0.1): with 20 shape components
  regressed from 64² crops, the weak prior lets shape and expression fit pose and
  landmark errors, which makes the 3D error worse than the mean face's (per-image
  fits of the stage-1 objective: 3.3 mm at 0.1, 2.5 mm at 3.0, mean face 2.74 mm;
  benchmarks/results/train.md).

  The trained tiny encoder does not predict identity shape better than the mean face, on
  its training faces either, and no weight setting fixes that (issue 7): most of the
  objective's shape signal is in the landmark term (per-image fits: -0.23 mm of the -0.37
  mm with landmarks alone, -0.05 mm with the photometric term alone), the identity moves a
  landmark by ~0.7 px at 64², and the encoder's own landmark error is ~1.5 px (median), so
  its shape outputs absorb pose error instead (correlation with the true coefficients
  ~0.02). Even supervised on the true coefficients, this encoder on 3200 faces reaches a
  shape R² of ~0 on held-out faces."""
  base = TrainConfig(
      image_size=64, model_resolution=37, num_shape=20, num_expression=10, num_albedo=20,
      encoder_depth=18, encoder_width=8, encoder_stages=(1, 1), translation_scale=10.0,
      depth_scale=50.0, unet_width=8, unet_depth=3,
      antialias=False, identity="none", batch_size=4, optimizer="adam", encoder_lr=2e-3,
      unet_lr=2e-3, em_encoder_lr=5e-4, lr_decay_steps=50, w_reg=3.0, w_area=1.0,
      w_binary=2.0,
      em_unet_steps=3, em_encoder_steps=5,
      num_steps=20, pretrain_num_steps=40, unet_num_steps=30, em_num_steps=40,
      adapt_num_steps=16, log_every=1, image_every=10, checkpoint_every=10, keep_checkpoints=3,
      max_bad_steps=5, num_threads=2)
  return base.replace(**changes)
