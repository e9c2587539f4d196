"""Synthetic occluded faces with ground truth, from any morphable model.

Each sample is a face rendered by :func:`focus_jax.render.render.render` (hard
mode, batched, jitted) with random identity, expression, albedo, pose (yaw
+-45 deg, pitch +-20 deg, roll +-15 deg by default), SH light and background
(scikit-image sample photos or procedural scenes), then two host-side layers:

1. *Unmodelled appearance detail*: brows with hair strokes, lipstick, beard
   stubble, freckles — textures attached to the face surface (evaluated on the
   mean-face position of each pixel, so they follow pose and identity) that the
   model's smooth albedo space cannot express. They replace the albedo under the
   same shading: ``pixel *= albedo' / albedo``. The per-pixel strength is the
   sample's ``detail`` map, the kinds are bits of ``detail_labels``
   (:data:`DETAIL_BITS`). They are face skin, *not* occluders: the misfit prior
   should learn to tolerate them.
2. *Occluders* covering a target fraction of the face pixels
   (``coverage``, 10-40 % by default): procedural shapes, hands, face masks,
   glasses and optional real RGBA images (:mod:`focus_jax.data.occluders`).

Ground truth: ``face_mask`` = the render's visibility (``triangle_id >= 0``),
``occluder_mask`` = occluder alpha >= 0.5, ``visible_mask`` = face and not
occluder; the mesh (model and camera space), the projected landmarks and all
parameters. Sample ``i`` depends only on ``(seed, i)`` (NumPy streams spawned
from ``SeedSequence([seed, i])``), not on the batch it was made in: bit for bit
for a given ``batch_size`` (the rendering batch shape); across batch sizes the
compiled renderer may round differently (~1e-6 in the image, masks equal).

:func:`write_dataset` writes samples in the reference layout (PNG images,
``*_visible_skin_mask.png``, split CSVs) plus ``params.npz`` for evaluation; see
``experiments/make_synthetic.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.data import landmarks as lm_lib
from focus_jax.data import occluders as occ_lib
from focus_jax.data import procedural
from focus_jax.data.synthetic_details import (  # pylint: disable=unused-import
    DETAIL_BITS, _details, _FaceGeometry)
from focus_jax.morphable import model as model_lib
from focus_jax.render import camera as camera_lib
from focus_jax.render import render as render_lib
from focus_jax.render import shading as shading_lib


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """What the generator draws (angles in degrees, lengths in mm, images in [0, 1]).

  Attributes:
    size: image size (square), with :meth:`Intrinsics.reference` (size).
    yaw, pitch, roll: uniform pose ranges +-value (degrees).
    translation_xy: uniform +-value for the x and y translation (mm).
    translation_z: (min, max) of the z translation (mm; + = farther).
    shape_std, expression_std, albedo_std: coefficient standard deviations;
      coefficients are clipped at +-coefficient_clip.
    expression: ``'normal'`` (PCA expressions), ``'blendshape'`` (one or two
      blendshapes with weights in [0, 0.8]), ``'none'`` or ``'auto'``
      (blendshapes when the model name mentions them).
    ambient: uniform irradiance range; directional: key light strength range;
      light_tint: +- relative colour change of the light; sh_noise: std of the
      second-order SH coefficients relative to the ambient term.
    photo_probability: chance of a real photo background (when scikit-image is
      installed), else procedural.
    occlusion_probability: chance that a sample has occluders at all.
    coverage: (min, max) target fraction of the face pixels to occlude.
    occluder_weights: ((kind, weight), ...) relative frequency of occluder kinds;
      ``'image'`` needs an occluder folder.
    detail_probability: ((kind, probability), ...) for the unmodelled details.
    noise_std: (min, max) of the per-image Gaussian sensor noise.
  """
  size: int = 224
  yaw: float = 45.0
  pitch: float = 20.0
  roll: float = 15.0
  translation_xy: float = 10.0
  translation_z: tuple = (-60.0, 60.0)
  shape_std: float = 1.0
  expression_std: float = 0.8
  albedo_std: float = 1.0
  coefficient_clip: float = 3.0
  expression: str = "auto"
  ambient: tuple = (0.75, 1.15)
  directional: tuple = (0.0, 0.6)
  light_tint: float = 0.06
  sh_noise: float = 0.03
  photo_probability: float = 0.5
  occlusion_probability: float = 1.0
  coverage: tuple = (0.1, 0.4)
  occluder_weights: tuple = (("shape", 0.35), ("hand", 0.2), ("mask", 0.25),
                             ("glasses", 0.1), ("image", 0.3))
  detail_probability: tuple = (("brows", 0.8), ("lips", 0.5), ("beard", 0.35),
                               ("freckles", 0.3))
  noise_std: tuple = (0.0, 0.015)


@dataclasses.dataclass
class SyntheticSample:
  """One synthetic face (H = W = config.size, V = model vertices).

  Attributes:
    image: [H, W, 3] float32 in [0, 1].
    visible_mask: [H, W] bool, face pixels not covered by an occluder.
    face_mask: [H, W] bool, face pixels (render ``triangle_id >= 0``).
    occluder_mask: [H, W] bool, occluder alpha >= 0.5 (anywhere in the image).
    detail: [H, W] float32 in [0, 1], strength of the unmodelled detail.
    detail_labels: [H, W] uint8, bits of :data:`DETAIL_BITS` where a detail's
      strength exceeds 0.1.
    landmarks: [68, 2] float32 projected landmark vertices (pixels, centre at
      +0.5), nan where the model defines none.
    vertices: [V, 3] float32 mesh in model space (mm), shape + expression.
    vertices_camera: [V, 3] float32 mesh in camera space (mm).
    params: dict of float32 arrays: shape [Ks], expression [Ke], albedo [Ka],
      angles [3] (radians), translation [3] (mm), light [9, 3].
    info: dict: index, seed, target_coverage, coverage (achieved), occluders
      (descriptions), details (kinds), background (description), noise_std.
  """
  image: np.ndarray
  visible_mask: np.ndarray
  face_mask: np.ndarray
  occluder_mask: np.ndarray
  detail: np.ndarray
  detail_labels: np.ndarray
  landmarks: np.ndarray
  vertices: np.ndarray
  vertices_camera: np.ndarray
  params: dict
  info: dict

  def as_example(self, name: Optional[str] = None) -> dict:
    """The sample as a pipeline example (the keys of ``FaceDataset.load`` and more)."""
    size = self.image.shape[0]
    return dict(image=self.image, landmarks=np.nan_to_num(self.landmarks),
                mask=self.visible_mask.astype(np.float32), has_mask=np.asarray(True),
                transform=np.eye(2, 3, dtype=np.float32),
                original_size=np.array([size, size], np.int32),
                name=name or f"{self.info['index']:06d}",
                face_mask=self.face_mask.astype(np.float32), detail=self.detail)


# ----------------------------------------------------------------------------- rendering


def _surface_attributes(attributes, vertices_camera, vertices_image, triangles, triangle_id):
  """Perspective-correct interpolation of per-vertex attributes at pixel centres.

  Args:
    attributes: [V, C]; vertices_camera: [V, 3]; vertices_image: [V, 2];
    triangles: [F, 3]; triangle_id: [H, W] (-1 = background).

  Returns:
    [H, W, C], 0 on background.
  """
  h, w = triangle_id.shape
  mask = triangle_id >= 0
  tri = jnp.take(triangles, jnp.maximum(triangle_id, 0), axis=0)          # [H, W, 3]
  p = jnp.take(vertices_image, tri, axis=0)                               # [H, W, 3, 2]
  z = jnp.take(vertices_camera[:, 2], tri, axis=0)                        # [H, W, 3]
  ys, xs = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(w) + 0.5, indexing="ij")
  q = jnp.stack([xs, ys], -1)[:, :, None, :]                              # [H, W, 1, 2]
  a = jnp.roll(p, -1, axis=2) - q
  b = jnp.roll(p, -2, axis=2) - q
  lam = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]                     # [H, W, 3]
  lam = lam / jnp.where(z > 0, z, 1.0)
  total = jnp.sum(lam, -1, keepdims=True)
  ok = mask[..., None] & (jnp.abs(total) > 1e-20)
  lam = jnp.where(ok, lam / jnp.where(ok, total, 1.0), 0.0)
  values = jnp.take(attributes, tri, axis=0)                              # [H, W, 3, C]
  return jnp.einsum("hwk,hwkc->hwc", lam, values)


@functools.partial(jax.jit, static_argnames=("size",))
def render_batch(model, shape, expression, albedo, angles, translation, light, background,
                 size: int) -> dict:
  """Renders a batch for the generator (hard mode, antialiased) plus what it needs.

  Args:
    model: the morphable model.
    shape, expression, albedo: [B, K*] coefficients; angles, translation: [B, 3];
    light: [B, 9, 3]; background: [B, size, size, 3].
    size: image size (static).

  Returns:
    dict: image [B, H, W, 3], coverage [B, H, W], triangle_id [B, H, W],
    landmarks [B, 68, 2], albedo [B, H, W, 3] (interpolated), surface
    [B, H, W, 3] (mean-face position of each pixel, mm), vertices and
    vertices_camera [B, V, 3].
  """
  intrinsics = camera_lib.Intrinsics.reference(size)
  out = render_lib.render(model, shape, expression, albedo, angles, translation, light,
                          intrinsics, mode="hard", background=background)
  surface = jax.vmap(_surface_attributes, in_axes=(None, 0, 0, None, 0))(
      model.mean, out.vertices_camera, out.vertices_image, model.triangles, out.triangle_id)
  return dict(image=out.image, coverage=out.mask, triangle_id=out.triangle_id,
              landmarks=out.landmarks, albedo=out.albedo, surface=surface,
              vertices=model_lib.vertices(model, shape, expression),
              vertices_camera=out.vertices_camera)


# ----------------------------------------------------------------------------- generator


def _light(rng, cfg: SyntheticConfig, skin_tint=None) -> np.ndarray:
  """[9, 3] SH light: ambient, one key light, a little second-order noise, a tint."""
  c0 = 0.5 * math.sqrt(1.0 / math.pi)
  c1 = math.sqrt(3.0 / (4.0 * math.pi))
  ambient = rng.uniform(*cfg.ambient)
  strength = rng.uniform(*cfg.directional)
  d = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.6), -rng.uniform(0.3, 1.2)])
  d /= np.linalg.norm(d)
  light = np.zeros((shading_lib.NUM_SH, 3))
  light[0] = ambient / c0
  light[1], light[2], light[3] = strength * d[1] / c1, strength * d[2] / c1, strength * d[0] / c1
  light[4:] = rng.normal(0, cfg.sh_noise * ambient / c0, (5, 1))
  tint = 1.0 + rng.uniform(-cfg.light_tint, cfg.light_tint, 3)
  if skin_tint is not None:
    tint = tint * skin_tint
  return (light * tint[None, :]).astype(np.float32)


class SyntheticFaces:
  """Deterministic synthetic occluded faces from a morphable model.

  ``gen.sample(i)`` / ``gen.generate(indices)`` give :class:`SyntheticSample`;
  ``len(gen)`` and ``gen.load(i)`` make it a source for
  :class:`~focus_jax.data.pipeline.Pipeline`.

  Args:
    model: any :class:`~focus_jax.morphable.MorphableModel` (built-in, SFM, BFM).
    config: :class:`SyntheticConfig`.
    seed: dataset seed; sample i depends only on (seed, i).
    num: dataset length (for ``len`` and pipelines); None = unbounded.
    occluder_dir: optional folder of RGBA PNG occluders (enables ``'image'``).
    batch_size: faces rendered per jitted call (a static shape; the last call
      is padded).
  """

  def __init__(self, model, config: SyntheticConfig = SyntheticConfig(), seed: int = 0,
               num: Optional[int] = None, occluder_dir: Optional[str] = None,
               batch_size: int = 8):
    self.model = model
    self.config = config
    self.seed = int(seed)
    self.num = num
    self.batch_size = int(batch_size)
    self.occluder_images = (occ_lib.load_occluder_images(os.path.abspath(occluder_dir))
                            if occluder_dir else ())
    self.description = f"synthetic faces ({model.name}, seed {seed})"
    self._geometry = _FaceGeometry(model)
    self._lm_valid = np.asarray(model_lib.landmark_mask(model))
    mode = config.expression
    if mode == "auto":
      mode = "blendshape" if "blendshape" in model.name.lower() else "normal"
    if mode not in ("normal", "blendshape", "none"):
      raise ValueError(f"SyntheticConfig.expression must be 'auto', 'normal', 'blendshape' or "
                       f"'none', got {config.expression!r}")
    self._expression_mode = mode
    # Shape-only models render grey: draw a skin tone into the light instead.
    self._tint_skin = model.num_albedo == 0

  def __len__(self) -> int:
    if self.num is None:
      raise TypeError("SyntheticFaces(num=None) is unbounded; pass num= to use it as a dataset")
    return self.num

  def _streams(self, index: int):
    ss = np.random.SeedSequence([self.seed, int(index)])
    return [np.random.default_rng(s) for s in ss.spawn(5)]

  def params(self, index: int) -> dict:
    """Face, pose and light parameters of sample ``index`` (cheap, no rendering)."""
    cfg, m = self.config, self.model
    rng = self._streams(index)[0]
    clip = cfg.coefficient_clip
    normal = lambda k, std: np.clip(rng.normal(0, std, k), -clip, clip).astype(np.float32)
    shape = normal(m.num_shape, cfg.shape_std)
    if self._expression_mode == "normal":
      expression = normal(m.num_expression, cfg.expression_std)
    else:
      expression = np.zeros(m.num_expression, np.float32)
      if self._expression_mode == "blendshape" and m.num_expression:
        for k in rng.choice(m.num_expression, size=min(2, m.num_expression), replace=False):
          expression[k] = rng.uniform(0.0, 0.8) * (rng.random() < 0.7)
    albedo = normal(m.num_albedo, cfg.albedo_std)
    deg = np.pi / 180.0
    angles = np.array([rng.uniform(-cfg.pitch, cfg.pitch), rng.uniform(-cfg.yaw, cfg.yaw),
                       rng.uniform(-cfg.roll, cfg.roll)]) * deg
    translation = np.array([rng.uniform(-cfg.translation_xy, cfg.translation_xy),
                            rng.uniform(-cfg.translation_xy, cfg.translation_xy),
                            rng.uniform(*cfg.translation_z)])
    skin = None
    if self._tint_skin:
      mean_albedo = np.asarray(m.albedo_mean).mean(0)
      skin = procedural.skin_color(rng) / np.maximum(mean_albedo, 0.05)
    return dict(shape=shape, expression=expression, albedo=albedo,
                angles=angles.astype(np.float32), translation=translation.astype(np.float32),
                light=_light(rng, cfg, skin))

  def sample(self, index: int) -> SyntheticSample:
    """Sample ``index``."""
    return self.generate([index])[0]

  def load(self, index: int) -> dict:
    """Sample ``index`` as a pipeline example (see :meth:`SyntheticSample.as_example`).

    Renders this face alone (a batch of one, compiled once), so that a
    :class:`~focus_jax.data.pipeline.Pipeline` can call it from its loader threads.
    The result equals ``sample(index)``.
    """
    return self._generate_chunk([int(index)], batch=1)[0].as_example()

  def generate(self, indices: Sequence[int]) -> list:
    """Samples for ``indices`` (rendered ``batch_size`` at a time)."""
    indices = [int(i) for i in indices]
    out = []
    for start in range(0, len(indices), self.batch_size):
      out.extend(self._generate_chunk(indices[start:start + self.batch_size], self.batch_size))
    return out

  def _generate_chunk(self, indices, batch: int):
    cfg = self.config
    size = cfg.size
    params = [self.params(i) for i in indices]
    backgrounds, bg_names = [], []
    for i in indices:
      bg, name = procedural.background(self._streams(i)[1], size, size, cfg.photo_probability)
      backgrounds.append(bg)
      bg_names.append(name)
    pad = batch - len(indices)
    stack = lambda key: np.stack([p[key] for p in params] + [params[-1][key]] * pad)
    rendered = jax.device_get(render_batch(
        self.model, stack("shape"), stack("expression"), stack("albedo"), stack("angles"),
        stack("translation"), stack("light"),
        np.stack(backgrounds + [backgrounds[-1]] * pad), size=size))
    samples = []
    for k, index in enumerate(indices):
      samples.append(self._finish(index, params[k], bg_names[k],
                                  {key: v[k] for key, v in rendered.items()}))
    return samples

  def _finish(self, index, params, bg_name, r) -> SyntheticSample:
    cfg = self.config
    streams = self._streams(index)
    face = r["triangle_id"] >= 0
    image = np.asarray(r["image"], np.float32)
    factor, detail, labels, kinds = _details(streams[2], self._geometry, r["surface"], face,
                                             r["albedo"], dict(cfg.detail_probability))
    coverage_aa = np.asarray(r["coverage"], np.float32)[..., None]
    image = image * (1.0 + (factor - 1.0) * coverage_aa)
    landmarks = np.where(self._lm_valid[:, None], r["landmarks"], np.nan).astype(np.float32)
    rng = streams[3]
    occluded = rng.random() < cfg.occlusion_probability
    target = float(rng.uniform(*cfg.coverage)) if occluded else 0.0
    frame = occ_lib.face_frame(landmarks, face)
    weights = dict(cfg.occluder_weights)
    if not self.occluder_images:
      weights.pop("image", None)
    image, occ, coverage, described = occ_lib.occlude(
        rng, image, face, frame, target, kinds=tuple(weights), weights=weights,
        images=self.occluder_images)
    noise_rng = streams[4]
    noise = float(noise_rng.uniform(*cfg.noise_std))
    if noise > 0:
      image = image + noise_rng.normal(0, noise, image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    info = dict(index=int(index), seed=self.seed, target_coverage=target, coverage=coverage,
                occluders=described, details=kinds, background=bg_name, noise_std=noise)
    return SyntheticSample(
        image=image, visible_mask=face & ~occ, face_mask=face, occluder_mask=occ,
        detail=detail, detail_labels=labels, landmarks=landmarks,
        vertices=np.asarray(r["vertices"], np.float32),
        vertices_camera=np.asarray(r["vertices_camera"], np.float32),
        params={k: np.asarray(v, np.float32) for k, v in params.items()}, info=info)


# ----------------------------------------------------------------------------- writing


def split_of(index: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
  """Deterministic split of sample ``index``: buckets of ``index % 100``."""
  bucket = index % 100
  edges = np.cumsum(np.asarray(fractions, np.float64) / np.sum(fractions)) * 100
  for name, edge in zip(lm_lib.SPLITS, edges):
    if bucket < edge - 1e-9:
      return name
  return lm_lib.SPLITS[-1]


def write_dataset(out_dir: str, generator: SyntheticFaces, num: int, start: int = 0,
                  image_folder: str = "images", fractions=(0.8, 0.1, 0.1),
                  save_meshes: bool = True, save_maps: bool = True, decimals: int = 0,
                  progress: bool = True) -> dict:
  """Writes samples ``start .. start+num-1`` in the reference layout.

  Layout::

    out_dir/
      images/000000.png, 000000_visible_skin_mask.png,
             000000_face_mask.png, 000000_detail.png (with save_maps)
      train_landmarks.csv, val_landmarks.csv, test_landmarks.csv
      params.npz   # per sample: names, split, index, coefficients, angles,
                   # translation, light, exact landmarks, coverage, info (JSON),
                   # vertices [N, V, 3] (with save_meshes); model name, size, seed

  Masks are 8-bit greyscale PNGs (255 = visible skin / face); the detail map is its
  strength x 255. CSV landmarks are rounded as the reference expects (``decimals``).

  Returns:
    dict: paths written and the mean seconds per sample.
  """
  import time  # pylint: disable=import-outside-toplevel
  from focus_jax import images as images_lib  # pylint: disable=import-outside-toplevel
  image_dir = os.path.join(out_dir, image_folder)
  os.makedirs(image_dir, exist_ok=True)
  indices = list(range(start, start + num))
  chunks = [indices[i:i + generator.batch_size]
            for i in range(0, len(indices), generator.batch_size)]
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=num, desc="synthetic faces", unit="img")
  rows = {s: ([], []) for s in lm_lib.SPLITS}
  record = dict(names=[], split=[], index=[], landmarks=[], coverage=[], target_coverage=[],
                info=[], vertices=[])
  params = {k: [] for k in ("shape", "expression", "albedo", "angles", "translation", "light")}
  t0 = time.perf_counter()
  for chunk in chunks:
    for s in generator.generate(chunk):
      i = s.info["index"]
      name = f"{i:06d}.png"
      base = os.path.join(image_dir, f"{i:06d}")
      images_lib.save_png(base + ".png", s.image)
      images_lib.save_png(base + "_visible_skin_mask.png", s.visible_mask.astype(np.uint8) * 255)
      if save_maps:
        images_lib.save_png(base + "_face_mask.png", s.face_mask.astype(np.uint8) * 255)
        images_lib.save_png(base + "_detail.png", s.detail)
      split = split_of(i, fractions)
      rows[split][0].append(name)
      rows[split][1].append(s.landmarks)
      record["names"].append(name)
      record["split"].append(split)
      record["index"].append(i)
      record["landmarks"].append(s.landmarks)
      record["coverage"].append(s.info["coverage"])
      record["target_coverage"].append(s.info["target_coverage"])
      record["info"].append(json.dumps(s.info))
      if save_meshes:
        record["vertices"].append(s.vertices)
      for k in params:
        params[k].append(s.params[k])
      if bar is not None:
        bar.update(1)
  seconds = (time.perf_counter() - t0) / max(num, 1)
  if bar is not None:
    bar.close()
  paths = {}
  for split, (names, lms) in rows.items():
    path = os.path.join(out_dir, lm_lib.csv_name(split))
    lm_lib.write_landmarks_csv(path, names, np.asarray(lms, np.float32).reshape(-1, 68, 2),
                               decimals=decimals)
    paths[split] = path
  arrays = {k: np.stack(v) for k, v in params.items()}
  arrays.update(names=np.asarray(record["names"]), split=np.asarray(record["split"]),
                index=np.asarray(record["index"], np.int64),
                landmarks=np.stack(record["landmarks"]),
                coverage=np.asarray(record["coverage"], np.float32),
                target_coverage=np.asarray(record["target_coverage"], np.float32),
                info=np.asarray(record["info"]), model_name=np.asarray(generator.model.name),
                size=np.asarray(generator.config.size), seed=np.asarray(generator.seed),
                config=np.asarray(json.dumps(dataclasses.asdict(generator.config))))
  if save_meshes:
    arrays["vertices"] = np.stack(record["vertices"])
    arrays["triangles"] = np.asarray(generator.model.triangles)
  paths["params"] = os.path.join(out_dir, "params.npz")
  np.savez_compressed(paths["params"], **arrays)
  return dict(paths=paths, seconds_per_sample=seconds, image_dir=image_dir)
