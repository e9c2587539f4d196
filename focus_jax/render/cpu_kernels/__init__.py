"""Native CPU kernels for the rendering paths (XLA FFI custom calls).

The C++ files of this folder (one ``.cc`` per op, the shared ``common.h`` and
``bindings.cc``, which registers the entry points) hold C++ versions of the operations that XLA:CPU runs
slowest (serial generic gathers and scatters) in :mod:`focus_jax.render`: the
z-buffer visibility pass, the interpolation of vertex attributes (forward and
backward), the search for the pixel pairs that antialiasing blends, the
area-weighted vertex normals (forward and backward), the whole per-vertex
stage of ``render`` (camera transform, normals, SH shading; forward and
backward), and SoftRas aggregation
(``soft_rasterize``, forward and a hand-written backward from the vertices to
the image). They compute the same float32 formulas as the pure-JAX code (see
:func:`soft_rasterize` for where soft aggregation rounds differently). On the
CPU backend the rasterizer calls them through :func:`jax.ffi.ffi_call`, which
works under ``jit``, ``vmap``, ``grad`` (through the same ``custom_vjp`` as the
JAX path, or a hand-written one) and ``pmap``; on GPU and TPU, and wherever the
kernels are unavailable, the pure-JAX code runs.

The library is compiled on first use with the system C++ compiler (``$CXX`` or
``c++``; a few seconds) against the XLA FFI headers that ship with jaxlib, and
cached under ``$FOCUS_JAX_CACHE`` (default ``~/.cache/focus_jax``) keyed by all
the sources, the jax version and the flags. No compiler, or a failed build, logs
one warning and falls back to pure JAX. ``FOCUS_JAX_NATIVE=0`` turns the
kernels off (the pure-JAX path then runs everywhere). The library is portable
(no -march flags); the soft transpose also has AVX code, chosen at run time
where the CPU has AVX (``FOCUS_JAX_AVX=0`` keeps it on the portable code).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

_DIR = pathlib.Path(__file__).parent
_COMPILE_FLAGS = ("-O3", "-std=c++17", "-fPIC",
                  # No fused multiply-adds: the kernels then round like the JAX code.
                  "-ffp-contract=off", "-pthread")
_LINK_FLAGS = ("-shared", "-pthread")
# FFI target name -> exported handler symbol in the library.
_TARGETS = {"focus_rasterize": "FocusRasterize", "focus_rasterize_depth": "FocusRasterizeDepth",
            "focus_interpolate": "FocusInterpolate",
            "focus_interpolate_grad": "FocusInterpolateGrad",
            "focus_silhouette_pairs": "FocusSilhouettePairs",
            "focus_vertex_normals": "FocusVertexNormals",
            "focus_vertex_normals_grad": "FocusVertexNormalsGrad",
            "focus_vertex_stage": "FocusVertexStage",
            "focus_vertex_stage_grad": "FocusVertexStageGrad",
            "focus_soft_rasterize": "FocusSoftRasterize",
            "focus_soft_rasterize_grad": "FocusSoftRasterizeGrad"}

_lock = threading.Lock()
_state = {"loaded": None, "error": None}


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("FOCUS_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "focus_jax")
  return pathlib.Path(root) / "cpu_kernels"


def _sources() -> list:
  """The C++ files of the library: every .cc (one per op, and bindings.cc) and
  the headers they share."""
  return sorted(_DIR.glob("*.cc")) + sorted(_DIR.glob("*.h"))


def _library_path(compiler: str) -> pathlib.Path:
  key = hashlib.sha256()
  for source in _sources():
    key.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
  key.update(jax.__version__.encode())
  key.update(" ".join((compiler,) + _COMPILE_FLAGS + _LINK_FLAGS).encode())
  return _cache_dir() / f"focus_cpu_kernels_{key.hexdigest()[:16]}.so"


def _run(cmd) -> None:
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[:2000]}")


def _build(compiler: str, target: pathlib.Path) -> None:
  """Compiles the .cc files (in parallel) and links them into ``target``
  atomically (a temporary file, then a rename, so concurrent processes never
  load a half-written library)."""
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    sources = [s for s in _sources() if s.suffix == ".cc"]
    objects = [os.path.join(tmp, s.stem + ".o") for s in sources]
    compile_one = lambda src, obj: _run([compiler, *_COMPILE_FLAGS, "-w", "-I",
                                         jax.ffi.include_dir(), "-c", str(src), "-o", obj])
    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
      for done in [pool.submit(compile_one, s, o) for s, o in zip(sources, objects)]:
        done.result()
    library = os.path.join(tmp, target.name)
    _run([compiler, *_LINK_FLAGS, *objects, "-o", library])
    os.replace(library, target)


def _load() -> bool:
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if compiler is None:
    raise RuntimeError("no C++ compiler found (set $CXX)")
  path = _library_path(compiler)
  if not path.exists():
    logging.info("focus_jax: compiling the CPU rasterizer kernels into %s", path)
    _build(compiler, path)
  lib = ctypes.cdll.LoadLibrary(str(path))
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform="cpu")
  return True


def available() -> bool:
  """True when the kernels are enabled and loaded (compiling them if needed)."""
  if os.environ.get("FOCUS_JAX_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
    return False
  with _lock:
    if _state["loaded"] is None:
      try:
        _state["loaded"] = _load()
      except Exception as err:  # pylint: disable=broad-except
        _state["loaded"] = False
        _state["error"] = err
        logging.warning("focus_jax: native CPU kernels unavailable, using the pure-JAX "
                        "rasterizer (slower on CPU): %s", err)
    return _state["loaded"]


def require() -> None:
  """Raises if the kernels were asked for explicitly but cannot be used."""
  if not available():
    raise RuntimeError("native=True, but the CPU kernels are unavailable: "
                       f"{_state['error'] or 'FOCUS_JAX_NATIVE is off'}")


def use_for_default_backend() -> bool:
  """Whether traced code should call the kernels: the computation is being
  staged for the CPU backend (the default one) and the kernels are available."""
  return jax.default_backend() == "cpu" and available()


def resolve(native, *arrays) -> bool:
  """A ``native`` argument of the renderer's functions -> whether to call the
  kernels: None -> when :func:`use_for_default_backend` and all ``arrays`` are
  float32 (the kernels compute in float32); True -> checked to be usable."""
  if native is None:
    return all(jnp.result_type(a) == jnp.float32 for a in arrays) and use_for_default_backend()
  if native:
    require()
  return bool(native)


def rasterize(points, triangles, intrinsics, near: float, cull_backfaces: bool,
              barycentrics: bool = True):
  """Z-buffer visibility of a batch (the kernel behind ``rasterize.rasterize``).

  Args:
    points: [B, V, 3] float32 camera-space vertices (mm), no gradient.
    triangles: [F, 3] int32 vertex indices, shared by the batch.
    intrinsics: :class:`~focus_jax.render.camera.Intrinsics` (static).
    near: near-plane depth (mm).
    cull_backfaces: drop triangles seen from the back.
    barycentrics: also compute the barycentrics (static); False returns None
      for them and skips their per-pixel work and memory.

  Returns:
    (triangle_id [B, H, W] int32, -1 on background; barycentric [B, H, W, 3]
    float32 or None; depth [B, H, W] float32 in mm; fragments [B] int32, the
    summed clipped bounding-box areas of the drawn triangles). Zeros on
    background.
  """
  batch = points.shape[0]
  shape = (batch, intrinsics.height, intrinsics.width)
  ids, depth = jax.ShapeDtypeStruct(shape, jnp.int32), jax.ShapeDtypeStruct(shape, jnp.float32)
  count = jax.ShapeDtypeStruct((batch,), jnp.int32)
  args = (points.astype(jnp.float32), triangles.astype(jnp.int32))
  attrs = dict(near=np.float32(near), cull=np.int32(cull_backfaces), **_camera(intrinsics))
  if not barycentrics:
    call = jax.ffi.ffi_call("focus_rasterize_depth", (ids, depth, count),
                            vmap_method="broadcast_all")
    tid, depth, num_fragments = call(*args, **attrs)
    return tid, None, depth, num_fragments
  call = jax.ffi.ffi_call(
      "focus_rasterize", (ids, jax.ShapeDtypeStruct(shape + (3,), jnp.float32), depth, count),
      vmap_method="broadcast_all")
  return call(*args, **attrs)


def interpolate(attributes, points, triangle_id, triangles, intrinsics):
  """Attributes at every pixel (the forward kernel of ``rasterize.interpolate``).

  Args:
    attributes: [B, V, C] float32; points: [B, V, 3] float32 camera-space
      vertices (mm); triangle_id: [B, H, W] int32 (-1 = background);
      triangles: [F, 3] int32.

  Returns:
    [B, H, W, C] float32, 0 on background.
  """
  shape = triangle_id.shape + attributes.shape[-1:]
  call = jax.ffi.ffi_call("focus_interpolate", jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method="broadcast_all")
  return call(attributes.astype(jnp.float32), points.astype(jnp.float32), triangle_id,
              triangles.astype(jnp.int32), **_camera(intrinsics))


def interpolate_grad(attributes, points, triangle_id, triangles, intrinsics, cotangent):
  """The transpose of :func:`interpolate` w.r.t. attributes and points.

  Returns:
    (d_attributes [B, V, C], d_points [B, V, 3]) float32.
  """
  call = jax.ffi.ffi_call(
      "focus_interpolate_grad",
      (jax.ShapeDtypeStruct(attributes.shape, jnp.float32),
       jax.ShapeDtypeStruct(points.shape, jnp.float32)),
      vmap_method="broadcast_all")
  return call(attributes.astype(jnp.float32), points.astype(jnp.float32), triangle_id,
              triangles.astype(jnp.int32), cotangent.astype(jnp.float32), **_camera(intrinsics))


def silhouette_pairs(points, triangle_id, depth, triangles, neighbours, intrinsics,
                     capacity=None):
  """The adjacent pixel pairs that straddle a silhouette edge (the discrete half
  of ``rasterize.antialias``; the blending is ``rasterize._blend_pairs``).

  Args:
    points: [B, V, 3] float32 camera-space vertices (mm), no gradient;
      triangle_id, depth: [B, H, W] from ``rasterize``; triangles, neighbours:
      [F, 3] int32 (see ``rasterize.edge_neighbours``).
    capacity: rows of the pair list (static); None: all adjacent pairs,
      B (H (W - 1) + (H - 1) W), which always suffices.

  Returns:
    (pairs [capacity, 3] int32, count [1] int32, the number of pairs found,
    which may exceed the capacity: only the first ``capacity`` are kept). The
    first ``min(count, capacity)`` rows are (flat index over [B, H, W] of the
    left / top pixel; flags: bit 0 vertical pair, bit 1 that pixel is in
    front, bits 2-3 the edge of the triangle crossed; the triangle); the other
    rows are padding with pixel B H W.
  """
  if capacity is None:
    batch, height, width = triangle_id.shape
    capacity = batch * (height * (width - 1) + (height - 1) * width)
  call = jax.ffi.ffi_call(
      "focus_silhouette_pairs",
      (jax.ShapeDtypeStruct((capacity, 3), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.int32)),
      vmap_method="broadcast_all")
  return call(points.astype(jnp.float32), triangle_id, depth.astype(jnp.float32),
              triangles.astype(jnp.int32), neighbours.astype(jnp.int32), **_camera(intrinsics))


def vertex_normals(verts, triangles, eps: float):
  """Area-weighted unit vertex normals (the kernel behind
  ``shading.vertex_normals``): [..., V, 3] float32 -> [..., V, 3]."""
  call = jax.ffi.ffi_call("focus_vertex_normals",
                          jax.ShapeDtypeStruct(verts.shape, jnp.float32),
                          vmap_method="broadcast_all")
  return call(verts.astype(jnp.float32), triangles.astype(jnp.int32), eps=np.float32(eps))


def vertex_normals_grad(verts, triangles, eps: float, cotangent):
  """The transpose of :func:`vertex_normals` w.r.t. ``verts``."""
  call = jax.ffi.ffi_call("focus_vertex_normals_grad",
                          jax.ShapeDtypeStruct(verts.shape, jnp.float32),
                          vmap_method="broadcast_all")
  return call(verts.astype(jnp.float32), triangles.astype(jnp.int32),
              cotangent.astype(jnp.float32), eps=np.float32(eps))


def vertex_stage(verts, triangles, albedo, rotation, translation, light, eps: float):
  """The per-vertex stage of ``render.render`` (the kernel behind
  ``render.vertex_stage``).

  Args:
    verts, albedo: [..., V, 3] float32 model-space vertices (mm) and albedo;
      triangles: [F, 3] int32; rotation: [..., 3, 3] model-to-camera rotation;
      translation: [..., 3] camera-space position of the model origin (mm);
      light: [..., 9, 3] SH light; eps: as ``shading.vertex_normals``.

  Returns:
    (camera-space vertices, camera-space unit vertex normals, shaded colours,
    summed face normals in model space: the residual of
    :func:`vertex_stage_grad`), each [..., V, 3] float32.
  """
  f32 = jax.ShapeDtypeStruct(verts.shape, jnp.float32)
  call = jax.ffi.ffi_call("focus_vertex_stage", (f32, f32, f32, f32),
                          vmap_method="broadcast_all")
  return call(verts.astype(jnp.float32), triangles.astype(jnp.int32),
              albedo.astype(jnp.float32), rotation.astype(jnp.float32),
              translation.astype(jnp.float32), light.astype(jnp.float32), eps=np.float32(eps))


def vertex_stage_grad(verts, triangles, albedo, rotation, translation, light, summed, g_cam,
                      g_normals, g_colors, eps: float):
  """The transpose of :func:`vertex_stage` w.r.t. verts, albedo, rotation,
  translation and light, given its ``summed`` residual and the cotangents of
  its first three results.

  Returns:
    (d_verts, d_albedo, d_rotation, d_translation, d_light) float32, shaped as
    those inputs.
  """
  f32 = lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32)
  call = jax.ffi.ffi_call(
      "focus_vertex_stage_grad",
      (f32(verts), f32(albedo), f32(rotation), f32(translation), f32(light)),
      vmap_method="broadcast_all")
  return call(verts.astype(jnp.float32), triangles.astype(jnp.int32),
              albedo.astype(jnp.float32), rotation.astype(jnp.float32),
              translation.astype(jnp.float32), light.astype(jnp.float32), summed,
              g_cam.astype(jnp.float32), g_normals.astype(jnp.float32),
              g_colors.astype(jnp.float32), eps=np.float32(eps))


def _soft_attributes(intrinsics, near, cull_backfaces, eps, depth_range, cutoff):
  """Static attributes of the soft kernels: the constants of
  ``rasterize._soft_fragments`` and ``_soft_aggregate``, rounded to float32 as
  JAX rounds them (Python-float arithmetic first, then float32)."""
  zn, zf = depth_range
  return dict(near=np.float32(near), cull=np.int32(cull_backfaces), eps=np.float32(eps),
              zf=np.float32(zf), zden=np.float32(zf - zn), cutoff=np.float32(cutoff),
              keep_den=np.float32(1.0 - cutoff), **_camera(intrinsics))


def soft_rasterize(points, attributes, background, triangles, params, intrinsics, *, near,
                   cull_backfaces, eps, depth_range, cutoff):
  """SoftRas aggregation of a batch (the kernel behind ``rasterize.soft_rasterize``).

  Args:
    points: [B, V, 3] float32 camera-space vertices (mm); attributes: [B, V, C]
      float32; background: [B, H, W, C] float32; triangles: [F, 3] int32.
    params: [3] float32 (sigma px², gamma, radius px: the box margin), which
      may be traced values.
    near, cull_backfaces, eps, depth_range, cutoff: as ``soft_rasterize``
      (static).

  Returns:
    (image [B, H, W, C], alpha [B, H, W], and the residuals of
    :func:`soft_rasterize_grad`: zmax, total, miss [B, H, W] float32 and the
    per-triangle set-up [B, F + 1, 16] int32, the drawn triangles' projected
    vertices and pixel boxes ordered by first row, so that the backward pass
    does not redo it).

  Same formulas as ``rasterize._soft_triangles`` / ``_soft_fragments`` /
  ``_soft_aggregate``, fragment by fragment over each triangle's padded
  bounding box (no fragment budget), several fragments at a time (SIMD lanes,
  same IEEE rounding per lane), with differences in rounding only: exp is a
  polynomial within 1 ulp (not XLA's), as is the sigmoid built on it; the
  per-pixel sums run in another order (triangles sorted by first row) and
  online: each pixel's sums are rescaled by ``exp((m_old - m) / gamma)`` when
  its largest scaled depth m so far grows; the coverage is ``1 - prod(1 - D)``
  (with ``1 - D = (1 - sigmoid) / (1 - cutoff)``) instead of
  ``1 - exp(sum log(1 - D))``; and the backward pass sums each triangle's
  gradient lane by lane. The depth softmax amplifies such rounding by up to
  ``1 / gamma`` (see tests/test_cpu_kernels.py).
  """
  shape = background.shape[:-1]
  f32 = lambda s: jax.ShapeDtypeStruct(s, jnp.float32)
  boxes = jax.ShapeDtypeStruct(points.shape[:-2] + (triangles.shape[-2] + 1, 16), jnp.int32)
  call = jax.ffi.ffi_call("focus_soft_rasterize",
                          (f32(background.shape), f32(shape), f32(shape), f32(shape),
                           f32(shape), boxes), vmap_method="broadcast_all")
  return call(points.astype(jnp.float32), attributes.astype(jnp.float32),
              background.astype(jnp.float32), triangles.astype(jnp.int32),
              params.astype(jnp.float32),
              **_soft_attributes(intrinsics, near, cull_backfaces, eps, depth_range, cutoff))


def soft_rasterize_grad(points, attributes, triangles, params, residuals, image, g_image,
                        g_alpha, intrinsics, *, near, cull_backfaces, eps, depth_range, cutoff):
  """The transpose of :func:`soft_rasterize` w.r.t. points, attributes and
  background; ``residuals`` = (zmax, total, miss, set-up) of the forward call.

  Returns:
    (d_points [B, V, 3], d_attributes [B, V, C], d_background [B, H, W, C]).
  """
  f32 = lambda s: jax.ShapeDtypeStruct(s, jnp.float32)
  call = jax.ffi.ffi_call("focus_soft_rasterize_grad",
                          (f32(points.shape), f32(attributes.shape), f32(image.shape)),
                          vmap_method="broadcast_all")
  zmax, total, miss, boxes = residuals
  return call(points.astype(jnp.float32), attributes.astype(jnp.float32),
              triangles.astype(jnp.int32), params.astype(jnp.float32), zmax, total, miss, boxes,
              image, g_image.astype(jnp.float32), g_alpha.astype(jnp.float32),
              **_soft_attributes(intrinsics, near, cull_backfaces, eps, depth_range, cutoff))


def _camera(intrinsics):
  return dict(width=np.int32(intrinsics.width), height=np.int32(intrinsics.height),
              focal=np.float32(intrinsics.focal), cx=np.float32(intrinsics.cx),
              cy=np.float32(intrinsics.cy))
