"""Face photos in, reconstructions out: the path behind ``focus-jax fit`` and ``now``.

One photo::

    import focus_jax as fj
    from focus_jax.app import inference
    rec = inference.reconstruct(photo, fj.morphable.builtin())      # dlib finds the face
    rec.render, rec.inlier_mask, rec.landmarks, rec.vertices        # all in photo terms

Steps (per photo): 68 landmarks (given, or dlib's detector + predictor,
:mod:`focus_jax.data.detect`) -> similarity alignment to the canonical
``size`` x ``size`` crop (:mod:`focus_jax.data.align`, the inverse is kept) ->
reconstruction of the crop -> everything mapped back to the photo. The
reconstruction is either

* the per-image robust fit (:func:`focus_jax.fitting.fit`, EM with outlier
  masks; no training needed) — the default; or
* a trained network pair (``checkpoint=`` a training run's ``--workdir``): the
  encoder regresses the coefficients, the UNet segments the outliers, through
  the networks' eval-mode predict function
  (:func:`focus_jax.autoencoder.networks.make_predict`, the one
  :func:`focus_jax.train.trainer.predict_dataset` uses); no training code is loaded.

Many photos: :class:`Reconstructor` aligns them one by one and reconstructs them
``batch_size`` at a time in one compiled call (the last batch is padded, so a
run compiles once: ~30-60 s on a laptop CPU, then well under a second per
224-pixel crop).

Conventions: photos [H, W, 3] (uint8, or float in [0, 1]); pixel coordinates
x right, y down, pixel (row i, col j) centred at (j + 0.5, i + 0.5) — the
project's convention, see :mod:`focus_jax.data.landmarks`; lengths in mm.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Optional, Sequence

import numpy as np

from focus_jax.data import align as align_lib
from focus_jax.errors import DataError

NUM_LANDMARKS = 68


# ----------------------------------------------------------------------------- data types


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A photo with its landmarks and its aligned crop, ready to be reconstructed.

  Attributes:
    photo: [H, W, 3] float32 in [0, 1].
    landmarks: [68, 2] float32 photo pixels used for the alignment and the fit.
    landmark_source: ``'given'`` or the detector's method (``'hog'``, ``'cnn'``,
      ``'crop'``).
    alignment: photo -> crop :class:`~focus_jax.data.align.Alignment`.
    crop: [S, S, 3] float32 aligned crop.
    crop_landmarks: [68, 2] float32 the landmarks in crop pixels.
    name: what the photo is called in messages (file path or ``'image'``).
  """
  photo: np.ndarray
  landmarks: np.ndarray
  landmark_source: str
  alignment: align_lib.Alignment
  crop: np.ndarray
  crop_landmarks: np.ndarray
  name: str = "image"


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  """One reconstructed photo (H x W = photo size, S = crop size, V vertices, F triangles).

  Attributes:
    render: [H, W, 3] float32 in [0, 1], the rendered face composited over the photo.
    inlier_mask: [H, W] bool, True = face pixel the model explains (visible skin);
      False = outlier (occluder, hair, ...) or background. The per-image fit's mask
      may reach a few pixels beyond ``face_mask`` where the photo continues the
      rendered skin (``FitConfig.estep.contour_margin`` crop pixels: the fitted
      outline is often a pixel or two inside the real one); the networks' mask
      stays inside it.
    face_mask: [H, W] bool, pixels the rendered face covers (inlier or not).
    landmarks: [68, 2] float32 photo pixels, the fitted model's 68 iBUG
      landmarks; NaN for points the model does not define.
    input_landmarks: [68, 2] float32 photo pixels, the landmarks the fit used.
    landmark_source: ``'given'``, ``'hog'``, ``'cnn'`` or ``'crop'``.
    vertices: [V, 3] float32 mesh in camera space (mm; x right, y down, z depth)
      of the crop's camera (:attr:`intrinsics`).
    vertices_model: [V, 3] float32 the same mesh in model space (mm; y up, z
      towards the viewer), shape + expression, no pose.
    triangles: [F, 3] int32; uv: [V, 2] float32 texture coordinates or None.
    coefficients: dict of float32 arrays: shape [Ks], expression [Ke], albedo
      [Ka], angles [3] (rad), translation [3] (mm), and light [9, 3] (SH) when the
      method estimates one (the network path returns no light).
    alignment: photo -> crop :class:`~focus_jax.data.align.Alignment`.
    intrinsics: the crop camera (:meth:`Intrinsics.reference` (S)).
    crop: [S, S, 3] the aligned crop; crop_render: [S, S, 3] the render over it;
      crop_inlier: [S, S] float32 inlier mask in crop pixels.
    method: ``'fit'`` (per-image robust fit) or ``'checkpoint'`` (trained networks).
    name: the photo's name.
  """
  render: np.ndarray
  inlier_mask: np.ndarray
  face_mask: np.ndarray
  landmarks: np.ndarray
  input_landmarks: np.ndarray
  landmark_source: str
  vertices: np.ndarray
  vertices_model: np.ndarray
  triangles: np.ndarray
  uv: Optional[np.ndarray]
  coefficients: dict
  alignment: align_lib.Alignment
  intrinsics: object
  crop: np.ndarray
  crop_render: np.ndarray
  crop_inlier: np.ndarray
  method: str
  name: str = "image"


# ----------------------------------------------------------------------------- input


def as_photo(image, name: str = "image") -> np.ndarray:
  """[H, W, 3] float32 in [0, 1] from uint8/uint16/float RGB(A) or grey input.

  Raises:
    DataError (an ImageReadError naming ``name``): not an image array.
  """
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  return images.to_rgb_float(image, name)


def default_detector(crop_fallback: bool = False):
  """dlib's detector for general photos; ``crop_fallback`` also accepts aligned
  face crops where no face is detected (the predictor then runs on the whole crop)."""
  from focus_jax.data import detect  # pylint: disable=import-outside-toplevel
  return detect.LandmarkDetector(aligned=True if crop_fallback else False)


def find_landmarks(photo, detector=None, name: str = "image") -> tuple:
  """(landmarks [68, 2] photo pixels, method) of the largest face in ``photo``.

  Raises:
    DataError: no face found (naming ``name``), or dlib is not installed.
  """
  detector = detector or default_detector()
  found = detector.detect(photo)
  if found.landmarks is None:
    raise DataError(f"{name}: no face found (dlib's HOG and CNN detectors); pass its 68 "
                    "landmarks instead (focus-jax fit --landmarks CSV)")
  return np.asarray(found.landmarks, np.float32), found.method


def prepare(image, *, landmarks=None, detector=None, size: int = 224,
            name: str = "image", landmark_source: str = "given") -> Prepared:
  """Finds (or takes) the landmarks of a photo and aligns it to the ``size`` crop.

  Args:
    image: [H, W, 3] photo (uint8, or float in [0, 1]).
    landmarks: optional [68, 2] photo pixels (centre +0.5); NaN marks unknown
      points (the five alignment points must be finite). None: detect with dlib.
    detector: a :class:`~focus_jax.data.detect.LandmarkDetector` (default: one
      for general photos, built on first use).
    size: crop side in pixels.
    name: the photo's name for messages.
    landmark_source: recorded as the source of given landmarks.

  Raises:
    DataError: bad image or landmark shape, or no face found without landmarks.
  """
  photo = as_photo(image, name)
  if landmarks is None:
    lm, source = find_landmarks(photo, detector, name)
  else:
    lm = np.asarray(landmarks, np.float32)
    source = landmark_source
    if lm.shape != (NUM_LANDMARKS, 2):
      raise DataError(f"{name}: landmarks must be [68, 2], got {lm.shape}")
  five = align_lib.five_points(lm)
  if not np.isfinite(five).all():
    raise DataError(f"{name}: the eye corners, nose tip (iBUG 31) and mouth corners "
                    "(iBUG 49, 55) are needed for the alignment but some are missing")
  _check_on_photo(lm, five, photo.shape[:2], name)
  try:
    al = align_lib.estimate(lm, photo.shape[:2], size=size)
  except ValueError as e:     # e.g. coincident points: no similarity maps them
    raise DataError(f"{name}: cannot align the face to its landmarks ({e})") from e
  crop = np.clip(al.crop(photo), 0.0, 1.0)
  return Prepared(photo=photo, landmarks=lm, landmark_source=source, alignment=al,
                  crop=crop, crop_landmarks=al.to_crop(lm).astype(np.float32), name=name)


def _check_on_photo(lm, five, shape, name):
  """The landmarks must describe a face in this photo: every given point within one
  photo size of it (a face partly outside is fine) and an alignment point inside."""
  h, w = shape
  ok = np.isfinite(lm).all(-1)
  far = ok & ((lm[:, 0] < -w) | (lm[:, 0] > 2 * w) | (lm[:, 1] < -h) | (lm[:, 1] > 2 * h))
  if far.any():
    i = int(np.argmax(far))
    raise DataError(f"{name}: landmark {i + 1} at ({lm[i, 0]:.4g}, {lm[i, 1]:.4g}) lies far "
                    f"outside the {w}x{h} photo; are the landmarks in this photo's pixels?")
  inside = (five[:, 0] >= 0) & (five[:, 0] <= w) & (five[:, 1] >= 0) & (five[:, 1] <= h)
  if not inside.any():
    raise DataError(f"{name}: the face's landmarks (eyes, nose, mouth) all lie outside the "
                    f"{w}x{h} photo")


# ----------------------------------------------------------------------------- back to the photo


def to_photo(prep: Prepared, crop_face_render, crop_face, crop_inlier, crop_landmarks):
  """Maps crop-space outputs onto the photo.

  Args:
    crop_face_render: [S, S, 3] the face render with a black background.
    crop_face: [S, S] face coverage in [0, 1].
    crop_inlier: [S, S] inlier mask in [0, 1] (it may extend beyond ``crop_face``).
    crop_landmarks: [68, 2] crop pixels.

  Returns:
    (render [H, W, 3] over the photo, inlier [H, W] bool, face [H, W] bool,
    landmarks [68, 2] photo pixels).
  """
  al = prep.alignment
  face = np.clip(np.asarray(crop_face, np.float32), 0.0, 1.0)
  # Premultiplied colour and coverage warp together, so the blended silhouette
  # does not darken towards the black background.
  premult, inside = al.uncrop(np.asarray(crop_face_render, np.float32) * face[..., None])
  alpha, _ = al.uncrop(face)
  alpha = np.where(inside, np.clip(alpha, 0.0, 1.0), 0.0)
  render = np.clip(prep.photo * (1.0 - alpha[..., None]) + np.where(inside[..., None], premult, 0),
                   0.0, 1.0).astype(np.float32)
  inlier, _ = al.uncrop(np.asarray(crop_inlier, np.float32))
  inlier_mask = (inlier >= 0.5) & inside
  face_mask = (alpha >= 0.5) & inside
  landmarks = al.to_original(np.asarray(crop_landmarks, np.float64)).astype(np.float32)
  return render, inlier_mask, face_mask, landmarks


def _pose_from_vertices(model_vertices, camera_vertices):
  """(angles [3], translation [3]) with ``to_camera(model) == camera`` (rigid fit)."""
  from focus_jax import fitting  # pylint: disable=import-outside-toplevel
  from focus_jax.eval import mesh_metrics  # pylint: disable=import-outside-toplevel
  from focus_jax.render import camera  # pylint: disable=import-outside-toplevel
  _, rc, tc = mesh_metrics.similarity_transform(model_vertices, camera_vertices, scale=False)
  rot = np.array([1.0, -1.0, -1.0])[:, None] * rc               # R = F · Rc
  angles = np.asarray(fitting.angles_from_rotation(rot), np.float32)
  return angles, (tc - np.array([0.0, 0.0, camera.CAMERA_DISTANCE])).astype(np.float32)


def _model_landmarks(model, crop_landmarks):
  """NaN where the model defines no vertex for an iBUG point."""
  lm = np.asarray(crop_landmarks, np.float32).copy()
  lm[np.asarray(model.landmarks) < 0] = np.nan
  return lm


# ----------------------------------------------------------------------------- reconstruction


def load_checkpoint(path: str) -> dict:
  """The networks of a training run: dict(encoder, unet, config, step).

  Raises:
    CheckpointError: no readable checkpoint under ``path``.
  """
  from focus_jax.autoencoder import checkpoints  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(path):
    raise CheckpointError(f"checkpoint folder not found: {path}")
  try:
    enc, unet, config, step = checkpoints.load_networks(path)
  except CheckpointError as e:
    raise CheckpointError(
        f"{path}: no readable training checkpoint (expected a training run's --workdir, "
        f"holding checkpoints/<step>/)") from e
  return dict(encoder=enc, unet=unet, config=config, step=step, path=path)


class Reconstructor:
  """Reconstructs aligned photos in fixed-size batches (one compilation per run).

  Args:
    model: the morphable model (None with a checkpoint: the training run's model).
    checkpoint: a training run's ``--workdir`` (or a :func:`load_checkpoint`
      dict): encoder + UNet instead of the per-image fit.
    config: :class:`focus_jax.fitting.FitConfig` of the per-image fit.
    prior: optional :class:`focus_jax.prior.MisfitPrior` (or [V] σ multipliers).
    size: crop side (with a checkpoint: the run's image size, which wins).
    batch_size: photos per compiled call.
    segmenter: optional :class:`focus_jax.nets.segmenter.Segmenter` with weights: its
      face probability of each crop is the per-image fit's per-pixel inlier prior
      (``fit(..., inlier_prior=...)``); unused with a checkpoint. Settable later.
  """

  def __init__(self, model=None, *, checkpoint=None, config=None, prior=None,
               size: int = 224, batch_size: int = 4, segmenter=None):
    from focus_jax import fitting  # pylint: disable=import-outside-toplevel
    self.batch_size = max(1, int(batch_size))
    self.prior = prior
    self.segmenter = segmenter
    self._segment = None
    self.config = config if config is not None else fitting.FitConfig()
    self.checkpoint = None
    if checkpoint is not None:
      self.checkpoint = (checkpoint if isinstance(checkpoint, dict)
                         else load_checkpoint(os.fspath(checkpoint)))
      self._init_networks(model)
    else:
      if model is None:
        raise ValueError("Reconstructor: a morphable model is needed without a checkpoint")
      self.model = model
      self.size = int(size)
    self.method = "checkpoint" if self.checkpoint is not None else "fit"

  def _init_networks(self, model):
    import jax  # pylint: disable=import-outside-toplevel
    from focus_jax import morphable  # pylint: disable=import-outside-toplevel
    from focus_jax.autoencoder import (  # pylint: disable=import-outside-toplevel
        networks as networks_lib)
    tc = self.checkpoint["config"]
    if model is None:
      model = networks_lib.load_model(tc)
    else:
      model = morphable.truncate(model, tc.num_shape, tc.num_expression, tc.num_albedo)
    self.model = model
    self.size = int(tc.image_size)
    nets = networks_lib.make_modules(tc, axis_name=None, model=model)
    self._nets = nets
    self._predict = jax.jit(networks_lib.make_predict(tc, nets, with_unet=True,
                                                      prior=self.prior))

  # -- one batch ---------------------------------------------------------------

  def _padded(self, arrays):
    pad = self.batch_size - len(arrays)
    stack = np.stack(arrays)
    if pad > 0:
      stack = np.concatenate([stack, np.repeat(stack[-1:], pad, 0)])
    return stack

  def face_probability(self, crops):
    """The segmenter's P(visible face) of [B, S, S, 3] crops: [B, S, S] (None without one)."""
    if self.segmenter is None:
      return None
    import jax  # pylint: disable=import-outside-toplevel
    from focus_jax.nets import segmenter as seg_lib  # pylint: disable=import-outside-toplevel
    if self._segment is None or self._segment[0] is not self.segmenter:
      seg = self.segmenter
      self._segment = (seg, jax.jit(lambda v, x: seg_lib.face_probability(seg, x, v)))
    return np.asarray(self._segment[1](self.segmenter.variables, np.asarray(crops,
                                                                           np.float32)))

  def _fit(self, preps):
    from focus_jax import fitting  # pylint: disable=import-outside-toplevel
    crops = self._padded([p.crop for p in preps])
    res = fitting.fit(self.model, crops, self._padded([p.crop_landmarks for p in preps]),
                      config=self.config, prior=self.prior,
                      inlier_prior=self.face_probability(crops))
    res = {f.name: np.asarray(getattr(res, f.name)) for f in dataclasses.fields(res)}
    out = []
    for i in range(len(preps)):
      coeffs = {k: res[k][i].astype(np.float32)
                for k in ("shape", "expression", "albedo", "angles", "translation", "light")}
      out.append(dict(face_render=res["image"][i], face=res["mask"][i],
                      inlier=res["inlier"][i], landmarks=res["landmarks"][i],
                      vertices=res["vertices_camera"][i], vertices_model=res["vertices"][i],
                      composite=None, coefficients=coeffs))
    return out

  def _network(self, preps):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    images = self._padded([p.crop for p in preps])
    res = jax.device_get(self._predict(self.checkpoint["encoder"], self.checkpoint["unet"],
                                       jnp.asarray(images), self._nets.model))
    res = {k: np.asarray(v) for k, v in res.items()}
    out = []
    for i in range(len(preps)):
      face = res["face"][i]
      angles, translation = _pose_from_vertices(res["vertices"][i], res["vertices_camera"][i])
      coeffs = dict(shape=res["shape"][i], expression=res["expression"][i],
                    albedo=res["albedo"][i], angles=angles, translation=translation)
      # make_predict renders over the crop: keep the face part only.
      out.append(dict(face_render=res["render"][i] * face[..., None], face=face,
                      inlier=((res["mask"][i] > 0.5) & (face > 0.5)).astype(np.float32),
                      landmarks=res["landmarks"][i], vertices=res["vertices_camera"][i],
                      vertices_model=res["vertices"][i], composite=res["render"][i],
                      coefficients={k: np.asarray(v, np.float32) for k, v in coeffs.items()}))
    return out

  def run(self, preps: Sequence[Prepared]) -> list:
    """Reconstructs up to ``batch_size`` prepared photos: a list of :class:`Reconstruction`."""
    from focus_jax.render import camera  # pylint: disable=import-outside-toplevel
    preps = list(preps)
    if not preps:
      return []
    if len(preps) > self.batch_size:
      return [r for lo in range(0, len(preps), self.batch_size)
              for r in self.run(preps[lo:lo + self.batch_size])]
    for p in preps:
      if p.crop.shape[0] != self.size:
        raise ValueError(f"{p.name}: prepared at {p.crop.shape[0]} px but this reconstructor "
                         f"works at {self.size} px (prepare(..., size={self.size}))")
    raw = self._network(preps) if self.checkpoint is not None else self._fit(preps)
    intr = camera.Intrinsics.reference(self.size)
    uv = None if self.model.uv is None else np.asarray(self.model.uv, np.float32)
    tris = np.asarray(self.model.triangles, np.int32)
    out = []
    for p, r in zip(preps, raw):
      crop_lm = _model_landmarks(self.model, r["landmarks"])
      face = np.asarray(r["face"], np.float32)
      render, inlier, face_mask, lm = to_photo(p, r["face_render"], face, r["inlier"], crop_lm)
      composite = r["composite"]
      if composite is None:
        composite = p.crop * (1.0 - face[..., None]) + r["face_render"] * face[..., None]
      out.append(Reconstruction(
          render=render, inlier_mask=inlier, face_mask=face_mask, landmarks=lm,
          input_landmarks=p.landmarks, landmark_source=p.landmark_source,
          vertices=np.asarray(r["vertices"], np.float32),
          vertices_model=np.asarray(r["vertices_model"], np.float32), triangles=tris, uv=uv,
          coefficients=r["coefficients"], alignment=p.alignment, intrinsics=intr, crop=p.crop,
          crop_render=np.clip(composite, 0.0, 1.0).astype(np.float32),
          crop_inlier=np.asarray(r["inlier"], np.float32),
          method=self.method, name=p.name))
    return out


def reconstruct(image, model=None, *, landmarks=None, checkpoint=None, config=None, prior=None,
                detector=None, size: int = 224, name: str = "image") -> Reconstruction:
  """Reconstructs the face in one photo (see the module docstring).

  Args:
    image: [H, W, 3] photo, uint8 or float in [0, 1].
    model: the morphable model (required without ``checkpoint``; with one, None
      means the training run's model).
    landmarks: optional [68, 2] photo pixels (centre +0.5); None: dlib finds them.
    checkpoint: optional training run folder: encoder + UNet instead of the fit.
    config: :class:`~focus_jax.fitting.FitConfig` of the fit (default FitConfig()).
    prior: optional misfit prior.
    detector: optional :class:`~focus_jax.data.detect.LandmarkDetector`.
    size: crop side (ignored with a checkpoint: the run's image size).
    name: the photo's name in error messages.

  Raises:
    DataError: no face found and no landmarks given (naming ``name``), bad shapes.
  """
  rec = Reconstructor(model, checkpoint=checkpoint, config=config, prior=prior, size=size,
                      batch_size=1)
  prep = prepare(image, landmarks=landmarks, detector=detector, size=rec.size, name=name)
  return rec.run([prep])[0]


def reconstruct_batch(images: Sequence, model=None, *, landmarks: Optional[Sequence] = None,
                      checkpoint=None, config=None, prior=None, detector=None, size: int = 224,
                      batch_size: int = 4, names: Optional[Sequence[str]] = None) -> list:
  """:func:`reconstruct` for several photos, ``batch_size`` per compiled call.

  ``landmarks``: None, or one entry per photo ([68, 2] or None to detect).
  Raises on the first photo that cannot be prepared (use :class:`Reconstructor`
  and :func:`prepare` directly to skip bad photos instead).
  """
  rec = Reconstructor(model, checkpoint=checkpoint, config=config, prior=prior, size=size,
                      batch_size=batch_size)
  names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
  lms = list(landmarks) if landmarks is not None else [None] * len(images)
  if detector is None and any(lm is None for lm in lms):
    detector = default_detector()
  preps = [prepare(im, landmarks=lm, detector=detector, size=rec.size, name=n)
           for im, lm, n in zip(images, lms, names)]
  return rec.run(preps)


# ----------------------------------------------------------------------------- files


def output_files(name: str) -> dict:
  """Output file names of one photo: kind -> ``NAME.obj``, ``NAME_params.npz``, ..."""
  return dict(mesh=f"{name}.obj", params=f"{name}_params.npz", render=f"{name}_render.png",
              mask=f"{name}_mask.png", landmarks=f"{name}_landmarks.csv")


def params_arrays(rec: Reconstruction, image_path: str = "") -> dict:
  """What ``NAME_params.npz`` holds (every array documented in the README of ``fit``)."""
  out = {k: np.asarray(v, np.float32) for k, v in rec.coefficients.items()}
  out.update(
      landmarks=rec.landmarks, input_landmarks=rec.input_landmarks,
      landmark_source=np.asarray(rec.landmark_source), method=np.asarray(rec.method),
      photo_to_crop=rec.alignment.matrix.astype(np.float32),
      crop_to_photo=rec.alignment.inverse.astype(np.float32),
      crop_size=np.asarray(rec.alignment.size, np.int32),
      image_size=np.asarray(rec.alignment.original_shape, np.int32),
      focal=np.asarray(rec.intrinsics.focal, np.float32),
      principal_point=np.asarray([rec.intrinsics.cx, rec.intrinsics.cy], np.float32),
      vertices_camera=rec.vertices, inlier_fraction=np.asarray(
          rec.inlier_mask.sum() / max(rec.face_mask.sum(), 1), np.float32),
      image=np.asarray(image_path))
  return out


def non_finite_fields(rec: Reconstruction) -> list:
  """Names of the arrays of ``rec`` holding NaN or inf (the fitted landmarks may be
  NaN where the model defines no vertex; they are not checked)."""
  arrays = dict(render=rec.render, vertices=rec.vertices, vertices_model=rec.vertices_model,
                crop_render=rec.crop_render, crop_inlier=rec.crop_inlier,
                **{f"coefficients[{k!r}]": v for k, v in rec.coefficients.items()})
  return [k for k, v in arrays.items() if not np.isfinite(np.asarray(v, np.float64)).all()]


def write_outputs(rec: Reconstruction, out_dir: str, name: str, image_path: str = "",
                  csv_name: Optional[str] = None) -> dict:
  """Writes one photo's five files into ``out_dir``; all or nothing.

  The files are written into a staging folder inside ``out_dir`` and committed
  as one set (:mod:`focus_jax.file_sets`): an error, an interrupt, a crash or a
  second process writing the same name never leaves a mix of two sets (a crash's
  set is completed by the next process that writes into that folder). ``name``
  may contain '/' (sub-folders are created).

  Files: ``NAME.obj`` (camera-space mesh in mm, with ``vt`` when the model has
  texture coordinates), ``NAME_params.npz`` (:func:`params_arrays`),
  ``NAME_render.png`` (render over the photo), ``NAME_mask.png`` (uint8: 255 =
  face pixel the model explains, 0 = outlier or background),
  ``NAME_landmarks.csv`` (the fitted 68 landmarks, reference CSV layout).

  Returns:
    kind -> path of the written file.

  Raises:
    DataError: the reconstruction is not finite (nothing is written), or a folder
      is in the way of one of the files.
    OSError: the files cannot be written (nothing is changed).
  """
  from focus_jax import file_sets  # pylint: disable=import-outside-toplevel
  from focus_jax import images as images_lib  # pylint: disable=import-outside-toplevel
  from focus_jax import obj_io  # pylint: disable=import-outside-toplevel
  from focus_jax.data import landmarks as lm_lib  # pylint: disable=import-outside-toplevel
  bad = non_finite_fields(rec)
  if bad:
    raise DataError(f"{image_path or rec.name}: the reconstruction is not finite "
                    f"({', '.join(bad)} hold NaN or inf); nothing written")
  files = output_files(name)
  final = {k: os.path.join(out_dir, v) for k, v in files.items()}
  tmp = file_sets.staging_folder(os.path.dirname(final["mesh"]))
  try:
    staged = {k: os.path.join(tmp, os.path.basename(v)) for k, v in files.items()}
    obj_io.write_obj(staged["mesh"], rec.vertices, rec.triangles, rec.uv,
                     header=f"focus-jax {rec.method} of {image_path or rec.name}\n"
                            "camera space, mm (x right, y down, z depth)")
    np.savez_compressed(staged["params"], **params_arrays(rec, image_path))
    images_lib.save_png(staged["render"], rec.render)
    images_lib.save_png(staged["mask"], rec.inlier_mask.astype(np.uint8) * 255)
    row = csv_name or os.path.basename(image_path) or os.path.basename(name)
    lm_lib.write_landmarks_csv(staged["landmarks"], [row], rec.landmarks[None])
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  file_sets.commit(tmp, [os.path.basename(v) for v in files.values()])
  return final
