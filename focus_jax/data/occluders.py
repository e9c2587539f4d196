"""Occluders for synthetic faces: procedural shapes, hands, face masks, glasses, and
real RGBA images, placed to cover a chosen fraction of the face (host side, NumPy).

An occluder is an ``(alpha [H, W], rgb [H, W, 3])`` layer over the image; a pixel
counts as occluded where ``alpha >= 0.5``. :func:`occlude` adds layers until the
union covers the target fraction of the face pixels:

* ``'shape'``: ellipse, rounded rectangle, star polygon or noise blob with a
  random texture (:mod:`focus_jax.data.procedural`), scaled about an anchor point
  on the face until the coverage is met (bisection on the scale);
* ``'hand'``: palm, fingers, thumb and forearm in a skin tone, the arm coming in
  from outside the face;
* ``'mask'``: a face-mask-like layer over the lower face (the face region grown
  below the chin, under a curved top edge whose height is chosen so that exactly
  the target fraction is covered), surgical pleats or cloth textures;
* ``'glasses'``: opaque lenses over the eyes with bridge and temples;
* ``'image'``: a real occluder from a folder of RGBA PNGs (alpha = occluder).

Placement uses a :class:`FaceFrame` built from the projected landmarks (eye
centres, nose tip, mouth), or from the face mask when landmarks are undefined.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from focus_jax.data import procedural

KINDS = ("shape", "hand", "mask", "glasses", "image")
_SPRITE = 256   # procedural sprites are drawn on this canvas (local coords [-1, 1]^2)


@dataclasses.dataclass(frozen=True)
class FaceFrame:
  """Where the face is in the image (pixels).

  Attributes:
    centre: [2] between the eyes and the mouth.
    right: [2] unit vector from the image-left eye to the image-right eye.
    down: [2] unit vector perpendicular to ``right``, towards the chin.
    scale: eye-centre distance in pixels (the unit of all sizes).
    points: named anchor points ([2] each): eye_l, eye_r, nose, mouth, cheek_l,
      cheek_r, chin, forehead.
  """
  centre: np.ndarray
  right: np.ndarray
  down: np.ndarray
  scale: float
  points: dict

  def local(self, xs, ys):
    """Image pixels -> face-frame coordinates (u right, v down) in units of scale."""
    dx, dy = xs - self.centre[0], ys - self.centre[1]
    u = (dx * self.right[0] + dy * self.right[1]) / self.scale
    v = (dx * self.down[0] + dy * self.down[1]) / self.scale
    return u, v

  def to_image(self, u, v) -> np.ndarray:
    return self.centre + self.scale * (u * self.right + v * self.down)


def face_frame(landmarks, face_mask) -> FaceFrame:
  """The :class:`FaceFrame` of a rendered face.

  Args:
    landmarks: [68, 2] pixels (nan where undefined).
    face_mask: [H, W] bool face pixels.
  """
  lm = np.asarray(landmarks, np.float64)
  ys, xs = np.nonzero(face_mask)
  if len(xs) == 0:
    h, w = face_mask.shape
    xs, ys = np.array([w / 2]), np.array([h / 2])
  pts = np.stack([xs, ys], -1) + 0.5
  mcentre = pts.mean(0)
  eyes_ok = np.isfinite(lm[[36, 39, 42, 45]]).all()
  mouth_ok = np.isfinite(lm[[48, 54]]).all()
  if eyes_ok and mouth_ok:
    eye_l, eye_r = lm[[36, 39]].mean(0), lm[[42, 45]].mean(0)
    mouth = lm[[48, 54]].mean(0)
    d = eye_r - eye_l
    scale = float(np.linalg.norm(d))
    right = d / max(scale, 1e-6)
    down = np.array([-right[1], right[0]])
    if np.dot(mouth - 0.5 * (eye_l + eye_r), down) < 0:   # a mirrored model
      down = -down
    centre = 0.5 * (0.5 * (eye_l + eye_r) + mouth)
    nose = lm[30] if np.isfinite(lm[30]).all() else centre
  else:
    cov = np.cov((pts - mcentre).T) if len(pts) > 2 else np.eye(2)
    scale = float(2.0 * np.sqrt(max(np.linalg.eigvalsh(cov).min(), 1.0)) * 0.6)
    right, down = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    centre = mcentre
    eye_l = centre + scale * np.array([-0.5, -0.45])
    eye_r = centre + scale * np.array([0.5, -0.45])
    mouth = centre + scale * np.array([0.0, 0.5])
    nose = centre
  scale = max(scale, 2.0)
  frame = FaceFrame(centre, right, down, scale, {})
  points = dict(eye_l=eye_l, eye_r=eye_r, nose=nose, mouth=mouth,
                cheek_l=frame.to_image(-0.7, 0.25), cheek_r=frame.to_image(0.7, 0.25),
                chin=frame.to_image(0.0, 1.15), forehead=frame.to_image(0.0, -1.0))
  return dataclasses.replace(frame, points=points)


def _grid(shape):
  ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32) + 0.5
  return xs, ys


def _coverage(alpha, face, existing) -> float:
  n = max(int(face.sum()), 1)
  return float(((alpha >= 0.5) | existing)[face].sum()) / n


# ----------------------------------------------------------------------------- sprites


@dataclasses.dataclass
class Sprite:
  """An RGBA picture in its own frame, placed by anchor, rotation and scale.

  Attributes:
    rgba: [S, S', 4] float32.
    anchor: [2] sprite pixel placed on the image anchor point.
    extent: sprite pixels that map to ``scale`` image pixels.
    extend: clamp at the sprite border instead of transparency (an arm that
      continues out of the sprite).
  """
  rgba: np.ndarray
  anchor: np.ndarray
  extent: float
  extend: bool = False

  def matrix(self, centre, angle: float, scale: float) -> np.ndarray:
    """[2, 3] image -> sprite pixel coordinates."""
    k = self.extent / scale
    c, s = np.cos(angle), np.sin(angle)
    lin = k * np.array([[c, s], [-s, c]])   # rotate by -angle, then scale
    return np.concatenate([lin, (self.anchor - lin @ np.asarray(centre))[:, None]], 1)

  def place(self, shape, centre, angle: float, scale: float, alpha_only: bool = False):
    """Renders the sprite into an image of ``shape``: alpha [H, W] (and rgb [H, W, 3])."""
    out_to_src = self.matrix(centre, angle, scale)
    channels = self.rgba[..., 3:] if alpha_only else self.rgba
    mode = "nearest" if self.extend else "constant"
    out = _warp(channels, out_to_src, shape, mode)
    if alpha_only:
      return out[..., 0]
    return out[..., 3], out[..., :3]


  def alpha_at(self, points, centre, angle: float, scale: float) -> np.ndarray:
    """Sprite alpha at [N, 2] image points (bilinear), for fast coverage tests."""
    m = self.matrix(centre, angle, scale)
    sp = points @ m[:, :2].T + m[:, 2] - 0.5            # sprite index coordinates (x, y)
    mode = "nearest" if self.extend else "constant"
    return ndimage.map_coordinates(self.rgba[..., 3], [sp[:, 1], sp[:, 0]], order=1, mode=mode,
                                   cval=0.0, prefilter=False)


def _warp(image, out_to_src, shape, mode):
  lin = out_to_src[:, :2]
  offset = (lin @ np.array([0.5, 0.5]) + out_to_src[:, 2] - 0.5)[::-1]
  lin_rc = lin[::-1, ::-1]
  return np.stack([ndimage.affine_transform(image[..., c], lin_rc, offset=offset,
                                            output_shape=tuple(shape), order=1, mode=mode,
                                            cval=0.0, prefilter=False)
                   for c in range(image.shape[-1])], -1).astype(np.float32)


def _sdf_alpha(sdf, pixels_per_unit):
  return np.clip(0.5 - sdf * pixels_per_unit, 0.0, 1.0).astype(np.float32)


def _capsule(xs, ys, a, b, r):
  pa = np.stack([xs - a[0], ys - a[1]], -1)
  ba = np.asarray(b, np.float32) - np.asarray(a, np.float32)
  h = np.clip((pa @ ba) / max(float(ba @ ba), 1e-9), 0.0, 1.0)
  d = pa - h[..., None] * ba
  return np.sqrt((d * d).sum(-1)) - r


def shape_sprite(rng: np.random.Generator):
  """A textured star-shaped primitive; returns (Sprite, description)."""
  n = _SPRITE
  xs, ys = _grid((n, n))
  u, v = (xs / n) * 2 - 1, (ys / n) * 2 - 1
  r = np.sqrt(u * u + v * v)
  theta = np.arctan2(v, u)
  kind = ("ellipse", "rectangle", "polygon", "blob")[rng.integers(4)]
  rot = rng.uniform(0, np.pi)
  if kind == "ellipse":
    a, b = 0.9, 0.9 * rng.uniform(0.35, 1.0)
    uu, vv = u * np.cos(rot) + v * np.sin(rot), -u * np.sin(rot) + v * np.cos(rot)
    sdf = (np.sqrt((uu / a) ** 2 + (vv / b) ** 2) - 1.0) * min(a, b)
  elif kind == "rectangle":
    a, b = 0.85, 0.85 * rng.uniform(0.2, 1.0)
    rr = rng.uniform(0.0, 0.5) * b
    uu, vv = u * np.cos(rot) + v * np.sin(rot), -u * np.sin(rot) + v * np.cos(rot)
    qx, qy = np.abs(uu) - (a - rr), np.abs(vv) - (b - rr)
    sdf = (np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
           + np.minimum(np.maximum(qx, qy), 0) - rr)
  elif kind == "polygon":
    k = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = rng.uniform(0.45, 0.95, k)
    # radial boundary R(theta) by linear interpolation of the vertex radii
    ext_a = np.concatenate([angles - 2 * np.pi, angles, angles + 2 * np.pi])
    ext_r = np.tile(radii, 3)
    boundary = np.interp(theta, ext_a, ext_r)
    sdf = (r - boundary) * 0.7
  else:
    coeffs = rng.normal(0, 1, (6, 2)) / (np.arange(1, 7)[:, None] ** 1.2)
    boundary = 0.65 + 0.12 * sum(coeffs[i, 0] * np.cos((i + 1) * theta)
                                 + coeffs[i, 1] * np.sin((i + 1) * theta) for i in range(6))
    sdf = (r - np.clip(boundary, 0.25, 0.95)) * 0.8
  alpha = _sdf_alpha(sdf, n / 2)
  tex, tex_kind = procedural.texture(rng, n, n)
  rgba = np.concatenate([tex, alpha[..., None]], -1)
  return Sprite(rgba, np.array([n / 2, n / 2]), n / 2), f"shape:{kind}:{tex_kind}"


def hand_sprite(rng: np.random.Generator):
  """A hand with forearm (pointing up in its frame, arm leaving at the bottom)."""
  n = _SPRITE
  xs, ys = _grid((n, n))
  u, v = (xs / n) * 2 - 1, (ys / n) * 2 - 1   # [-1, 1], v down
  mirror = -1.0 if rng.random() < 0.5 else 1.0
  u = u * mirror
  palm_c = np.array([0.0, 0.2])
  palm = np.sqrt(((u - palm_c[0]) / 0.34) ** 2 + ((v - palm_c[1]) / 0.3) ** 2) - 1.0
  sdf = palm * 0.3
  sdf = np.minimum(sdf, _capsule(u, v, (0.0, 0.35), (0.0, 1.2), 0.22))   # forearm
  spread = rng.uniform(0.05, 0.2)
  curl = rng.uniform(0.6, 1.0)
  lengths = np.array([0.42, 0.52, 0.55, 0.48]) * curl * rng.uniform(0.9, 1.1, 4)
  for k, x0 in enumerate((-0.24, -0.08, 0.08, 0.24)):
    ang = -np.pi / 2 + (k - 1.5) * spread
    base = np.array([x0, -0.02])
    tip = base + lengths[k] * np.array([np.cos(ang), np.sin(ang)])
    sdf = np.minimum(sdf, _capsule(u, v, base, tip, 0.075))
  thumb_base = np.array([0.3, 0.3])
  ta = rng.uniform(-1.2, -0.5)
  sdf = np.minimum(sdf, _capsule(u, v, thumb_base,
                                 thumb_base + 0.38 * np.array([np.cos(ta), np.sin(ta)]), 0.085))
  alpha = _sdf_alpha(sdf, n / 2)
  skin = procedural.skin_color(rng)
  shade = 0.55 + 0.45 * np.clip(-sdf / 0.06, 0.0, 1.0)    # darker at the outline and between fingers
  grain = procedural.fractal_noise(rng, n, n, 24.0, octaves=3)
  rgb = skin * (shade * (0.9 + 0.2 * grain))[..., None]
  rgba = np.concatenate([np.clip(rgb, 0, 1), alpha[..., None]], -1).astype(np.float32)
  anchor = np.array([n / 2, (palm_c[1] * 0.5 + 0.5) * n])
  return Sprite(rgba, anchor, n / 2, extend=True), "hand"


@functools.lru_cache(maxsize=8)
def load_occluder_images(folder: str) -> tuple:
  """RGBA PNGs of a folder as (name, [H, W, 4] float32) pairs (alpha required)."""
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(folder):
    raise DataError(f"occluder folder not found: {folder}")
  out = []
  for name in sorted(os.listdir(folder)):
    if not name.lower().endswith(".png"):
      continue
    try:
      img = images.read_pixels(os.path.join(folder, name))
    except Exception:  # pylint: disable=broad-except
      continue
    if img.ndim != 3 or img.shape[-1] != 4:
      continue
    scale = 255.0 if img.dtype == np.uint8 else 65535.0 if img.dtype == np.uint16 else 1.0
    out.append((name, img.astype(np.float32) / scale))
  if not out:
    raise DataError(f"{folder}: no RGBA .png occluder images (with an alpha channel)")
  return tuple(out)


def image_sprite(rng: np.random.Generator, images: Sequence):
  """A real occluder image as a Sprite anchored at its alpha centroid."""
  name, rgba = images[rng.integers(len(images))]
  if rng.random() < 0.5:
    rgba = rgba[:, ::-1]
  a = rgba[..., 3]
  ys, xs = np.nonzero(a >= 0.5)
  if len(xs) == 0:
    anchor = np.array([rgba.shape[1] / 2, rgba.shape[0] / 2])
  else:
    anchor = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
  rgba = rgba.copy()
  rgba[..., :3] = np.clip(rgba[..., :3] * rng.uniform(0.7, 1.15), 0, 1)
  return Sprite(np.ascontiguousarray(rgba), anchor, max(rgba.shape[:2]) / 2), f"image:{name}"


def _fit_sprite(sprite: Sprite, shape, centre, angle, face, existing, target,
                lo: float, hi: float, iters: int = 14) -> float:
  """Bisection on the scale (pixels) so that the union coverage meets ``target``.

  Only the face pixels not yet occluded are sampled (the coverage of the final
  placement is the same test at the same pixel centres).
  """
  del shape
  n_face = max(int(face.sum()), 1)
  n_done = int((face & existing).sum())
  ys, xs = np.nonzero(face & ~existing)
  pts = np.stack([xs, ys], -1).astype(np.float64) + 0.5

  def coverage(scale):
    return (n_done + int((sprite.alpha_at(pts, centre, angle, scale) >= 0.5).sum())) / n_face

  if coverage(hi) <= target:
    return hi
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    cov = coverage(mid)
    if abs(cov - target) < 0.005:
      return mid
    if cov < target:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- anchored


def mask_layer(rng, shape, frame: FaceFrame, face, existing, target):
  """A face-mask-like layer over the lower face covering ``target`` of the face."""
  xs, ys = _grid(shape)
  u, v = frame.local(xs, ys)
  # Where a mask can be: the face grown below the chin and a little to the sides.
  shift = frame.down * frame.scale * rng.uniform(0.2, 0.45)
  moved = ndimage.shift(face.astype(np.float32), (shift[1], shift[0]), order=0) > 0.5
  support = face | moved
  grow = max(int(round(frame.scale * rng.uniform(0.03, 0.1))), 1)
  support = ndimage.binary_dilation(support, iterations=grow)
  support &= v > -0.6   # never above the brows, whatever the target
  k = rng.uniform(0.2, 0.6)
  f = v - k * u * u
  occluded_face = face & ~existing
  vals = f[occluded_face & support]
  if len(vals) == 0:
    return None
  need = max(target * face.sum() - (existing & face).sum(), 0) / max(len(vals), 1)
  v0 = np.quantile(vals, 1.0 - min(max(need, 0.0), 1.0))
  alpha = np.clip(0.5 + (f - v0) * frame.scale, 0.0, 1.0) * support
  alpha = ndimage.gaussian_filter(alpha.astype(np.float32), 0.5)
  style = ("surgical", "cloth", "n95")[rng.integers(3)]
  if style == "surgical":
    base = np.array([[0.55, 0.75, 0.9], [0.9, 0.92, 0.95], [0.15, 0.15, 0.18],
                     [0.6, 0.85, 0.75]][rng.integers(4)], np.float32)
    pleat = 0.88 + 0.12 * (np.sin((v - v0) * 2 * np.pi / rng.uniform(0.12, 0.2)) > 0)
    rgb = base * pleat[..., None]
  elif style == "n95":
    base = np.array([0.93, 0.93, 0.9], np.float32) * rng.uniform(0.85, 1.0)
    rgb = np.broadcast_to(base, shape + (3,)).copy()
  else:
    rgb, _ = procedural.texture(rng, shape[0], shape[1])
  shade = 0.8 + 0.2 * np.clip(1.0 - np.abs(u), 0.0, 1.0)
  rgb = np.clip(rgb * shade[..., None], 0, 1).astype(np.float32)
  return alpha.astype(np.float32), rgb, f"mask:{style}"


def glasses_layer(rng, shape, frame: FaceFrame, face, existing, target):
  """Opaque glasses over the eyes (lens size chosen towards ``target``, within limits)."""
  xs, ys = _grid(shape)
  u, v = frame.local(xs, ys)
  el = np.array(frame.local(*frame.points["eye_l"]))
  er = np.array(frame.local(*frame.points["eye_r"]))
  aspect = rng.uniform(0.55, 0.85)
  color = procedural.random_color(rng, value=(0.05, 0.9))

  def sdf_at(k):
    rx, ry = 0.3 * k, 0.3 * k * aspect
    d = np.full(u.shape, np.inf, np.float32)
    for c in (el, er):
      d = np.minimum(d, (np.sqrt(((u - c[0]) / rx) ** 2 + ((v - c[1]) / ry) ** 2) - 1) * ry)
    d = np.minimum(d, _capsule(u, v, (el[0] + rx * 0.9, el[1] - 0.05),
                               (er[0] - rx * 0.9, er[1] - 0.05), 0.025))
    for c, s in ((el, -1), (er, 1)):
      d = np.minimum(d, _capsule(u, v, (c[0] + s * rx, c[1] - 0.05),
                                 (c[0] + s * (rx + 0.45), c[1] - 0.1), 0.025))
    return d

  lo, hi = 0.75, 1.7
  for _ in range(10):
    mid = 0.5 * (lo + hi)
    cov = _coverage(_sdf_alpha(sdf_at(mid), frame.scale), face, existing)
    if cov < target:
      lo = mid
    else:
      hi = mid
  alpha = _sdf_alpha(sdf_at(0.5 * (lo + hi)), frame.scale)
  tex, _ = procedural.texture(rng, shape[0], shape[1],
                              kind=("solid", "dots", "noise")[rng.integers(3)])
  rgb = np.clip(0.5 * tex + 0.5 * color, 0, 1).astype(np.float32)
  return alpha, rgb, "glasses"


# ----------------------------------------------------------------------------- composite


def _anchor(rng, frame: FaceFrame, face) -> np.ndarray:
  names = ("eye_l", "eye_r", "nose", "mouth", "cheek_l", "cheek_r", "chin", "forehead")
  if rng.random() < 0.7:
    p = frame.points[names[rng.integers(len(names))]]
    return p + rng.normal(0, 0.15 * frame.scale, 2)
  ys, xs = np.nonzero(face)
  if len(xs) == 0:
    return frame.centre
  k = rng.integers(len(xs))
  return np.array([xs[k] + 0.5, ys[k] + 0.5])


def occlude(rng: np.random.Generator, image, face, frame: FaceFrame, target: float,
            kinds: Sequence[str] = ("shape", "hand", "mask", "glasses"),
            weights: Optional[dict] = None, images: Sequence = (),
            max_layers: int = 3):
  """Composites occluders over ``image`` until ``target`` of the face is covered.

  Args:
    rng: random stream.
    image: [H, W, 3] float32 image (face and background).
    face: [H, W] bool face pixels.
    frame: the face's :class:`FaceFrame`.
    target: fraction of the face pixels to cover (0 = none).
    kinds: occluder kinds to draw from (see :data:`KINDS`).
    weights: {kind: relative probability} (default uniform over ``kinds``).
    images: real occluders for ``'image'`` (from :func:`load_occluder_images`).
    max_layers: at most this many occluders.

  Returns:
    (image [H, W, 3], occluder mask [H, W] bool (alpha >= 0.5), coverage of the
    face, list of occluder descriptions).
  """
  image = np.asarray(image, np.float32).copy()
  shape = image.shape[:2]
  occ = np.zeros(shape, bool)
  described = []
  if target <= 0 or not face.any():
    return image, occ, 0.0, described
  kinds = [k for k in kinds if k != "image" or len(images)]
  if weights is not None:
    kinds = [k for k in kinds if weights.get(k, 0.0) > 0]
  if not kinds:
    return image, occ, 0.0, described
  w = np.asarray([1.0 if weights is None else weights[k] for k in kinds], np.float64)
  p = w / w.sum()
  coverage = 0.0
  for layer in range(max_layers):
    kind = kinds[rng.choice(len(kinds), p=p)]
    if layer > 0 and kind in ("mask", "glasses") and any(d.startswith(kind) for d in described):
      kind = "shape"
    result = _layer(rng, kind, shape, frame, face, occ, target, images)
    if result is None:
      continue
    alpha, rgb, desc = result
    image = image * (1 - alpha[..., None]) + rgb * alpha[..., None]
    occ |= alpha >= 0.5
    described.append(desc)
    coverage = float(occ[face].mean())
    if coverage >= target - 0.02:
      break
  return np.clip(image, 0, 1), occ, coverage, described


def _layer(rng, kind, shape, frame, face, existing, target, images):
  if kind == "mask":
    return mask_layer(rng, shape, frame, face, existing, target)
  if kind == "glasses":
    return glasses_layer(rng, shape, frame, face, existing, target)
  if kind == "shape":
    sprite, desc = shape_sprite(rng)
    angle = rng.uniform(0, 2 * np.pi)
  elif kind == "hand":
    sprite, desc = hand_sprite(rng)
    # The arm comes from below or the sides: rotate the upward hand by up to +-110 deg
    # relative to the face's "up".
    roll = np.arctan2(frame.right[1], frame.right[0])
    angle = roll + rng.uniform(-1.9, 1.9)
  elif kind == "image":
    sprite, desc = image_sprite(rng, images)
    angle = rng.uniform(-0.5, 0.5) + np.arctan2(frame.right[1], frame.right[0])
  else:
    raise ValueError(f"occlude: unknown occluder kind {kind!r}; use {KINDS}")
  centre = _anchor(rng, frame, face)
  scale = _fit_sprite(sprite, shape, centre, angle, face, existing, target,
                      lo=1.0, hi=4.0 * frame.scale)
  alpha, rgb = sprite.place(shape, centre, angle, scale)
  return alpha, rgb, desc
