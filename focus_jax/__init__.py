"""focus-jax: occlusion-robust 3D face reconstruction (FOCUS, CVPR 2023) in JAX."""

from focus_jax import errors, morphable
from focus_jax import fitting, losses, prior
from focus_jax.fitting import FitConfig, FitResult, fit

__version__ = "0.1.0"
