"""Procedural noise, textures and backgrounds for synthetic images (host side, NumPy).

Everything takes a ``numpy.random.Generator`` and is a deterministic function of
its stream. Images are float32 RGB in [0, 1], [H, W, 3]; coordinates are pixels
(x right, y down, centre at +0.5) unless a function says otherwise.
"""

from __future__ import annotations

import colorsys
import functools
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

_TABLE = 4096
_PRIMES = (73856093, 19349663, 83492791)


def value_noise(coords, cell: float, rng_or_table) -> np.ndarray:
  """Smooth lattice value noise in [0, 1] at arbitrary 2-D or 3-D points.

  Args:
    coords: [N, D] points (D = 2 or 3), any unit.
    cell: lattice spacing in the same unit (the feature size).
    rng_or_table: a Generator (draws a new random table) or a [4096] table from
      :func:`noise_table`, so that several calls share one noise field.

  Returns:
    [N] float32.
  """
  table = (noise_table(rng_or_table) if isinstance(rng_or_table, np.random.Generator)
           else rng_or_table)
  p = np.asarray(coords, np.float64) / cell
  base = np.floor(p)
  f = p - base
  f = f * f * (3.0 - 2.0 * f)
  base = base.astype(np.int64)
  dims = p.shape[-1]
  out = np.zeros(p.shape[:-1], np.float64)
  for corner in range(1 << dims):
    h = np.zeros(p.shape[:-1], np.int64)
    w = np.ones(p.shape[:-1], np.float64)
    for d in range(dims):
      bit = (corner >> d) & 1
      h ^= (base[..., d] + bit) * _PRIMES[d]
      w *= f[..., d] if bit else 1.0 - f[..., d]
    out += w * table[h & (_TABLE - 1)]
  return out.astype(np.float32)


def noise_table(rng: np.random.Generator) -> np.ndarray:
  """A [4096] random table for :func:`value_noise`."""
  return rng.random(_TABLE)


def fractal_noise(rng: np.random.Generator, height: int, width: int, cell: float,
                  octaves: int = 4, persistence: float = 0.5) -> np.ndarray:
  """[H, W] fractal (multi-octave) value noise normalised to [0, 1]."""
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
  pts = np.stack([xs.ravel(), ys.ravel()], -1) + rng.uniform(0, 1000, size=2)
  total, amp, norm = 0.0, 1.0, 0.0
  for o in range(octaves):
    total = total + amp * value_noise(pts, cell / (2 ** o), rng)
    norm += amp
    amp *= persistence
  out = (total / norm).reshape(height, width)
  lo, hi = out.min(), out.max()
  return ((out - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def random_color(rng: np.random.Generator, saturation=(0.0, 1.0), value=(0.1, 1.0)):
  """[3] RGB from a random hue and the given saturation/value ranges."""
  h = rng.random()
  s = rng.uniform(*saturation)
  v = rng.uniform(*value)
  return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


# Skin tones (sRGB-ish albedo), light to dark, for hands and skin-coloured things.
SKIN_TONES = np.array([[0.93, 0.78, 0.69], [0.87, 0.69, 0.57], [0.80, 0.60, 0.47],
                       [0.68, 0.49, 0.36], [0.55, 0.38, 0.27], [0.40, 0.27, 0.19],
                       [0.29, 0.19, 0.13]], np.float32)


def skin_color(rng: np.random.Generator) -> np.ndarray:
  """[3] a random skin tone (interpolated in :data:`SKIN_TONES`, slightly varied)."""
  t = rng.uniform(0, len(SKIN_TONES) - 1)
  i = int(np.floor(t))
  j = min(i + 1, len(SKIN_TONES) - 1)
  c = (1 - (t - i)) * SKIN_TONES[i] + (t - i) * SKIN_TONES[j]
  return np.clip(c * rng.uniform(0.92, 1.08, 3), 0, 1).astype(np.float32)


def _grid(height, width):
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  return xs, ys


TEXTURES = ("solid", "noise", "stripes", "checker", "dots", "plaid", "camo", "gradient")


def texture(rng: np.random.Generator, height: int, width: int,
            kind: Optional[str] = None, scale: Optional[float] = None):
  """A random texture (fabric, plastic, paper, ...).

  Args:
    rng: the random stream.
    height, width: output size.
    kind: one of :data:`TEXTURES`, or None for a random one.
    scale: feature size in pixels (default: random, relative to the size).

  Returns:
    ([H, W, 3] float32, kind).
  """
  kind = kind or TEXTURES[rng.integers(len(TEXTURES))]
  size = max(height, width)
  scale = scale or size * rng.uniform(0.03, 0.15)
  c1 = random_color(rng)
  c2 = random_color(rng)
  xs, ys = _grid(height, width)
  angle = rng.uniform(0, np.pi)
  u = xs * np.cos(angle) + ys * np.sin(angle)
  v = -xs * np.sin(angle) + ys * np.cos(angle)
  if kind == "solid":
    t = np.zeros((height, width), np.float32)
  elif kind == "noise":
    t = fractal_noise(rng, height, width, scale * 2)
  elif kind == "stripes":
    duty = rng.uniform(0.2, 0.8)
    t = ((u / scale) % 1.0 < duty).astype(np.float32)
  elif kind == "checker":
    t = ((np.floor(u / scale) + np.floor(v / scale)) % 2).astype(np.float32)
  elif kind == "dots":
    cu, cv = (u / scale) % 1.0 - 0.5, (v / scale) % 1.0 - 0.5
    t = (cu * cu + cv * cv < rng.uniform(0.04, 0.16)).astype(np.float32)
  elif kind == "plaid":
    t = 0.5 * ((u / scale) % 1.0 < 0.3) + 0.5 * ((v / (scale * 1.3)) % 1.0 < 0.3)
  elif kind == "camo":
    n = fractal_noise(rng, height, width, scale * 3)
    c3, c4 = random_color(rng), random_color(rng)
    levels = np.digitize(n, [0.35, 0.55, 0.75])
    img = np.stack([c1, c2, c3, c4])[levels]
    return _finish(rng, img, height, width), kind
  elif kind == "gradient":
    t = (u - u.min()) / max(float(np.ptp(u)), 1.0)
  else:
    raise ValueError(f"texture: unknown kind {kind!r}; use one of {TEXTURES}")
  t = ndimage.gaussian_filter(np.asarray(t, np.float32), 0.6)
  img = (1 - t)[..., None] * c1 + t[..., None] * c2
  return _finish(rng, img, height, width), kind


def _finish(rng, img, height, width):
  """Adds fine grain and a soft light gradient so flat textures look like objects."""
  grain = fractal_noise(rng, height, width, 3.0, octaves=2) - 0.5
  xs, ys = _grid(height, width)
  a = rng.uniform(0, 2 * np.pi)
  g = (xs * np.cos(a) + ys * np.sin(a)) / max(height, width)
  g = (g - g.min()) / max(float(np.ptp(g)), 1e-6)
  light = rng.uniform(0.7, 0.9) + rng.uniform(0.1, 0.35) * g
  out = img * light[..., None] + rng.uniform(0.0, 0.08) * grain[..., None]
  return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- backgrounds

# scikit-image sample photos used as real backgrounds (all bundled with the package).
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
               "immunohistochemistry", "page", "camera", "coins",
               "grass", "gravel", "brick")


@functools.lru_cache(maxsize=1)
def sample_photos(names: Sequence[str] = PHOTO_NAMES) -> tuple:
  """scikit-image's sample photos as [H, W, 3] float32 (those that load offline).

  Returns an empty tuple when scikit-image is not installed.
  """
  try:
    from skimage import data as skdata  # pylint: disable=import-outside-toplevel
  except ImportError:
    return ()
  photos = []
  for name in names:
    fn = getattr(skdata, name, None)
    if fn is None:
      continue
    try:
      img = np.asarray(fn())
    except Exception:  # pylint: disable=broad-except  (optional downloads, pooch)
      continue
    if img.ndim == 2:
      img = np.repeat(img[..., None], 3, -1)
    img = img[..., :3]
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else max(img.max(), 1))
    photos.append((name, img))
  return tuple(photos)


def photo_crop(rng: np.random.Generator, photo: np.ndarray, height: int, width: int):
  """A random crop of a photo (20-100 % of its short side), resized and maybe mirrored."""
  from focus_jax.data import align as align_lib  # pylint: disable=import-outside-toplevel
  ph, pw = photo.shape[:2]
  side = rng.uniform(0.2, 1.0) * min(ph, pw)
  x0 = rng.uniform(0, pw - side)
  y0 = rng.uniform(0, ph - side * height / width) if ph > side * height / width else 0.0
  sx = side / width
  m = np.array([[sx, 0, x0], [0, sx, y0]])
  if rng.random() < 0.5:
    m = np.array([[-sx, 0, x0 + side], [0, sx, y0]])
  return np.clip(align_lib.warp(photo, m, (height, width), order=1), 0, 1)


def background(rng: np.random.Generator, height: int, width: int,
               photo_probability: float = 0.5):
  """A background: a random crop of a real photo, or a procedural scene.

  Returns:
    ([H, W, 3] float32, description such as ``'photo:coffee'`` or ``'stripes'``).
  """
  photos = sample_photos()
  if photos and rng.random() < photo_probability:
    name, photo = photos[rng.integers(len(photos))]
    img = photo_crop(rng, photo, height, width)
    img = img * rng.uniform(0.6, 1.1) + rng.uniform(-0.05, 0.05, 3)
    return np.clip(img, 0, 1).astype(np.float32), f"photo:{name}"
  choice = rng.integers(3)
  if choice == 0:   # blurred texture: a wall, a curtain
    img, kind = texture(rng, height, width)
    img = ndimage.gaussian_filter(img, (rng.uniform(0, 3), rng.uniform(0, 3), 0))
    return img.astype(np.float32), kind
  if choice == 1:   # soft blobs: out-of-focus room
    img = np.broadcast_to(random_color(rng, value=(0.2, 0.9)), (height, width, 3)).copy()
    xs, ys = _grid(height, width)
    for _ in range(rng.integers(3, 9)):
      c = random_color(rng)
      cx, cy = rng.uniform(0, width), rng.uniform(0, height)
      r = rng.uniform(0.1, 0.5) * max(height, width)
      w = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))[..., None]
      img = img * (1 - 0.8 * w) + 0.8 * w * c
    return np.clip(img, 0, 1).astype(np.float32), "blobs"
  n = fractal_noise(rng, height, width, max(height, width) * rng.uniform(0.1, 0.5))
  c1, c2 = random_color(rng), random_color(rng)
  img = (1 - n)[..., None] * c1 + n[..., None] * c2
  return np.clip(img, 0, 1).astype(np.float32), "clouds"
