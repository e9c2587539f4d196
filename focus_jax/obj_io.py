"""Wavefront OBJ meshes: write (atomically) and read triangle meshes (NumPy).

Only what face meshes need: vertex positions (``v``), optional texture
coordinates (``vt``, one per vertex, so ``f a/a b/b c/c``) and triangular faces.
The reader accepts polygons (fan-triangulated), the ``a``, ``a/b``, ``a//c`` and
``a/b/c`` face forms and negative (relative) indices, and ignores every other
statement (normals, groups, materials), so scans written by other tools load too.
Units are whatever the caller uses (this package writes mm).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from focus_jax.errors import DataError


def format_obj(vertices, triangles, uv=None, header: str = "") -> str:
  """The OBJ text of a triangle mesh.

  Args:
    vertices: [V, 3] positions.
    triangles: [F, 3] 0-based vertex indices.
    uv: optional [V, 2] texture coordinates in [0, 1] (one per vertex).
    header: optional comment lines (without the leading ``#``).
  """
  v = np.asarray(vertices, np.float64)
  f = np.asarray(triangles, np.int64)
  if v.ndim != 2 or v.shape[1] != 3:
    raise ValueError(f"format_obj: vertices must be [V, 3], got {v.shape}")
  if f.ndim != 2 or f.shape[1] != 3:
    raise ValueError(f"format_obj: triangles must be [F, 3], got {f.shape}")
  parts = [f"# {line}\n" for line in header.splitlines()] if header else []
  parts.append("".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in v))
  if uv is not None:
    t = np.asarray(uv, np.float64)
    if t.shape != (len(v), 2):
      raise ValueError(f"format_obj: uv must be [{len(v)}, 2], got {t.shape}")
    parts.append("".join(f"vt {a:.6f} {b:.6f}\n" for a, b in t))
    parts.append("".join(f"f {a}/{a} {b}/{b} {c}/{c}\n" for a, b, c in f + 1))
  else:
    parts.append("".join(f"f {a} {b} {c}\n" for a, b, c in f + 1))
  return "".join(parts)


def write_obj(path: str | os.PathLike, vertices, triangles, uv=None, header: str = "") -> None:
  """Writes a triangle mesh as OBJ (temporary file, then rename). See :func:`format_obj`."""
  path = os.fspath(path)
  text = format_obj(vertices, triangles, uv, header)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _index(token: str, count: int, path: str, line: int) -> int:
  i = int(token.split("/")[0])
  i = i - 1 if i > 0 else count + i
  if not 0 <= i < count:
    raise DataError(f"{path}, line {line}: face index {token!r} out of range "
                    f"({count} vertices so far)")
  return i


def read_obj(path: str | os.PathLike) -> tuple:
  """Reads the vertices and (triangulated) faces of an OBJ file.

  Returns:
    (vertices [V, 3] float64, triangles [F, 3] int64; F may be 0 for a point cloud).

  Raises:
    DataError: the file is missing, unreadable or malformed (naming file and line).
  """
  path = os.fspath(path)
  try:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise DataError(f"mesh file not found: {path}") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read the mesh file ({e})") from e
  verts, faces = [], []
  for number, line in enumerate(lines, 1):
    if line.startswith("v "):
      values = line.split()[1:4]
      try:
        verts.append([float(x) for x in values])
      except ValueError:
        raise DataError(f"{path}, line {number}: bad vertex {line!r}") from None
      if len(values) != 3:
        raise DataError(f"{path}, line {number}: a vertex needs x y z, got {line!r}")
    elif line.startswith("f "):
      try:
        idx = [_index(t, len(verts), path, number) for t in line.split()[1:]]
      except ValueError:
        raise DataError(f"{path}, line {number}: bad face {line!r}") from None
      if len(idx) < 3:
        raise DataError(f"{path}, line {number}: a face needs 3 vertices, got {line!r}")
      faces.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
  if not verts:
    raise DataError(f"{path}: no vertices (not an OBJ mesh?)")
  return (np.asarray(verts, np.float64),
          np.asarray(faces, np.int64).reshape(-1, 3))


def read_obj_uv(path: str | os.PathLike) -> Optional[np.ndarray]:
  """[N, 2] texture coordinates (``vt`` lines) of an OBJ file, or None when it has none."""
  uv = []
  with open(os.fspath(path), "r", encoding="utf-8", errors="replace") as f:
    for line in f:
      if line.startswith("vt "):
        uv.append([float(x) for x in line.split()[1:3]])
  return np.asarray(uv, np.float64) if uv else None
