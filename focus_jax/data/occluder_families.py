"""The real occluders' families (host side, NumPy): each draws (alpha [H, W],
rgb [H, W, 3], description) from a ``numpy.random.Generator`` and a
:class:`~focus_jax.data.occluder_shapes.Face`; :mod:`focus_jax.data.real_occluders`
describes them and turns a draw into an :class:`~focus_jax.data.real_occluders.Occluder`.
"""

from __future__ import annotations

import copy

import numpy as np

from focus_jax.data import occluders as synthetic_occluders
from focus_jax.data import procedural
from focus_jax.data.occluder_shapes import (
    Face, _fabric, _grid, _light, _noise, _Paint, alpha_of, box_sdf, capsule_sdf, dome, local,
    polygon_sdf, saturated_colour, skin_like_colour, superellipse_sdf)


# ----------------------------------------------------------------------------- face masks


_SURGICAL = (("blue", (0.5, 0.7, 0.86)), ("white", (0.92, 0.93, 0.94)),
             ("black", (0.11, 0.11, 0.13)), ("pink", (0.93, 0.7, 0.78)),
             ("mint", (0.6, 0.84, 0.77)))


def _mask_outline(face: Face, rng, top, drop: float, expand: float, n_top: int = 9):
  """A face mask's outline: (top edge [n_top, 2] from the left to the right jaw point
  through ``top``, bulging upwards; jaw [15, 2] iBUG 2-16 pushed out by ``expand`` eye
  distances, the chin points by up to ``drop`` more downwards)."""
  lm = face.landmarks
  down = face.frame.down * face.s
  jaw = [face.outward(lm[k], expand) for k in range(1, 16)]
  for k in range(4, 11):                       # iBUG 6-12 hang below the chin
    jaw[k] = jaw[k] + drop * (1.0 - abs(k - 7) / 4.0) * down
  left, right = jaw[0], jaw[-1]
  lift = rng.uniform(0.04, 0.12)
  edge = []
  for t in np.linspace(0.0, 1.0, n_top):
    p = left + (top - left) * 2 * t if t <= 0.5 else top + (right - top) * (2 * t - 1)
    edge.append(p - lift * abs(np.sin(2 * np.pi * t)) * down)   # cheeks bulge upwards
  return np.array(edge), np.array(jaw)


def _ear_loops(paint, xs, ys, face: Face, edge, jaw, colour, width):
  lm = face.landmarks
  ears = (face.outward(lm[0], 0.1), face.outward(lm[16], 0.1))
  for start, ear in ((edge[0], ears[0]), (jaw[3], ears[0]), (edge[-1], ears[1]),
                     (jaw[11], ears[1])):
    paint.over(alpha_of(capsule_sdf(xs, ys, start, ear, width)), colour)


def surgical_mask(rng, face: Face):
  """A pleated surgical mask with ear loops: (alpha, rgb, description)."""
  shape, s, lm = face.shape, face.s, face.landmarks
  xs, ys = _grid(shape)
  top = lm[29] + (lm[27] - lm[29]) * rng.uniform(0.3, 0.75)      # on the nose ridge
  edge, jaw = _mask_outline(face, rng, top, rng.uniform(0.12, 0.3), rng.uniform(0.04, 0.1))
  sdf = polygon_sdf(xs, ys, np.concatenate([edge, jaw[-2:0:-1]]))
  name, base = _SURGICAL[rng.integers(len(_SURGICAL))]
  base = np.asarray(base) * rng.uniform(0.9, 1.05)
  u, v = face.frame.local(xs, ys)
  phase = (v - face.uv(top)[1]) / rng.uniform(0.16, 0.24)
  pleat = 0.88 + 0.12 * (phase % 1.0)           # each pleat lighter towards its lower fold
  across = 0.72 + 0.28 * np.cos(np.clip(u / 1.4, -1.4, 1.4))    # turning away at the sides
  weave = 0.96 + 0.04 * _noise(rng, shape, 3.0, 2)
  hem = np.where(-sdf < 0.05 * s, 0.9, 1.0)
  paint = _Paint(shape)
  paint.over(alpha_of(sdf), base * (pleat * across * weave * hem)[..., None])
  loop = np.full(3, 0.12) if name == "black" else np.minimum(base * 1.02, 1.0)
  _ear_loops(paint, xs, ys, face, edge, jaw, loop, max(0.7, 0.018 * s))
  return (*paint.layer(), f"surgical_mask:{name}")


def cloth_mask(rng, face: Face):
  """A cloth mask with a centre seam: patterned, plain (saturated or dark) or skin-coloured."""
  shape, s, lm = face.shape, face.s, face.landmarks
  xs, ys = _grid(shape)
  top = lm[29] + (lm[27] - lm[29]) * rng.uniform(0.4, 0.9)
  edge, jaw = _mask_outline(face, rng, top, rng.uniform(0.2, 0.4), rng.uniform(0.06, 0.14))
  sdf = polygon_sdf(xs, ys, np.concatenate([edge, jaw[-2:0:-1]]))
  style = ("pattern", "plain", "skin", "dark")[rng.integers(4)]
  if style == "pattern":
    kind = ("stripes", "checker", "dots", "plaid", "camo", "noise")[rng.integers(6)]
    fabric = _fabric(rng, shape, kind)
    style = f"pattern-{kind}"
  else:
    colour = {"plain": lambda: saturated_colour(rng),
              "skin": lambda: skin_like_colour(rng, face),
              "dark": lambda: np.full(3, rng.uniform(0.06, 0.16))}[style]()
    fabric = colour * (0.94 + 0.06 * _noise(rng, shape, 2.5, 2))[..., None]
  u, _ = face.frame.local(xs, ys)
  chin = face.outward(lm[8], 0.1) + face.frame.down * face.s * 0.3
  seam = np.abs(capsule_sdf(xs, ys, top, chin, 0.0))
  crease = 1.0 - 0.35 * np.exp(-seam / max(0.015 * s, 0.6)) - 0.1 * np.exp(-seam / (0.12 * s))
  across = 0.7 + 0.3 * np.cos(np.clip(u / 1.4, -1.4, 1.4))
  folds = 0.88 + 0.18 * _noise(rng, shape, 0.5 * s, 3)
  paint = _Paint(shape)
  paint.over(alpha_of(sdf), fabric * (crease * across * folds)[..., None])
  _ear_loops(paint, xs, ys, face, edge, jaw, np.median(fabric[sdf < 0], 0) * 0.9
             if (sdf < 0).any() else fabric[0, 0], max(0.9, 0.03 * s))
  return (*paint.layer(), f"cloth_mask:{style}")


# ----------------------------------------------------------------------------- glasses


_TINTS = {"black": ((0.03, 0.03, 0.04), (0.12, 0.12, 0.13)),
          "brown": ((0.12, 0.07, 0.03), (0.32, 0.2, 0.1)),
          "green": ((0.04, 0.07, 0.05), (0.14, 0.2, 0.15)),
          "mirror-blue": ((0.05, 0.25, 0.6), (0.55, 0.8, 0.95)),
          "mirror-gold": ((0.55, 0.3, 0.05), (0.95, 0.75, 0.3)),
          "pink": ((0.45, 0.15, 0.3), (0.8, 0.45, 0.6))}
_FRAMES = {"black": (0.04, 0.04, 0.05), "tortoise": (0.3, 0.17, 0.07), "gold": (0.75, 0.6, 0.3),
           "silver": (0.7, 0.7, 0.72), "red": (0.75, 0.08, 0.1), "white": (0.9, 0.9, 0.9)}


def sunglasses(rng, face: Face):
  """Sunglasses: a lens around each eye (sized by that eye), frame, bridge, temples."""
  shape, s, lm = face.shape, face.s, face.landmarks
  xs, ys = _grid(shape)
  roll = face.roll
  up = -face.frame.down
  kind = ("round", "wayfarer", "aviator")[rng.integers(3)]
  power = {"round": 2.0, "wayfarer": 3.5, "aviator": 2.3}[kind]
  tint_name = list(_TINTS)[rng.integers(len(_TINTS))]
  frame_name = list(_FRAMES)[rng.integers(len(_FRAMES))]
  top_tint, bottom_tint = (np.asarray(c) for c in _TINTS[tint_name])
  frame_colour = np.asarray(_FRAMES[frame_name]) * rng.uniform(0.9, 1.1)
  size = rng.uniform(0.95, 1.2)
  aspect = rng.uniform(0.65, 0.85)
  rim = rng.uniform(0.025, 0.06) * s
  paint = _Paint(shape)
  lens_sdf, centres, widths = [], [], []
  for a, b in ((36, 39), (42, 45)):
    centre = lm[a:a + 6].mean(0) + up * 0.05 * s
    half_w = 0.9 * np.linalg.norm(lm[b] - lm[a]) * size
    half_h = half_w * aspect
    x, y = local(xs, ys, centre, roll)
    hh = np.where(y > 0, half_h * 1.12, half_h * 0.9) if kind == "aviator" else half_h
    sdf = superellipse_sdf(x, y, half_w, hh, power)
    # lens: darker towards the top, a diagonal reflection, a soft highlight
    t = np.clip(0.5 + y / (2 * half_h), 0.0, 1.0)[..., None]
    glass = top_tint * (1 - t) + bottom_tint * t
    streak = np.exp(-(((x * 0.6 + y * 0.8) / half_w + 0.25) / 0.18) ** 2)
    glass = glass + (0.35 if tint_name.startswith("mirror") else 0.18) * streak[..., None]
    glass = glass * dome(sdf, half_h, ambient=0.85, diffuse=0.2, specular=0.25)[..., None]
    paint.over(0.93 * alpha_of(sdf), np.clip(glass, 0, 1))
    lens_sdf.append(sdf)
    centres.append(centre)
    widths.append(half_w)
  lenses = np.minimum(*lens_sdf)
  ring = np.maximum(lenses - rim, -lenses)
  frame_shade = dome(ring - 0.5 * rim, rim, ambient=0.7, diffuse=0.35, specular=0.3)
  paint.over(alpha_of(ring), frame_colour * frame_shade[..., None])
  right = face.frame.right
  lift = up * 0.25 * widths[0] * aspect
  bridge = capsule_sdf(xs, ys, centres[0] + right * widths[0] * 0.95 + lift,
                       centres[1] - right * widths[1] * 0.95 + lift, 0.6 * rim)
  paint.over(alpha_of(bridge), frame_colour * 0.95)
  for centre, w, sign, ear in ((centres[0], widths[0], -1, 0), (centres[1], widths[1], 1, 16)):
    start = centre + sign * right * w * 0.98 + lift
    end = face.outward(lm[ear], 0.05) + up * 0.1 * s
    paint.over(alpha_of(capsule_sdf(xs, ys, start, end, 0.45 * rim)), frame_colour * 0.85)
  return (*paint.layer(), f"sunglasses:{kind}:{tint_name}:{frame_name}")


# ----------------------------------------------------------------------------- hand


def _hand_parts(x, y, unit, mirror, rng):
  """[(sdf, dome radius)] of palm, fingers (three phalanges each), thumb and forearm in
  the hand's frame (px; fingers towards -y, the arm towards +y)."""
  x = x * mirror
  parts = [(box_sdf(x, y, 0.6 * unit, 0.55 * unit, 0.3 * unit), 0.35 * unit),
           (capsule_sdf(x, y, (0.0, 0.45 * unit), (0.0, 5.0 * unit), 0.46 * unit), 0.46 * unit)]
  spread = rng.uniform(0.02, 0.12)
  curl = rng.uniform(0.85, 1.0)
  tips = []
  for i, (x0, length, r) in enumerate(zip((-0.42, -0.14, 0.14, 0.42), (0.8, 0.95, 0.9, 0.7),
                                          (0.13, 0.135, 0.13, 0.11))):
    ang = (i - 1.5) * spread
    d = np.array([np.sin(ang), -np.cos(ang)])
    p = np.array([x0, -0.42]) * unit
    for frac, rk in ((0.45, 1.0), (0.3, 0.92), (0.25, 0.85)):
      q = p + d * length * curl * frac * unit
      parts.append((capsule_sdf(x, y, p, q, r * rk * unit), r * rk * unit))
      p = q
    tips.append((p, d, r * 0.85 * unit))
  ta = rng.uniform(0.6, 1.1)
  d = np.array([np.sin(ta), -np.cos(ta)])
  p = np.array([0.48, 0.1]) * unit
  for frac, rk in ((0.55, 1.0), (0.45, 0.88)):
    q = p + d * 0.75 * frac * unit
    parts.append((capsule_sdf(x, y, p, q, 0.15 * rk * unit), 0.15 * rk * unit))
    p = q
  return parts, tips


def hand(rng, face: Face):
  """A hand and forearm in skin colours over the mouth, a cheek, an eye or the chin."""
  shape, s, lm = face.shape, face.s, face.landmarks
  xs, ys = _grid(shape)
  roll = face.roll
  side = 1.0 if rng.random() < 0.5 else -1.0
  pose = ("mouth", "cheek", "eye", "chin")[rng.integers(4)]
  mouth = lm[48:68].mean(0)
  if pose == "mouth":
    angle = roll - side * rng.uniform(1.2, 1.75)
    centre = mouth + face.frame.right * s * side * rng.uniform(0.05, 0.35) \
        + face.frame.down * s * rng.uniform(-0.05, 0.15)
  elif pose == "cheek":
    angle = roll + side * rng.uniform(-0.35, 0.15)
    centre = face.at(side * rng.uniform(0.55, 0.8), rng.uniform(0.1, 0.4))
  elif pose == "eye":
    angle = roll + side * rng.uniform(0.0, 0.5)
    centre = face.at(side * rng.uniform(0.4, 0.6), rng.uniform(-0.15, 0.15))
  else:
    angle = roll + rng.uniform(-0.3, 0.3)
    centre = face.at(rng.uniform(-0.2, 0.2), rng.uniform(1.0, 1.3))
  own = rng.random() < 0.6
  skin = skin_like_colour(rng, face) if own else procedural.skin_color(rng)
  unit = s * rng.uniform(0.95, 1.15)
  x, y = local(xs, ys, centre, angle)
  mirror = -side if pose == "mouth" else side
  parts, tips = _hand_parts(x, y, unit, mirror, rng)
  light = _light(rng)
  sdfs = np.stack([p[0] for p in parts])
  shades = np.stack([dome(sd, r, light, ambient=0.5, diffuse=0.55, specular=0.06)
                     for sd, r in parts])
  k = np.argmin(sdfs, 0)
  union = np.take_along_axis(sdfs, k[None], 0)[0]
  shade = np.take_along_axis(shades, k[None], 0)[0]
  blotch = 0.94 + 0.1 * _noise(rng, shape, 0.25 * s, 3)
  rgb = skin * (shade * blotch)[..., None]
  paint = _Paint(shape)
  paint.over(alpha_of(union), rgb)
  if rng.random() < 0.5:                       # the back of the hand: nails
    xm = x * mirror
    for tip, d, r in tips:
      c = tip - d * 0.55 * r
      along = (xm - c[0]) * d[0] + (y - c[1]) * d[1]
      across = -(xm - c[0]) * d[1] + (y - c[1]) * d[0]
      nail = superellipse_sdf(across, along, 0.7 * r, 0.75 * r, 2.0)
      tint = np.clip(skin * 1.08 + np.array([0.06, 0.0, 0.03]), 0, 1)
      paint.over(alpha_of(nail) * alpha_of(union), tint * shade[..., None])
  own_name = "own-skin" if own else "skin"
  return (*paint.layer(), f"hand:{pose}:{own_name}")


# ----------------------------------------------------------------------------- scarf, hair


def scarf(rng, face: Face):
  """A knitted scarf from below the image up to between the nose and the lower lip."""
  shape, s, lm = face.shape, face.s, face.landmarks
  xs, ys = _grid(shape)
  u, v = face.frame.local(xs, ys)
  v0 = face.uv(lm[33])[1] + (face.uv(lm[57])[1] - face.uv(lm[33])[1]) * rng.uniform(0.0, 0.9)
  wave = rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * u / rng.uniform(0.25, 0.5)
                                          + rng.uniform(0, 2 * np.pi))
  v_top = v0 + rng.uniform(-0.08, 0.12) * u * u + wave
  width = rng.uniform(2.2, 3.5)                # wrapped round the neck: wider than the face
  sdf = np.maximum(v_top - v, np.abs(u) - width) * s
  style = ("plain", "stripes", "plaid", "skin", "dark")[rng.integers(5)]
  if style == "plain":
    base = np.broadcast_to(saturated_colour(rng), shape + (3,))
  elif style == "stripes":
    colours = np.stack([saturated_colour(rng) for _ in range(rng.integers(2, 4))])
    band = (np.floor((v - v0) * s / rng.uniform(4.0, 10.0)).astype(int)) % len(colours)
    base = colours[band]
  elif style == "plaid":
    base = _fabric(rng, shape, "plaid")
  elif style == "skin":
    base = np.broadcast_to(skin_like_colour(rng, face), shape + (3,))
  else:
    base = np.broadcast_to(np.full(3, rng.uniform(0.07, 0.2)), shape + (3,))
  rib_px = rng.uniform(2.5, 4.0)
  rib = 0.84 + 0.16 * np.abs(np.sin(np.pi * u * s / rib_px))
  rows = 0.95 + 0.05 * np.sin(2 * np.pi * v * s / rng.uniform(2.0, 3.0))
  theta = rng.uniform(-0.6, 0.6)
  drape = 0.84 + 0.16 * np.sin(2 * np.pi * (u * np.cos(theta) + v * np.sin(theta))
                               / rng.uniform(0.35, 0.6))
  folds = drape * (0.8 + 0.3 * _noise(rng, shape, 0.6 * s, 3))
  t = np.clip(-sdf / (0.2 * s), 0.0, 1.0)      # the rolled top edge: a lit cylinder
  roll_top = np.where(t < 1, 0.7 + 0.4 * np.sin(np.pi * t), 0.85)
  sides = 0.8 + 0.2 * np.cos(np.clip(u / width * 1.3, -1.5, 1.5))
  paint = _Paint(shape)
  paint.over(alpha_of(sdf), base * (rib * rows * folds * roll_top * sides)[..., None])
  return (*paint.layer(), f"scarf:{style}")


_HAIR = {"black": (0.05, 0.04, 0.04), "dark-brown": (0.17, 0.11, 0.07),
         "brown": (0.36, 0.23, 0.13), "blonde": (0.78, 0.64, 0.42), "red": (0.55, 0.24, 0.1),
         "grey": (0.62, 0.61, 0.6)}


def _strand(paint, xs, ys, points, radius, colour, opacity):
  """Paints a polyline [N, 2] of ``radius`` px (only in its bounding box)."""
  lo = np.floor(points.min(0) - radius - 2).astype(int)
  hi = np.ceil(points.max(0) + radius + 2).astype(int)
  h, w = xs.shape
  c0, c1 = max(lo[0], 0), min(hi[0], w)
  r0, r1 = max(lo[1], 0), min(hi[1], h)
  if c0 >= c1 or r0 >= r1:
    return
  win = (slice(r0, r1), slice(c0, c1))
  wx, wy = xs[win], ys[win]
  d = np.full(wx.shape, np.inf)
  for a, b in zip(points[:-1], points[1:]):
    d = np.minimum(d, capsule_sdf(wx, wy, a, b, radius))
  paint.over(alpha_of(d) * opacity, colour, win)


def _lock(paint, xs, ys, face: Face, rng, root, ctrl, tip, root_w, tip_w, count, base):
  """A lock of ``count`` nearly parallel strands along the quadratic curve root-ctrl-tip
  (face units), ``root_w`` wide at the root narrowing to ``tip_w``."""
  t = np.linspace(0.0, 1.0, 20)[:, None]
  centre = (1 - t) ** 2 * root + 2 * (1 - t) * t * ctrl + t ** 2 * tip
  tangent = np.gradient(centre, axis=0)
  normal = np.stack([-tangent[:, 1], tangent[:, 0]], -1)
  normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
  half = 0.5 * (root_w * (1 - t) + tip_w * t)
  sheen_at = rng.uniform(0.2, 0.5)
  sheen = 1.0 + 0.3 * np.exp(-((t[:, 0] - sheen_at) / 0.12) ** 2)
  for _ in range(count):
    o = rng.uniform(-1.0, 1.0) * (1.6 if rng.random() < 0.12 else 1.0)   # a few strays
    wiggle = rng.normal(0, 0.03) * np.sin(np.pi * t * rng.uniform(1.0, 3.0) + rng.uniform(0, 6))
    keep = t[:, 0] <= rng.uniform(0.7, 1.0)      # strands end at different lengths
    pts_uv = (centre + normal * (o * half + wiggle))[keep]
    pts = np.stack([face.at(p[0], p[1]) for p in pts_uv])
    gain = rng.uniform(0.75, 1.25) * sheen[keep].mean()
    colour = np.clip(base * gain + 0.02, 0, 1)
    opacity = rng.uniform(0.7, 1.0) * (1.0 - 0.5 * min(abs(o), 1.0) ** 2)   # thinner at the sides
    _strand(paint, xs, ys, pts, rng.uniform(0.35, 0.7), colour, opacity)


def hair(rng, face: Face):
  """A lock of hair across a brow and an eye, or a fringe of several locks over the brows."""
  shape = face.shape
  xs, ys = _grid(shape)
  name = list(_HAIR)[rng.integers(len(_HAIR))]
  base = np.asarray(_HAIR[name])
  if rng.random() < 0.12:
    name, base = "dyed", saturated_colour(rng) * 0.8
  paint = _Paint(shape)
  style = "lock" if rng.random() < 0.6 else "fringe"
  if style == "lock":
    side = 1.0 if rng.random() < 0.5 else -1.0
    root = np.array([side * rng.uniform(0.0, 0.6), rng.uniform(-1.7, -1.3)])
    tip = np.array([side * rng.uniform(0.3, 1.0), rng.uniform(-0.1, 0.6)])
    ctrl = 0.5 * (root + tip) + np.array([side * rng.uniform(-0.1, 0.35), 0.0])
    _lock(paint, xs, ys, face, rng, root, ctrl, tip, rng.uniform(0.35, 0.7),
          rng.uniform(0.08, 0.2), int(rng.integers(45, 91)), base)
  else:
    n = int(rng.integers(5, 9))
    lean = rng.normal(0.0, 0.2)
    for x0 in np.linspace(-1.0, 1.0, n) + rng.normal(0, 0.05, n):
      root = np.array([x0, rng.uniform(-1.75, -1.5)])
      tip = root + np.array([lean + rng.normal(0, 0.08), rng.uniform(1.0, 1.45)])
      ctrl = 0.5 * (root + tip) + np.array([rng.normal(0, 0.08), 0.0])
      _lock(paint, xs, ys, face, rng, root, ctrl, tip, 2.4 / n, rng.uniform(0.05, 0.15),
            int(rng.integers(12, 25)), base)
  return (*paint.layer(), f"hair:{style}:{name}")


# ----------------------------------------------------------------------------- objects


def microphone(rng, face: Face):
  """A handheld microphone in front of the mouth: grille or foam head, handle, flag."""
  shape, s, lm = face.shape, face.s, face.landmarks
  xs, ys = _grid(shape)
  light = _light(rng)
  head_c = (lm[48:68].mean(0) + face.frame.down * s * rng.uniform(0.15, 0.55)
            + face.frame.right * s * rng.uniform(-0.45, 0.45))
  r = s * rng.uniform(0.28, 0.4)
  angle = face.roll + rng.uniform(-0.6, 0.6)
  along = np.array([-np.sin(angle), np.cos(angle)])       # the handle's direction (down)
  paint = _Paint(shape)
  handle_colour = np.full(3, 0.1) if rng.random() < 0.6 else np.full(3, 0.6)
  top_r, bottom_r = 0.45 * r, 0.33 * r
  mid = head_c + along * (0.6 * r + 1.6 * s)
  handle = np.minimum(capsule_sdf(xs, ys, head_c + along * 0.6 * r, mid, top_r),
                      capsule_sdf(xs, ys, mid, head_c + along * 4.0 * s, bottom_r))
  paint.over(alpha_of(handle), handle_colour * dome(handle, top_r, light, specular=0.3)[..., None])
  flag = rng.random() < 0.4
  if flag:
    fc = head_c + along * (r + 0.45 * s)
    x, y = local(xs, ys, fc, angle)
    box = box_sdf(x, y, 0.42 * s, 0.36 * s, 0.04 * s)
    colour = saturated_colour(rng)
    shade = 0.85 + 0.15 * np.clip(-x / (0.42 * s), -1, 1)
    logo = alpha_of(box_sdf(x, y - 0.05 * s, 0.3 * s, 0.07 * s))
    rgb = colour * shade[..., None] * (1 - logo[..., None]) + 0.95 * logo[..., None]
    paint.over(alpha_of(box), rgb)
  x, y = local(xs, ys, head_c, angle)
  head = np.hypot(x, y) - r
  sphere = dome(head, r, light, ambient=0.45, diffuse=0.6, specular=0.35, shininess=30)
  style = "grille" if rng.random() < 0.6 else "foam"
  if style == "grille":
    p = rng.uniform(2.5, 4.0)
    holes = np.abs(np.cos(np.pi * (x + y) / p) * np.cos(np.pi * (x - y) / p))
    metal = np.full(3, rng.uniform(0.55, 0.8)) if rng.random() < 0.7 else np.full(3, 0.15)
    rgb = metal * (0.55 + 0.45 * holes)[..., None]
  else:
    colour = saturated_colour(rng) if rng.random() < 0.75 else np.full(3, 0.08)
    rgb = colour * (0.8 + 0.3 * _noise(rng, shape, 2.0, 2))[..., None]
    style = "foam"
  ring = capsule_sdf(xs, ys, head_c + along * 0.75 * r, head_c + along * 1.0 * r, 0.5 * r)
  paint.over(alpha_of(ring), handle_colour * 1.2 * dome(ring, 0.5 * r, light)[..., None])
  paint.over(alpha_of(head), rgb * sphere[..., None])
  return (*paint.layer(), f"microphone:{style}{':flag' if flag else ''}")


def held_object(rng, face: Face):
  """A phone, cup, ball or card, skin-coloured or saturated, held in front of the face."""
  shape, s, lm = face.shape, face.s, face.landmarks
  xs, ys = _grid(shape)
  light = _light(rng)
  anchors = (lm[48:68].mean(0), lm[30], face.at(-0.6, 0.2), face.at(0.6, 0.2),
             lm[36:42].mean(0), lm[42:48].mean(0), lm[8])
  centre = anchors[rng.integers(len(anchors))] + rng.normal(0, 0.15 * s, 2)
  angle = face.roll + rng.uniform(-0.6, 0.6)
  x, y = local(xs, ys, centre, angle)
  skin_like = rng.random() < 0.5
  colour = skin_like_colour(rng, face) if skin_like else saturated_colour(rng)
  tone = "skin" if skin_like else "saturated"
  kind = ("phone", "cup", "ball", "card")[rng.integers(4)]
  paint = _Paint(shape)
  k = rng.uniform(0.9, 1.15)
  if kind == "phone":
    hw, hh = 0.55 * s * k, 1.15 * s * k
    body = box_sdf(x, y, hw, hh, 0.14 * s)
    shade = dome(body, 0.08 * s, light, ambient=0.75, diffuse=0.3, specular=0.15)
    grad = 0.9 + 0.15 * (x / hw - y / hh) * 0.5
    paint.over(alpha_of(body), colour * (shade * grad)[..., None])
    cam = box_sdf(x + 0.25 * s * k, y + 0.85 * s * k, 0.17 * s, 0.17 * s, 0.06 * s)
    paint.over(alpha_of(cam), np.full(3, 0.08))
  elif kind == "cup":
    hw, hh = 0.5 * s * k, 0.65 * s * k
    body = box_sdf(x, y, hw, hh, 0.05 * s)
    cyl = 0.62 + 0.45 * np.cos(np.clip(x / hw, -1, 1) * 1.2 + 0.35)
    handle = np.abs(np.hypot(x - hw, y) - 0.25 * s * k) - 0.06 * s
    handle = np.where(x > hw * 0.9, handle, np.inf)
    paint.over(alpha_of(handle), colour * 0.85)
    paint.over(alpha_of(body), colour * cyl[..., None])
    rim = superellipse_sdf(x, y + hh, hw, 0.12 * s * k, 2.0)
    paint.over(alpha_of(rim), colour * 0.5 * cyl[..., None])
  elif kind == "ball":
    radius = rng.uniform(0.45, 0.75) * s
    body = np.hypot(x, y) - radius
    paint.over(alpha_of(body), colour * dome(body, radius, light, ambient=0.35, diffuse=0.75,
                                               specular=0.35, shininess=40)[..., None])
  else:
    hw, hh = rng.uniform(0.7, 1.0) * s, rng.uniform(0.45, 0.7) * s
    body = box_sdf(x, y, hw, hh, 0.03 * s)
    lines = (np.abs(y - hh * 0.1) < hh * 0.6) & (np.abs(x) < hw * 0.75) \
        & ((np.floor(y / 3.0) % 2) == 0)
    grad = 0.88 + 0.12 * np.clip(0.5 - y / (2 * hh), 0, 1)
    rgb = colour * grad[..., None] * np.where(lines, 0.55, 1.0)[..., None]
    paint.over(alpha_of(body), rgb)
  return (*paint.layer(), f"object:{kind}:{tone}")


# ----------------------------------------------------------------------------- synthetic


def synthetic(rng, face: Face):
  """The synthetic-face generator's occluders (shapes, hands, masks, glasses) over
  15-45 % of the landmark hull. :func:`focus_jax.data.occluders.occlude` composites
  its layers over an image; it is linear in the image, so compositing the same draw
  over black and over white gives the exact combined layer:
  ``alpha = 1 − (white − black)``, premultiplied colour = black."""
  shape = face.shape
  target = rng.uniform(0.15, 0.45)
  twin = copy.deepcopy(rng)
  args = dict(face=face.hull, frame=face.frame, target=target,
              kinds=("shape", "hand", "mask", "glasses"), max_layers=2)
  black, _, _, described = synthetic_occluders.occlude(rng, np.zeros(shape + (3,), np.float32),
                                                       **args)
  white, _, _, _ = synthetic_occluders.occlude(twin, np.ones(shape + (3,), np.float32), **args)
  alpha = np.clip(1.0 - (white.astype(np.float64) - black).mean(-1), 0.0, 1.0)
  rgb = np.clip(black / np.maximum(alpha, 1e-6)[..., None], 0.0, 1.0)
  return alpha, rgb, "synthetic:" + "+".join(d.split(":")[0] for d in described)
