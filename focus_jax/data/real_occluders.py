"""Realistic occluders with exact masks, placed on real photos from their 68 landmarks
(host side, NumPy): the occluders of the semi-real benchmark (benchmarks/real.py).

An :class:`Occluder` is an RGB layer and its alpha over a photo of the same size;
:func:`composite` pastes it (``photo · (1 − α) + rgb · α``) and its binary ground
truth is ``α ≥ 0.5`` (:attr:`Occluder.mask`): a pixel is occluded where the
occluder makes up at least half of its colour.

Families (:data:`FAMILIES`), each drawn from a ``numpy.random.Generator`` and the
landmarks (iBUG-68 order, photo pixels, centre +0.5):

* ``synthetic``: the synthetic-face generator (:func:`focus_jax.data.occluders.occlude`:
  textured shapes, cartoon hands, masks, glasses) over 15-45 % of the landmark hull;
* ``surgical_mask``: pleated surgical mask (blue, white, black, pink, mint) along
  the jaw line from the nose ridge to below the chin, with ear loops;
* ``cloth_mask``: a cloth mask with a centre seam, patterned or plain fabric
  (saturated, dark, or of the photo's own skin colour);
* ``sunglasses``: lenses around each eye (sized by that eye, so they follow the
  head's yaw), frame, bridge and temples; dark, tinted or mirrored;
* ``hand``: a shaded hand and forearm over the mouth, a cheek, an eye or the chin,
  in the photo's own skin colour or another skin tone;
* ``scarf``: knitted scarf from below the image up to between the nose and the lips;
* ``hair``: a lock or a fringe of 50-150 strands falling across brows and an eye;
* ``microphone``: a handheld microphone (metal grille or coloured foam, sometimes a
  coloured flag) in front of the mouth;
* ``object``: a phone, cup, ball or card in a skin-like or saturated colour.

Shading: parts are lit as rounded solids (a dome profile from the shape's signed
distance, Lambert plus a little specular light), fabrics get folds and weave, and
every layer is softened by a 0.6 px Gaussian and given sensor grain, so that its
edges look like the photo's. :func:`colour_class` says per occluder whether it is
skin-like (close to the photo's skin chromaticity), saturated, dark or neutral.

:func:`benchmark_occluders` draws the benchmark's fixed set for one photo: ``count``
occluders of families that cycle with the photo's index, each from a seed of
(``seed``, the file name, its slot), so every run pastes the same occluders.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
from scipy import ndimage

# The shapes and families live in sibling modules; their public names are re-exported here.
from focus_jax.data.occluder_families import (  # pylint: disable=unused-import
    surgical_mask, cloth_mask, sunglasses, hand, scarf, hair, microphone, held_object, synthetic)
from focus_jax.data.occluder_shapes import (  # pylint: disable=unused-import
    Face, skin_colour, face_geometry, polygon_sdf, capsule_sdf, box_sdf, superellipse_sdf,
    alpha_of, local, dome, saturated_colour, skin_like_colour)

FAMILIES = ("synthetic", "surgical_mask", "cloth_mask", "sunglasses", "hand", "scarf", "hair",
            "microphone", "object")
COLOUR_CLASSES = ("skin-like", "saturated", "dark", "neutral")
# A drawn occluder is kept when it covers this share of the landmark hull.
MIN_COVERAGE, MAX_COVERAGE = 0.05, 0.85
MAX_TRIES = 8


@dataclasses.dataclass(frozen=True)
class Occluder:
  """One occluder over a photo of H x W pixels.

  Attributes:
    rgb: [H, W, 3] float32 in [0, 1], the occluder's colour (meaningful where alpha > 0).
    alpha: [H, W] float32 in [0, 1], its coverage of each pixel.
    family: one of :data:`FAMILIES`.
    description: what was drawn, e.g. ``'sunglasses:mirror'``.
    colour: one of :data:`COLOUR_CLASSES` (:func:`colour_class`).
  """
  rgb: np.ndarray
  alpha: np.ndarray
  family: str
  description: str
  colour: str = "neutral"

  @property
  def mask(self) -> np.ndarray:
    """[H, W] bool ground truth: occluded where alpha >= 0.5."""
    return self.alpha >= 0.5


def composite(photo, occluder: Occluder) -> np.ndarray:
  """[H, W, 3] float32: ``photo · (1 − α) + rgb · α`` (photo [H, W, 3] in [0, 1])."""
  photo = np.asarray(photo, np.float32)
  if photo.shape[:2] != occluder.alpha.shape:
    raise ValueError(f"composite: photo {photo.shape[:2]} and occluder {occluder.alpha.shape} "
                     "differ in size")
  a = occluder.alpha[..., None]
  return np.clip(photo * (1.0 - a) + occluder.rgb * a, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- drawing


_DRAW = {"synthetic": synthetic, "surgical_mask": surgical_mask, "cloth_mask": cloth_mask,
         "sunglasses": sunglasses, "hand": hand, "scarf": scarf, "hair": hair,
         "microphone": microphone, "object": held_object}


def colour_class(rgb, alpha, skin) -> str:
  """What the occluder's colour is like (median over alpha >= 0.5):

  ``'skin-like'``: chromaticity (RGB / sum) within 0.05 of the photo's ``skin`` and
  brightness 0.55-1.6x it; else ``'dark'`` (HSV value < 0.25), ``'saturated'`` (HSV
  saturation >= 0.45) or ``'neutral'`` (white, grey, pastel).
  """
  sel = np.asarray(alpha) >= 0.5
  if not sel.any():
    return "neutral"
  m = np.median(np.asarray(rgb)[sel], 0).astype(np.float64)
  skin = np.asarray(skin, np.float64)
  chroma = m / max(m.sum(), 1e-6) - skin / max(skin.sum(), 1e-6)
  ratio = m.sum() / max(skin.sum(), 1e-6)
  if np.linalg.norm(chroma) < 0.05 and 0.55 <= ratio <= 1.6:
    return "skin-like"
  value = m.max()
  saturation = (m.max() - m.min()) / max(m.max(), 1e-6)
  if value < 0.25:
    return "dark"
  return "saturated" if saturation >= 0.45 else "neutral"


def _finish(rng, alpha, rgb, blur: float = 0.6, grain: float = 0.012):
  """Softens the layer like the photo's optics (premultiplied blur) and adds grain."""
  prem = ndimage.gaussian_filter(rgb * alpha[..., None], (blur, blur, 0))
  alpha = np.clip(ndimage.gaussian_filter(alpha, blur), 0.0, 1.0)
  rgb = prem / np.maximum(alpha, 1e-6)[..., None]
  rgb = rgb + rng.normal(0.0, grain, rgb.shape)
  rgb = np.where(alpha[..., None] > 1e-6, rgb, 0.0)
  return alpha.astype(np.float32), np.clip(rgb, 0.0, 1.0).astype(np.float32)


def make_occluder(family: str, rng: np.random.Generator, photo, landmarks) -> Occluder:
  """Draws one occluder of ``family`` for a photo.

  Args:
    family: one of :data:`FAMILIES`.
    rng: the random stream (the result is a deterministic function of it).
    photo: [H, W, 3] float in [0, 1] (its skin colour is sampled).
    landmarks: [68, 2] photo pixels of the unoccluded face, or its :class:`Face`.
  """
  if family not in _DRAW:
    raise ValueError(f"unknown occluder family {family!r}; use one of {FAMILIES}")
  face = landmarks if isinstance(landmarks, Face) else face_geometry(photo, landmarks)
  alpha, rgb, description = _DRAW[family](rng, face)
  alpha, rgb = _finish(rng, np.asarray(alpha, np.float64), np.asarray(rgb, np.float64))
  return Occluder(rgb=rgb, alpha=alpha, family=family, description=description,
                  colour=colour_class(rgb, alpha, face.skin))


def draw_covering(family: str, rngs, photo, face: Face) -> Occluder:
  """An occluder of ``family`` covering :data:`MIN_COVERAGE`-:data:`MAX_COVERAGE` of the
  landmark hull: one draw per stream of ``rngs`` (an iterable of Generators, one per
  attempt), at most :data:`MAX_TRIES`; the last draw is kept if none fits."""
  occ = None
  for _, rng in zip(range(MAX_TRIES), rngs):
    occ = make_occluder(family, rng, photo, face)
    cover = float(occ.mask[face.hull].mean()) if face.hull.any() else 0.0
    if MIN_COVERAGE <= cover <= MAX_COVERAGE:
      break
  return occ


def benchmark_occluders(photo, landmarks, name: str, index: int, count: int = 4,
                        seed: int = 0, families=FAMILIES) -> list:
  """The fixed occluders of one benchmark photo.

  Slot k of the photo with ``index`` (its position in the sorted photo list) gets
  family ``families[(count · index + k) mod len(families)]`` (so the families are
  used equally often), drawn from ``default_rng([seed, crc32(name), k, attempt])``;
  a draw covering less than :data:`MIN_COVERAGE` or more than :data:`MAX_COVERAGE`
  of the landmark hull is redrawn with the next attempt (at most :data:`MAX_TRIES`;
  the last one is kept).

  Returns:
    [count] :class:`Occluder`.
  """
  face = face_geometry(photo, landmarks)
  key = zlib.crc32(str(name).encode("utf-8"))
  out = []
  for k in range(count):
    family = families[(count * int(index) + k) % len(families)]
    rngs = (np.random.default_rng([seed, key, k, attempt]) for attempt in range(MAX_TRIES))
    out.append(draw_covering(family, rngs, photo, face))
  return out

