"""The built-in model's identity (shape) space: global face-proportion modes and a
real 3DMM's spectrum.

A real 3DMM concentrates identity in a few large, global modes (face depth against
height, width against height, jaw, nose, ...); small local bumps are invisible at
64-224 px. The built-in shape basis (:mod:`focus_jax.morphable.builtin_face`) is
therefore built in three steps:

1. *Fields*: the named proportion modes of :func:`identity_modes` (smooth, global or
   feature-sized: whole-face anisotropic scalings, lower-face length and protrusion,
   jaw width, midface height, nose projection / length / width, eye spacing and
   depth, brow ridge, cheekbones, mouth width, lip fullness, face roundness, chin,
   three asymmetries) plus small multi-scale Gaussian-process fields for the tail.
2. *Similarity-free*: every field loses its least-squares similarity part
   (translation, infinitesimal rotation, isotropic scale; :func:`remove_similarity`),
   since pose and size are the camera's business and the 3D metrics align them away.
3. *Spectrum*: the PCA directions of those fields keep their order, and their
   standard deviations are set to :func:`target_rms` — the similarity-aligned spectrum
   of the Surrey Face Model: component k moves the vertices by ``target_rms(k)`` mm rms.

Provenance of :data:`SFM_ALIGNED_RMS_MM` and the tail: the Surrey Face Model
``sfm_shape_3448.bin`` (eos library, 3448 vertices, 63 components, mm): each std-scaled
component minus its least-squares similarity part over the 3448 vertices, then the PCA
of those 63 residual fields; rms over vertices of the resulting components. The first
eight are kept; 9-63 follow ``5.421 * k**-0.9251`` mm (least squares in log-log over
components 6-62), which continues the tail to 120. (Unaligned, the same model's first
components move vertices by 4.05 / 2.94 / 1.67 mm and its first five hold 79 % of its
variance; aligned, 3.53 / 1.66 / 1.23 mm and 73 %.) ``tests/test_builtin_identity.py``
recomputes these numbers from the file when ../shared is present.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from focus_jax.morphable.builtin_surface import _gauss, _smoothstep

# Similarity-aligned rms vertex displacement (mm) of the Surrey Face Model's first
# eight shape components (see the module docstring), then a power-law tail.
SFM_ALIGNED_RMS_MM = (3.525, 1.655, 1.233, 1.150, 0.963, 0.886, 0.851, 0.803)
SFM_TAIL_SCALE_MM, SFM_TAIL_EXPONENT = 5.421, -0.9251


def target_rms(count: int) -> np.ndarray:
  """rms vertex displacement (mm) of the built-in shape components 1..count: [count]."""
  k = np.arange(1, count + 1, dtype=np.float64)
  out = SFM_TAIL_SCALE_MM * k ** SFM_TAIL_EXPONENT
  n = min(count, len(SFM_ALIGNED_RMS_MM))
  out[:n] = SFM_ALIGNED_RMS_MM[:n]
  return out


def similarity_basis(points: np.ndarray) -> np.ndarray:
  """Orthonormal basis [3V, 7] of the infinitesimal similarity fields of a point set
  [V, 3] (3 translations, 3 rotations about its centroid, isotropic scale)."""
  p = np.asarray(points, np.float64)
  c = p - p.mean(0)
  cols = []
  for axis in np.eye(3):
    cols.append(np.broadcast_to(axis, c.shape))
  for axis in np.eye(3):
    cols.append(np.cross(axis, c))
  cols.append(c)
  q, _ = np.linalg.qr(np.stack([col.reshape(-1) for col in cols], 1))
  return q


def remove_similarity(fields: np.ndarray, points: np.ndarray) -> np.ndarray:
  """fields [F, V, 3] minus their least-squares similarity part on points [V, 3]."""
  q = similarity_basis(points)
  flat = fields.reshape(len(fields), -1)
  return (flat - (flat @ q) @ q.T).reshape(fields.shape)


def identity_modes(points: np.ndarray) -> np.ndarray:
  """Named face-proportion deformation fields [M, V, 3] (mm at one std, before the
  similarity part is removed) at mean-face points [V, 3] (model coordinates: x to the
  subject's left, y up, z towards the viewer; eyes at y ~ 33, nose tip (0, -4, 99),
  mouth at y ~ -33, chin at y ~ -79, brows at y ~ 57)."""
  x, y, z = points[:, 0], points[:, 1], points[:, 2]
  ax, side = np.abs(x), np.sign(x)
  zeros = np.zeros_like(x)
  vec = lambda fx, fy, fz: np.stack([fx + zeros, fy + zeros, fz + zeros], -1)
  g = lambda cx, cy, sx, sy: _gauss(ax, y, cx, cy, sx, sy)   # mirror-symmetric weight.
  front = _smoothstep(0.0, 40.0, z)
  lower = 10.0 * np.logaddexp(0.0, (-10.0 - y) / 10.0)      # ~max(0, -10 - y)
  modes = [
      # Whole-face anisotropic proportions (the isotropic part goes with the similarity).
      vec(0, 0, 0.150 * (z - 48.0)),                          # face depth
      vec(0.050 * x, 0, 0),                                   # face width
      vec(0, 0.040 * (y - 4.0), 0),                           # face height
      vec(0, -0.09 * lower, 0),                               # lower face length
      vec(0, 0, 0.08 * lower * front),                        # lower face protrusion
      vec(0.11 * x * special.expit(-(y + 30.0) / 10.0), 0, 0),  # jaw width
      vec(0, 0, 0.6 * np.logaddexp(0.0, (y - 40.0) / 10.0)),  # forehead slope
      vec(0, -3.2 * _smoothstep(35.0, -30.0, y), 0),          # midface height
      vec(0, 0, -3.2 * (x / 70.0) ** 2 * front),              # flat vs round face
      # Features.
      vec(0, 0, 3.0 * g(0, 8, 9, 17)),                         # nose projection
      vec(0, -2.2 * g(0, -8, 11, 9), 1.0 * g(0, -4, 8, 8)),    # nose length
      vec(0.20 * x * g(0, -9, 16, 9), 0, 0),                   # nose width
      vec(2.2 * side * g(32, 33, 14, 10), 0, 0),               # eye spacing
      vec(0, 0, -2.2 * g(32, 33, 14, 9)),                      # eye depth
      vec(0, 0, 2.2 * g(28, 52, 22, 8)),                       # brow ridge
      vec(1.6 * side * g(48, 15, 14, 14), 0, 2.2 * g(45, 15, 15, 14)),  # cheekbones
      vec(0.12 * x * g(0, -33, 30, 10), 0, 0),                 # mouth width
      vec(0, 0, 2.0 * g(0, -33, 22, 9)),                       # lip fullness
      vec(0, -1.6 * g(0, -75, 18, 10), 1.8 * g(0, -70, 18, 12)),  # chin
      # Asymmetries.
      vec(1.8 * g(0, 0, 12, 22) * front, 0, 0),                # nose deviation
      vec(0, 0.032 * x * special.expit(-(y + 20.0) / 10.0), 0),  # lower face tilt
      vec(0, 1.4 * side * g(32, 35, 16, 12), 0),               # eye height asymmetry
  ]
  return np.stack(modes)
