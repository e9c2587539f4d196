"""Differentiable rendering: camera, shading, rasterization."""
