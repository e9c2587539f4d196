"""Small shared test utilities (tiny models, finite differences)."""

import numpy as np

from focus_jax import morphable


def tiny_model(num_vertices=40, num_shape=5, num_expression=3, num_albedo=4, seed=0,
               name="tiny"):
  """A random but valid MorphableModel: a bumpy grid patch with random bases."""
  rng = np.random.default_rng(seed)
  side = int(np.ceil(np.sqrt(num_vertices)))
  xs, ys = np.meshgrid(np.linspace(-50, 50, side), np.linspace(-60, 60, side))
  mean = np.stack([xs.ravel(), ys.ravel(), 80 - 0.01 * (xs.ravel()**2 + ys.ravel()**2)], -1)
  tris = []
  for i in range(side - 1):
    for j in range(side - 1):
      a, b, c, d = i * side + j, i * side + j + 1, (i + 1) * side + j, (i + 1) * side + j + 1
      # y grows with the row index, so (a, b, d) is counter-clockwise seen from +z.
      tris += [(a, b, d), (a, d, c)]
  num_v = side * side
  lm = rng.choice(num_v, size=68, replace=True).astype(np.int32)
  lm[:5] = -1
  return morphable.make_model(
      mean=mean, shape_basis=rng.normal(size=(num_shape, num_v, 3)),
      expression_basis=rng.normal(size=(num_expression, num_v, 3)),
      albedo_mean=rng.uniform(0.3, 0.7, size=(num_v, 3)),
      albedo_basis=0.05 * rng.normal(size=(num_albedo, num_v, 3)),
      triangles=np.array(tris), landmarks=lm, uv=rng.uniform(size=(num_v, 2)), name=name)


def finite_difference(f, x, eps=1e-3):
  """Central differences of scalar f at x (float64 numpy), same shape as x."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[i] = eps
    g[i] = (f(x + d) - f(x - d)) / (2 * eps)
  return g
