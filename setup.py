"""Installs focus-jax. ``pip install -e .[test]`` gives everything the tests need."""

from setuptools import find_packages, setup

setup(
    name="focus-jax",
    version="0.1.0",
    description=("Occlusion-robust 3D face reconstruction through weakly-supervised outlier "
                 "segmentation (FOCUS, CVPR 2023) in JAX"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["focus_jax", "focus_jax.*"]),
    # The C++ sources of the CPU rasterizer kernels, compiled on first use.
    package_data={"focus_jax.render.cpu_kernels": ["*.cc", "*.h"],
                  # the built-in face's misfit prior measured on real photos
                  "focus_jax": ["priors/*.npz"]},
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax>=0.2",
        "orbax-checkpoint>=0.5",
        "numpy>=1.24",
        "scipy>=1.10",
        "imageio>=2.30",
        "absl-py>=1.4",
        "h5py>=3.8",     # Basel Face Model 2017 files are HDF5.
        "tqdm>=4.60",    # progress bars on long work.
    ],
    extras_require={
        # eos-py: independent reader of the Surrey Face Model .bin files (loader parity
        # tests only). scikit-image: real sample photos for tests and the demo.
        # torch: independent PyTorch networks for the weight-converter parity tests (the
        # package reads .pth files without it). dlib-bin + face-recognition-models: dlib's
        # face-recognition ResNet weights (the default identity network, read without
        # dlib) and dlib's own descriptor as the parity reference.
        "test": ["pytest>=7", "eos-py>=1.4", "scikit-image>=0.21", "torch==2.13.0",
                 "dlib-bin", "face-recognition-models",
                 "hypothesis>=6.100"],  # property-based fuzzing of the file readers
        # Landmark detection (dlib's HOG detector + 68-point predictor) and the weights
        # of the default identity network.
        "detect": ["dlib-bin", "face-recognition-models"],
    },
    entry_points={"console_scripts": ["focus-jax=focus_jax.cli:run"]},
)
