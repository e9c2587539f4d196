"""Differentiable rendering: camera, shading, rasterization.

``camera``, ``shading`` and ``render`` (model -> image) are pure JAX; ``rasterize``
holds the public rasterizer ops (rasterize, interpolate, antialias,
soft_rasterize), each choosing its backend: the pure-JAX modules (``visibility``,
``interpolation``, ``antialiasing``, ``soft``, over ``geometry``), or the C++
kernels of ``cpu_kernels`` on the CPU backend.
"""
