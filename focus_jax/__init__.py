"""focus-jax: occlusion-robust 3D face reconstruction (FOCUS, CVPR 2023) in JAX.

``import focus_jax as fj`` is cheap: the sub-modules (and jax) load on first use,
so ``focus-jax --help`` answers at once. ``fj.fit``, ``fj.FitConfig``,
``fj.FitResult``, ``fj.fit_landmarks``, ``fj.LandmarkFitConfig`` come from :mod:`focus_jax.fitting`.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("errors", "morphable", "fitting", "losses", "prior", "render", "nets", "data",
               "eval", "autoencoder", "train", "app")
_FROM_FITTING = ("FitConfig", "FitResult", "fit", "fit_landmarks", "LandmarkFitConfig")
__all__ = list(_SUBMODULES + _FROM_FITTING)


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"focus_jax.{name}")
  if name in _FROM_FITTING:
    return getattr(importlib.import_module("focus_jax.fitting"), name)
  raise AttributeError(f"module 'focus_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
