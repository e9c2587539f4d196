"""Builds, caches and loads the CPU kernels' library, and decides where they run
(see the package docstring)."""

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
