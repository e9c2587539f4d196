"""Configuration of the robust fit: :class:`FitConfig` and its four groups.

``FitConfig`` is a jit static argument, so it and its groups are frozen,
hashable dataclasses (every field a number, string, bool or tuple).

The flat names of the former single-level config (``rounds``, ``sigma``,
``light_ridge``, ...; :data:`FLAT_NAMES`) still work as keyword arguments of
``FitConfig(...)`` and :func:`dataclasses.replace`, and as attributes
(``config.sigma`` is ``config.estep.sigma``); code in this package reads the
groups.
"""

from __future__ import annotations

import dataclasses

from focus_jax import losses as losses_lib


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The EM schedule.

  Attributes:
    rounds: EM rounds; each is one E-step followed by ``steps`` M-step iterations,
      so the fit runs ``rounds * steps`` optimiser iterations.
    steps: M-step (Adam) iterations per round.
    sigma_schedule: σ multipliers of the E-steps, per round (the last value
      repeats): tolerant first, while the fit is still poor.
    albedo_start_round: the albedo is optimised from this round on (before, it
      stays at the mean so that it cannot absorb occluders).
    estep_downsample: intermediate E-steps run at 1/k resolution (the last one at
      full resolution).
  """
  rounds: int = 5
  steps: int = 40
  sigma_schedule: tuple = (2.0, 1.5, 1.0)
  albedo_start_round: int = 1
  estep_downsample: int = 1

  @property
  def iterations(self) -> int:
    return self.rounds * self.steps


@dataclasses.dataclass(frozen=True)
class EStep:
  """The robust likelihood and the E-step's inlier estimate.

  Attributes:
    sigma: foreground σ on [0, 1] RGB (reference 0.043); also the M-step's
      photometric σ.
    outlier_sigmas: the uniform outlier likelihood equals the Gaussian at this many σ.
    prior_inlier: prior probability that a face pixel is an inlier.
    neighbour_window: side of the shift window of the neighbour tolerance (odd,
      1 = none; the reference's UNet loss uses 5).
    smoothing_iterations, smoothing_strength: mean-field iterations and the
      coupling (log-odds per agreeing 3x3 neighbour average) of spatial coherence.
    smoothing_edge_sigma: contrast-sensitive spatial coherence: each neighbour's
      coupling is ``exp(−‖ΔI‖² / (2s²))`` of the image colour difference
      (:func:`~focus_jax.fitting.inliers.edge_weights`); 0 = uniform 3x3 coupling.
    visibility_tolerance: a vertex is visible when it lies at most this far
      (mm) behind the rendered depth at its pixel.
    outlier_model: the E-step's outlier density. ``'colour'`` (default): the
      uniform density times a per-image colour density of the pixels currently
      labelled outlier (a smoothed RGB histogram weighted by 1 − q, re-estimated
      ``colour_iterations`` times in every E-step; Egger et al. 2018,
      "Occlusion-aware 3D morphable models", model the non-face class by image
      colour histograms). An occluder is usually one or a few colours: pixels of
      those colours then need a smaller residual to count as outliers (e.g. the
      part of a hand the albedo has half absorbed), skin of other colours a
      larger one. ``'uniform'``: the FOCUS reference's constant outlier
      likelihood. The default is ``'colour'`` because on the synthetic occlusion
      benchmark (benchmarks/results/fit.md) it raises the inlier-mask F1 and the
      occluder IoU well beyond the uniform density's, at about the same speed.
    colour_bins: histogram cells per RGB channel.
    colour_prior_mass: uniform pseudo-count of the histogram, as a fraction of the
      face pixels: with few outliers (an unoccluded face) the density stays near
      uniform instead of fitting a few hard-to-fit pixels.
    colour_iterations: histogram re-estimations per E-step.
    colour_weight: multiplier of the log colour density.
    face_colour_weight: weight of the inliers' own colour density in the log-odds
      (0 = off; measured worse: skin-toned occluders then look like face).
    colour_prior_power: the colour term is divided by the misfit prior's σ
      multiplier to this power, so that regions of unmodelled appearance (brows,
      lips), whose dark colours occluders often share, are not called outliers
      by colour alone (without it, false outliers on brows and lips tripled).
    inlier_prior_weight: multiplier of the log-odds of a given per-pixel inlier
      prior (``fit(..., inlier_prior=...)``, e.g. the real-face segmenter's
      probability); unused without one. 4 was chosen on validation people of the
      semi-real benchmark's tune half (1 / 2 / 4: inlier F1 0.920 / 0.925 / 0.926,
      unoccluded false-outlier share 7.6 / 6.5 / 5.8 %; benchmarks/results/real.md).
    contour_margin: the returned inlier mask extends up to this many pixels
      outside the rendered silhouette where the image matches the adjacent render
      (:func:`~focus_jax.fitting.inliers.extend_inliers`; the fitted outline is
      often a pixel off); 0 = only inside the render.
  """
  sigma: float = losses_lib.SIGMA
  outlier_sigmas: float = losses_lib.OUTLIER_SIGMAS
  prior_inlier: float = 0.5
  neighbour_window: int = 3
  smoothing_iterations: int = 4
  smoothing_strength: float = 4.0
  smoothing_edge_sigma: float = 0.1
  visibility_tolerance: float = 4.0
  outlier_model: str = "colour"
  colour_bins: int = 8
  colour_prior_mass: float = 0.05
  colour_iterations: int = 2
  colour_weight: float = 1.0
  face_colour_weight: float = 0.0
  colour_prior_power: float = 2.0
  contour_margin: int = 2
  inlier_prior_weight: float = 4.0


@dataclasses.dataclass(frozen=True)
class Light:
  """The closed-form light (:func:`~focus_jax.fitting.light.solve_light`).

  Attributes:
    ridge: ridge (towards the ambient default) of the closed-form light.
    iterations: IRLS iterations (Cauchy weights) of the robust closed-form
      light; non-robust fits use plain least squares.
    warm_start: robust light solves start their IRLS from the current light (the
      ambient default before the first round) instead of an unweighted
      least-squares solve.
    initial_tint_ridge: guard against the *label swap*. The first closed-form
      light (before the first E-step: all visible vertices count, nothing is
      known about occluders yet) shrinks its RGB tint towards white, i.e. the
      face colour towards the model's mean skin colour, by
      ``t ← (t + λ) / (1 + λ)``. Without it a large bright occluder (a white mask
      over the lower half of the face) drags that first light to a grey-white
      tint; the first E-step then takes the mask for the face and the skin for
      the outlier, and EM never leaves that state (inlier F1 ≈ 0.03 on 3 of the
      100 benchmark faces). Later light solves are free, so a real colour cast is
      recovered from round 0's inliers (a tint ridge on every solve measured no
      better). 1 = halfway; 0 = off.
  """
  ridge: float = 1e-3
  iterations: int = 6
  warm_start: bool = True
  initial_tint_ridge: float = 1.0


@dataclasses.dataclass(frozen=True)
class Optimiser:
  """The M-step: Adam on the vertex-sampled objective.

  Attributes:
    lr_*: Adam learning rates per parameter group (units: coefficient std, rad, mm,
      SH coefficient).
    photometric_weight: weight of the mean per-vertex Gaussian NLL
      ``‖c − I(u)‖² / (2σ_v²)`` over inlier vertices.
    landmark_weight: weight of :func:`~focus_jax.losses.landmark_loss` (pixels,
      rescaled to a 224-pixel image).
    landmark_heavy: the reference's weight on nose ridge and inner-mouth points.
    shape_reg, expression_reg, albedo_reg: weights of ``½ Σ c²`` per group.
    max_vertices: the M-step compares colours at about this many vertices (every
      k-th vertex plus the landmark vertices); 0 = all.
    dynamic_gate: robust M-steps also drop vertices whose current residual
      exceeds the outlier threshold (the reference's robust loss).
  """
  lr_shape: float = 0.05
  lr_expression: float = 0.05
  lr_albedo: float = 0.05
  lr_angles: float = 0.004
  lr_translation: float = 1.0
  lr_light: float = 0.02
  photometric_weight: float = 1.0
  landmark_weight: float = 0.02
  landmark_heavy: float = 20.0
  shape_reg: float = 2e-3
  expression_reg: float = 2e-3
  albedo_reg: float = 2e-3
  max_vertices: int = 2000
  dynamic_gate: bool = True


_GROUPS = (("schedule", Schedule), ("estep", EStep), ("light", Light),
           ("optimiser", Optimiser))
# Flat name of the former single-level FitConfig -> (group, field).
FLAT_NAMES = {
    **{f.name: ("schedule", f.name) for f in dataclasses.fields(Schedule)},
    **{f.name: ("estep", f.name) for f in dataclasses.fields(EStep)},
    **{f.name: ("optimiser", f.name) for f in dataclasses.fields(Optimiser)},
    "light_ridge": ("light", "ridge"), "light_iterations": ("light", "iterations"),
    "light_warm_start": ("light", "warm_start"),
    "initial_tint_ridge": ("light", "initial_tint_ridge"),
}


@dataclasses.dataclass(frozen=True, init=False)
class FitConfig:
  """Static configuration of :func:`~focus_jax.fitting.fit` (hashable: a jit
  static argument).

  Attributes:
    schedule: :class:`Schedule` (rounds, steps, σ annealing).
    estep: :class:`EStep` (robust likelihood, inlier posterior).
    light: :class:`Light` (closed-form light).
    optimiser: :class:`Optimiser` (M-step).
    robust: estimate the inlier mask (EM). False: every visible vertex is an inlier
      (the non-robust baseline); the returned inlier mask is then the face mask.
    use_prior: apply the misfit prior when one is passed to ``fit``.

  ``FitConfig(rounds=3, robust=False)``: flat keywords (:data:`FLAT_NAMES`) set
  fields of the groups, after the groups given.

  Raises:
    TypeError: an unknown keyword.
  """
  schedule: Schedule
  estep: EStep
  light: Light
  optimiser: Optimiser
  robust: bool
  use_prior: bool

  def __init__(self, schedule: Schedule = Schedule(), estep: EStep = EStep(),
               light: Light = Light(), optimiser: Optimiser = Optimiser(),
               robust: bool = True, use_prior: bool = True, **flat):
    groups = dict(schedule=schedule, estep=estep, light=light, optimiser=optimiser)
    for name, kind in _GROUPS:
      if not isinstance(groups[name], kind):
        raise TypeError(f"FitConfig: {name} must be a {kind.__name__}, got "
                        f"{type(groups[name]).__name__}")
    unknown = sorted(set(flat) - set(FLAT_NAMES))
    if unknown:
      raise TypeError(f"FitConfig: unknown field(s) {unknown}")
    for group in groups:
      changes = {FLAT_NAMES[k][1]: v for k, v in flat.items() if FLAT_NAMES[k][0] == group}
      if changes:
        groups[group] = dataclasses.replace(groups[group], **changes)
    for name, value in dict(groups, robust=robust, use_prior=use_prior).items():
      object.__setattr__(self, name, value)

  def __getattr__(self, name):
    # Only called when normal lookup fails: the flat aliases.
    if name in FLAT_NAMES:
      group, field = FLAT_NAMES[name]
      return getattr(object.__getattribute__(self, group), field)
    raise AttributeError(f"FitConfig has no field {name!r}")

  @property
  def iterations(self) -> int:
    """Optimiser iterations of the whole fit (``rounds * steps``)."""
    return self.schedule.iterations

  def reference_e_step(self) -> "FitConfig":
    """This config with the FOCUS reference's E-step: uniform outlier density,
    uniform spatial coupling, inlier mask inside the render only."""
    return dataclasses.replace(self, estep=dataclasses.replace(
        self.estep, outlier_model="uniform", smoothing_edge_sigma=0.0, contour_margin=0))
