"""The morphable model as a pytree of arrays, and pure functions of it.

Conventions (see ../shared/DESIGN.md §4):
  * positions in millimetres, model coordinates: x to the subject's left (viewer's
    right), y up, z out of the face towards the viewer;
  * bases are scaled by the PCA standard deviations, so every coefficient is a
    standard normal variable (eos's "rescaled" basis, the FOCUS reference's layout);
  * albedo is linear RGB, roughly in [0, 1];
  * landmarks follow the iBUG-68 order (index 0 is iBUG point 1); ``-1`` marks a
    point the model has no fixed vertex for (e.g. SFM's jaw contour).

Every function here is pure and shape-polymorphic over leading batch axes, so it
works under ``jit``, ``vmap``, ``grad`` and ``pmap``. Shape mismatches are caught at
trace time (shapes are static) and raise :class:`~focus_jax.errors.CoefficientError`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

from focus_jax.errors import CoefficientError, ModelFileError

NUM_LANDMARKS = 68

# Component counts the FOCUS reference keeps of BFM 2017 (the rest are switched off).
REFERENCE_TRUNCATION = dict(shape=80, expression=64, albedo=80)


@flax.struct.dataclass
class MorphableModel:
  """A linear 3D morphable face model.

  Attributes:
    mean: [V, 3] float32, mean shape in mm.
    shape_basis: [Ks, V, 3] float32, identity basis scaled by the PCA std (mm).
    expression_basis: [Ke, V, 3] float32, expression basis scaled by its std (mm);
      for blendshape models (eos/SFM) the raw blendshapes, coefficient 1 = full
      expression.
    albedo_mean: [V, 3] float32, mean per-vertex albedo, linear RGB in [0, 1].
    albedo_basis: [Ka, V, 3] float32, albedo basis scaled by its std.
    triangles: [F, 3] int32 vertex indices, counter-clockwise seen from the front
      (outward normals point towards +z on the face).
    landmarks: [68] int32 vertex index per iBUG-68 point, -1 where undefined.
    uv: [V, 2] float32 texture coordinates in [0, 1], or None.
    name: human-readable origin of the model (static metadata).
  """

  mean: jnp.ndarray
  shape_basis: jnp.ndarray
  expression_basis: jnp.ndarray
  albedo_mean: jnp.ndarray
  albedo_basis: jnp.ndarray
  triangles: jnp.ndarray
  landmarks: jnp.ndarray
  uv: Optional[jnp.ndarray] = None
  name: str = flax.struct.field(pytree_node=False, default="unnamed")

  @property
  def num_vertices(self) -> int:
    return self.mean.shape[0]

  @property
  def num_triangles(self) -> int:
    return self.triangles.shape[0]

  @property
  def num_shape(self) -> int:
    return self.shape_basis.shape[0]

  @property
  def num_expression(self) -> int:
    return self.expression_basis.shape[0]

  @property
  def num_albedo(self) -> int:
    return self.albedo_basis.shape[0]

  def __repr__(self) -> str:
    return (f"MorphableModel(name={self.name!r}, vertices={self.num_vertices}, "
            f"triangles={self.num_triangles}, shape={self.num_shape}, "
            f"expression={self.num_expression}, albedo={self.num_albedo})")


def make_model(mean, shape_basis, expression_basis, albedo_mean, albedo_basis,
               triangles, landmarks=None, uv=None, name="unnamed") -> MorphableModel:
  """Builds a :class:`MorphableModel` from array-likes, checking shapes and dtypes.

  Empty bases may be given as ``None`` (e.g. a model without expressions). This is
  the one constructor every loader goes through, so its checks guard all of them:
  shapes, index ranges, and finite means, bases and uv (:class:`NonFiniteModelError`).
  """
  mean = np.asarray(mean, np.float32)
  if mean.ndim != 2 or mean.shape[1] != 3:
    raise CoefficientError(f"{name}: mean must be [V, 3], got {mean.shape}")
  num_vertices = mean.shape[0]

  def basis(b, what):
    if b is None:
      return np.zeros((0, num_vertices, 3), np.float32)
    b = np.asarray(b, np.float32)
    if b.ndim != 3 or b.shape[1:] != (num_vertices, 3):
      raise CoefficientError(
          f"{name}: {what} must be [K, {num_vertices}, 3], got {b.shape}")
    return b

  albedo_mean = (np.full((num_vertices, 3), 0.5, np.float32)
                 if albedo_mean is None else np.asarray(albedo_mean, np.float32))
  if albedo_mean.shape != (num_vertices, 3):
    raise CoefficientError(
        f"{name}: albedo_mean must be [{num_vertices}, 3], got {albedo_mean.shape}")
  triangles = np.asarray(triangles)
  if triangles.ndim != 2 or triangles.shape[1] != 3:
    raise CoefficientError(f"{name}: triangles must be [F, 3], got {triangles.shape}")
  if triangles.size and (triangles.min() < 0 or triangles.max() >= num_vertices):
    raise CoefficientError(
        f"{name}: triangle indices must lie in [0, {num_vertices}), got "
        f"[{triangles.min()}, {triangles.max()}]")
  if landmarks is None:
    landmarks = np.full((NUM_LANDMARKS,), -1, np.int32)
  landmarks = np.asarray(landmarks, np.int32)
  if landmarks.shape != (NUM_LANDMARKS,):
    raise CoefficientError(
        f"{name}: landmarks must be [{NUM_LANDMARKS}] (iBUG-68), got {landmarks.shape}")
  if (landmarks >= num_vertices).any() or (landmarks < -1).any():
    raise CoefficientError(f"{name}: landmark vertex index out of range [-1, {num_vertices})")
  if uv is not None:
    uv = np.asarray(uv, np.float32)
    if uv.shape != (num_vertices, 2):
      raise CoefficientError(f"{name}: uv must be [{num_vertices}, 2], got {uv.shape}")
  shape_basis = basis(shape_basis, "shape_basis")
  expression_basis = basis(expression_basis, "expression_basis")
  albedo_basis = basis(albedo_basis, "albedo_basis")
  check_finite(name, mean=mean, shape_basis=shape_basis, expression_basis=expression_basis,
               albedo_mean=albedo_mean, albedo_basis=albedo_basis, uv=uv)
  return MorphableModel(
      mean=jnp.asarray(mean),
      shape_basis=jnp.asarray(shape_basis),
      expression_basis=jnp.asarray(expression_basis),
      albedo_mean=jnp.asarray(albedo_mean),
      albedo_basis=jnp.asarray(albedo_basis),
      triangles=jnp.asarray(triangles.astype(np.int32)),
      landmarks=jnp.asarray(landmarks),
      uv=None if uv is None else jnp.asarray(uv),
      name=name)


class NonFiniteModelError(ModelFileError):
  """A model array holds NaN or infinite values (``detail`` says which, without the name)."""

  def __init__(self, name: str, detail: str):
    super().__init__(f"{name}: {detail}")
    self.detail = detail


def check_finite(name: str, **arrays) -> None:
  """Raises :class:`NonFiniteModelError` naming the first array (None = absent) with a
  NaN or infinite value: a model like that fits every photo to NaN."""
  for what, a in arrays.items():
    if a is None:
      continue
    bad = ~np.isfinite(a)
    if bad.any():
      first = tuple(int(i) for i in np.argwhere(bad)[0])
      raise NonFiniteModelError(
          name, f"{what} is not finite ({int(bad.sum())} NaN/inf value(s), the first at "
          f"{list(first)}); the model file is corrupt")


def _check_length(coeffs, expected: int, what: str, model: MorphableModel):
  if coeffs.shape[-1:] != (expected,):
    raise CoefficientError(
        f"{what} coefficients have shape {tuple(coeffs.shape)} but {model.name!r} has "
        f"{expected} {what} components; pass [..., {expected}] (truncate the model with "
        f"focus_jax.morphable.truncate to use fewer)")


def _basis_product(coeffs, basis):
  """[..., K] x [K, V, 3] -> [..., V, 3]; HIGHEST keeps float32 accuracy on TPU/GPU.

  A matrix product with the flattened [K, V * 3] basis rather than an einsum over
  [K, V, 3]: XLA:CPU runs the einsum's transpose (the coefficients' gradient) as a
  dot over a transposed copy of the basis, ~6x slower for one face.
  """
  # An explicit width, not -1: a basis may have no components (K = 0).
  flat = jnp.reshape(basis, (basis.shape[0], basis.shape[1] * basis.shape[2]))
  out = jnp.matmul(coeffs, flat, precision="highest")
  return jnp.reshape(out, out.shape[:-1] + basis.shape[1:])


def _combine(mean, basis, coeffs):
  return mean + _basis_product(coeffs, basis)


def vertices(model: MorphableModel, shape, expression=None) -> jnp.ndarray:
  """Vertex positions of a face.

  Args:
    model: the morphable model.
    shape: [..., Ks] standard-normal identity coefficients.
    expression: [..., Ke] standard-normal expression coefficients, or None for the
      neutral face.

  Returns:
    [..., V, 3] positions in mm (model coordinates).
  """
  shape = jnp.asarray(shape)
  _check_length(shape, model.num_shape, "shape", model)
  out = _combine(model.mean, model.shape_basis, shape)
  if expression is not None:
    expression = jnp.asarray(expression)
    _check_length(expression, model.num_expression, "expression", model)
    out = out + _basis_product(expression, model.expression_basis)
  return out


def albedo(model: MorphableModel, coeffs) -> jnp.ndarray:
  """Per-vertex albedo: [..., Ka] coefficients -> [..., V, 3] linear RGB (unclipped)."""
  coeffs = jnp.asarray(coeffs)
  _check_length(coeffs, model.num_albedo, "albedo", model)
  return _combine(model.albedo_mean, model.albedo_basis, coeffs)


def landmark_mask(model: MorphableModel) -> jnp.ndarray:
  """[68] bool: True where the model defines a fixed vertex for the iBUG point."""
  return model.landmarks >= 0


def landmark_positions(model: MorphableModel, verts) -> jnp.ndarray:
  """Gathers the 68 landmark vertices: [..., V, D] -> [..., 68, D].

  Undefined landmarks (index -1) return vertex 0's position; mask them with
  :func:`landmark_mask`.
  """
  idx = jnp.maximum(model.landmarks, 0)
  return jnp.take(verts, idx, axis=-2)


def truncate(model: MorphableModel, shape: Optional[int] = None,
             expression: Optional[int] = None,
             albedo: Optional[int] = None) -> MorphableModel:  # pylint: disable=redefined-outer-name
  """Keeps the first k components of each basis (None keeps all).

  The FOCUS reference uses ``truncate(m, **REFERENCE_TRUNCATION)``. Asking for more
  components than the model has keeps them all.
  """
  def cut(b, k):
    return b if k is None else b[:k]
  return model.replace(shape_basis=cut(model.shape_basis, shape),
                       expression_basis=cut(model.expression_basis, expression),
                       albedo_basis=cut(model.albedo_basis, albedo))


def subset(model: MorphableModel, keep: Sequence[int] | np.ndarray,
           name: Optional[str] = None) -> MorphableModel:
  """Restricts the model to a vertex subset (e.g. a face crop).

  Triangles with any vertex outside the subset are dropped and the rest are
  re-indexed; landmarks on removed vertices become -1. Runs on the host (numpy),
  at model-building time.

  Args:
    model: the model to crop.
    keep: vertex indices to keep (any order; duplicates are ignored), or a [V]
      boolean mask.

  Returns:
    A new model whose vertex i is the old vertex ``sorted(keep)[i]``.
  """
  keep = np.asarray(keep)
  num_vertices = model.num_vertices
  if keep.dtype == bool:
    if keep.shape != (num_vertices,):
      raise CoefficientError(f"vertex mask must be [{num_vertices}], got {keep.shape}")
    keep = np.flatnonzero(keep)
  keep = np.unique(keep.astype(np.int64))
  if keep.size and (keep[0] < 0 or keep[-1] >= num_vertices):
    raise CoefficientError(f"vertex subset indices must lie in [0, {num_vertices})")
  new_index = np.full((num_vertices,), -1, np.int64)
  new_index[keep] = np.arange(keep.size)
  tri = new_index[np.asarray(model.triangles)]
  tri = tri[(tri >= 0).all(axis=1)]
  lm = np.asarray(model.landmarks)
  lm = np.where(lm >= 0, new_index[np.maximum(lm, 0)], -1)
  take = lambda a: None if a is None else np.asarray(a)[..., keep, :]
  return make_model(
      mean=take(model.mean), shape_basis=take(model.shape_basis),
      expression_basis=take(model.expression_basis),
      albedo_mean=take(model.albedo_mean), albedo_basis=take(model.albedo_basis),
      triangles=tri, landmarks=lm, uv=take(model.uv),
      name=name or f"{model.name}[subset {keep.size}/{num_vertices}]")
