"""The CPU backend of the renderer: C++ kernels called through XLA's FFI.

They are C++ versions of the operations that XLA:CPU runs slowest (serial
generic gathers and scatters) in :mod:`focus_jax.render`: the z-buffer
visibility pass, the interpolation of vertex attributes (forward and
backward), the search for the pixel pairs that antialiasing blends, the
area-weighted vertex normals (forward and backward), the whole per-vertex stage
of ``render`` (camera transform, normals, SH shading; forward and backward),
and SoftRas aggregation (forward and a hand-written backward from the vertices
to the image). They compute the same float32 formulas as the pure-JAX code
(see :func:`calls.soft_rasterize` for where soft aggregation rounds
differently), through :func:`jax.ffi.ffi_call`, which works under ``jit``,
``vmap``, ``grad`` and ``pmap``. On GPU and TPU, and wherever the kernels are
unavailable, the pure-JAX code runs.

Layout, one backend per op as in nvdiffrast:

* C++: one file per op (rasterize.cc, interpolate.cc, antialias.cc,
  vertex.cc, and soft_forward.cc / soft_backward.cc over soft.h), the shared
  common.h, and bindings.cc, which registers the entry points as FFI handlers.
* library.py: builds and loads the library; :func:`available`,
  :func:`resolve` (what ``native=`` means).
* calls.py: one ``ffi_call`` per entry point (re-exported here).
* raster_ops.py, vertex_ops.py: the kernels wired into JAX autodiff; the
  public ops (rasterize.py, shading.vertex_normals, render.vertex_stage)
  dispatch to them.

The library is compiled on first use with the system C++ compiler (``$CXX`` or
``c++``; the files in parallel, then linked) against the XLA FFI headers that
ship with jaxlib, and cached under ``$FOCUS_JAX_CACHE``
(default ``~/.cache/focus_jax``) keyed by all the sources, the jax version and
the flags. No compiler, or a failed build, logs one warning and falls back to
pure JAX. ``FOCUS_JAX_NATIVE=0`` turns the kernels off (the pure-JAX path then
runs everywhere). The library is portable (no -march flags); the soft
transpose also has AVX code, chosen at run time where the CPU has AVX
(``FOCUS_JAX_AVX=0`` keeps it on the portable code).

The pure-JAX path on XLA:CPU
----------------------------

Where the kernels are off, the pure-JAX code runs on the CPU too, and its
layout was chosen for XLA:CPU, which runs gathers and scatters serially:

* A batch is processed as one flat problem (B * F triangles into B * H * W
  pixels, vertex rows ``b * V + v``; visibility.rasterize_batch, soft.py)
  rather than with ``vmap``, whose batched gathers and scatters XLA:CPU
  compiles to much slower code.
* Per-triangle and per-pixel math is written on separate [N] components (x, y,
  z of each vertex; geometry.edges_soa, geometry.screen_bounds,
  visibility._fragments) instead of trailing axes of size 3, which XLA:CPU
  does not vectorise; the triangle set-up returns a tuple of [F] arrays rather
  than one [F, 13] array, which XLA would fuse into the stacking once per
  column.
* Vertices are gathered one scalar gather per coordinate and vertex with flat
  indices (geometry.vertex_coordinates, antialiasing._antialias_pairs): XLA:CPU
  runs those fastest, and their transposes are cheap scalar scatter-adds,
  unlike slices of a gathered [K, 3, 3] block. Vertex-major rows of B x 3
  values (antialiasing._silhouette_bits, shading.vertex_normals) make row
  gathers, which are fast.
* interpolation.py divides by the summed edge functions instead of multiplying
  by their inverse: XLA:CPU does not duplicate divisions into their consumers,
  so the barycentrics (and the backward pass's edge gradients) are computed
  once instead of inside every channel's and every scatter's fusion; it works
  channel by channel on [B, H, W] arrays, which XLA:CPU handles much better
  than [..., C] blocks with a small minor dimension; and its backward pass is
  hand-written (left to autodiff, XLA:CPU fuses the whole edge-function chain
  into a dozen serial scatter loops, ~10x slower).
* antialiasing.py differentiates only a compact list of the pixel pairs near
  silhouette edges.
* soft._soft_aggregate rematerialises the fragment values in the backward pass:
  XLA:CPU is bound by memory traffic there.
"""

from focus_jax.render.cpu_kernels.calls import (interpolate, interpolate_grad, rasterize,
                                                silhouette_pairs, soft_rasterize,
                                                soft_rasterize_grad, vertex_normals,
                                                vertex_normals_grad, vertex_stage,
                                                vertex_stage_grad)
# _state: whether the library loaded, and why not (tests report it).
from focus_jax.render.cpu_kernels.library import (_state, available, require, resolve,
                                                  use_for_default_backend)

__all__ = ["available", "interpolate", "interpolate_grad", "rasterize", "require", "resolve",
           "silhouette_pairs", "soft_rasterize", "soft_rasterize_grad",
           "use_for_default_backend", "vertex_normals", "vertex_normals_grad", "vertex_stage",
           "vertex_stage_grad"]
