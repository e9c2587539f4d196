"""focus-jax: occlusion-robust 3D face reconstruction (FOCUS, CVPR 2023) in JAX."""

from focus_jax import errors, morphable

__version__ = "0.1.0"
