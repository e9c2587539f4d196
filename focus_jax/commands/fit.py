"""``focus-jax fit``: reconstruct the faces in photos.

For each photo (files, or every image in the folders given, recursively):

  NAME.obj              the mesh in camera space, mm (with vt when the model has uv)
  NAME_params.npz       coefficients, pose, light, landmarks, crop <-> photo maps
  NAME_render.png       the rendered face over the photo
  NAME_mask.png         255 = face pixel the model explains, 0 = outlier or background
  NAME_landmarks.csv    the fitted 68 landmarks (reference CSV layout, photo pixels)

NAME is the file name without extension (for folders: its path inside the folder).
Landmarks come from --landmarks (rows matched by the name relative to the folder
given, or by the file name) or else from dlib (the `detect` extra). Without
--checkpoint each photo gets the per-image robust fit; with it, the trained
encoder + UNet of that training run.

Each photo's files appear together or not at all (staged, then committed as one
set: :mod:`focus_jax.file_sets`). A photo that fails for any reason (unreadable, no
face found and no landmarks, landmarks that do not fit the photo, a name the
landmark CSV cannot hold, a result that is not finite, a write error) is reported
on one line and skipped; the others are still written, and the command then exits
with status 1. An unusable --out (a file, not writable) stops the command with
status 2, and a missing path or a malformed --landmarks file with status 1, before
any work. Files under --out are never taken as photos when --out lies inside a
folder given.
"""

from absl import flags

from focus_jax.commands import common

SUMMARY = "Reconstruct the faces in photos: mesh, render, inlier mask, landmarks per image."
USAGE = ("focus-jax fit IMAGE_OR_FOLDER... [--out DIR] [--model PATH] [--landmarks CSV] "
         "[--checkpoint DIR] [--iterations N] [--fit_batch N]")

LANDMARKS = flags.DEFINE_string(
    "landmarks", None, "fit: landmark CSV in the reference layout (image name, then 68 x, y "
    "pairs; dlib pixel convention). Photos without a row are detected with dlib.")
CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "fit, now: a training run's --workdir (or its checkpoints folder): use "
    "its encoder + UNet instead of the per-image robust fit. The run's model and image size "
    "are used unless --model is given.")
ITERATIONS = flags.DEFINE_integer(
    "iterations", 200, "fit, now: optimiser iterations of the per-image fit (spread over its EM "
    "rounds).", lower_bound=1)
FIT_BATCH = flags.DEFINE_integer(
    "fit_batch", 4, "fit, now: photos reconstructed together in one compiled call (the run "
    "compiles once, ~30-60 s on a CPU, for this batch size).", lower_bound=1)
MISFIT_PRIOR = flags.DEFINE_string(
    "misfit_prior", "auto", "fit, now: misfit prior of the robust per-image fit (per-vertex "
    "σ multipliers where the model cannot explain real skin: eyes, brows, lips). 'auto': the "
    "packaged real-face prior for the built-in model (experiments/build_real_prior.py; "
    "benchmarks/results/real.md), none for other models and for --checkpoint; 'none': no "
    "prior; or a .npz file (experiments/build_prior.py, experiments/build_real_prior.py).")
SEGMENTER = flags.DEFINE_string(
    "segmenter", "auto", "fit, now: real-face segmenter whose per-pixel face probability is the "
    "robust per-image fit's inlier prior (a small UNet trained on real photos with pasted "
    "occluders: experiments/train_segmenter.py; benchmarks/results/real.md). 'auto': the "
    "packaged one (none for --checkpoint, --non_robust or when the package lacks it); 'none': "
    "no segmenter; or a weights .npz file.")
SEGMENTER_WEIGHT = flags.DEFINE_float(
    "segmenter_weight", 4.0, "fit, now: weight of the segmenter's log-odds in the fit's "
    "E-step (FitConfig.inlier_prior_weight; 0 = ignore it).", lower_bound=0.0)
CROP_FALLBACK = flags.DEFINE_bool(
    "crop_fallback", False, "fit: the photos are aligned face crops; where dlib finds no face, "
    "place the landmarks on the whole crop instead of skipping the photo.")
NON_ROBUST = flags.DEFINE_bool(
    "non_robust", False, "fit, now: per-image fit without outlier estimation (every visible "
    "face pixel counts as an inlier); the baseline the robust fit is compared with.")
OUTLIER_MODEL = flags.DEFINE_enum(
    "outlier_model", "colour", ["colour", "uniform"], "fit, now: outlier class of the robust "
    "E-step. 'colour': a per-image colour model of the occluders, contrast-sensitive "
    "smoothing and a 2-px contour margin (the default: occluder IoU 0.79 vs 0.63 on "
    "benchmarks/results/fit.md); 'uniform': the FOCUS reference's uniform outlier density "
    "with uniform smoothing, mask inside the render.")
INITIAL_TINT_RIDGE = flags.DEFINE_float(
    "initial_tint_ridge", 1.0, "fit, now: how far the first closed-form light's colour tint is "
    "pulled towards white (1 = halfway, 0 = off), so that a large bright occluder cannot be "
    "taken for the face in the first E-step (see FitConfig.initial_tint_ridge). Lower it for "
    "photos with a strong colour cast and no large occluder.", lower_bound=0.0)


def fit_config():
  """The FitConfig of the flags (--iterations, --non_robust, --outlier_model,
  --initial_tint_ridge, --segmenter_weight)."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from focus_jax import fitting  # pylint: disable=import-outside-toplevel
  base = fitting.FitConfig()
  steps = max(1, -(-ITERATIONS.value // max(base.rounds, 1)))
  config = dataclasses.replace(base, steps=steps, robust=not NON_ROBUST.value,
                               initial_tint_ridge=INITIAL_TINT_RIDGE.value,
                               inlier_prior_weight=SEGMENTER_WEIGHT.value)
  if OUTLIER_MODEL.value == "uniform":
    config = config.reference_e_step()
  return config


def make_reconstructor(model_path=None):
  """A :class:`focus_jax.app.inference.Reconstructor` for the shared and fit flags."""
  from focus_jax.app import inference  # pylint: disable=import-outside-toplevel
  from focus_jax import prior as prior_lib  # pylint: disable=import-outside-toplevel
  path = common.MODEL.value if model_path is None else model_path
  checkpoint = CHECKPOINT.value
  if checkpoint:
    ckpt = inference.load_checkpoint(checkpoint)
    model = common.load_model(path) if path else None
    rec = inference.Reconstructor(model, checkpoint=ckpt, batch_size=FIT_BATCH.value)
  else:
    rec = inference.Reconstructor(common.load_model(path), config=fit_config(),
                                  size=common.SIZE.value, batch_size=FIT_BATCH.value)
  choice = MISFIT_PRIOR.value or "none"
  if choice == "auto":
    rec.prior = None if rec.checkpoint is not None else prior_lib.packaged_for(rec.model)
  elif choice != "none":
    rec.prior = prior_lib.load(choice, rec.model)
    if rec.checkpoint is not None:   # the prior is baked into the jitted predict function
      rec = inference.Reconstructor(rec.model, checkpoint=rec.checkpoint, prior=rec.prior,
                                    batch_size=FIT_BATCH.value)
  rec.segmenter = load_segmenter(rec)
  return rec


def load_segmenter(rec):
  """The --segmenter of a reconstructor (None where it has no use)."""
  from focus_jax.nets import segmenter  # pylint: disable=import-outside-toplevel
  choice = SEGMENTER.value or "none"
  if choice == "none" or rec.checkpoint is not None or not rec.config.robust:
    return None
  return segmenter.packaged() if choice == "auto" else segmenter.load(choice)


def collect_images(paths, exclude=None):
  """[(image path, output name, CSV keys)] for files and folders (recursive).

  exclude: a folder (the --out folder) whose files are not taken from the folders
    given: a fit's own outputs are not photos.

  Raises:
    DataError: a path does not exist, a folder holds no images, or two photos
      would write the same output name.
  """
  import os  # pylint: disable=import-outside-toplevel
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  skip = os.path.join(os.path.realpath(exclude), "") if exclude else None
  items = []
  for p in paths:
    if os.path.isdir(p):
      names = images.list_images(p, recursive=True)
      if skip:
        names = [n for n in names
                 if not os.path.realpath(os.path.join(p, n)).startswith(skip)]
      if not names:
        raise DataError(f"{p}: no images found (extensions "
                        f"{', '.join(images.IMAGE_EXTENSIONS)})")
      for n in names:
        items.append((os.path.join(p, n), os.path.splitext(n)[0], (n, os.path.basename(n))))
    elif os.path.exists(p):
      base = os.path.basename(p)
      items.append((p, os.path.splitext(base)[0], (p, base)))
    else:
      raise DataError(f"not found: {p}")
  seen = {}
  for path, name, _ in items:
    if name in seen:
      raise DataError(f"{seen[name]} and {path} would both write {name}.obj; fit them into "
                      "different --out folders")
    seen[name] = path
  return items


def read_photo(path):
  """The photo at ``path`` ([H, W, 3] float in [0, 1]); a one-line DataError when unreadable."""
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError, ImageReadError  # pylint: disable=import-outside-toplevel
  try:
    return images.read_image(path)
  except ImageReadError as e:
    cause = e.__cause__
    why = str(cause).splitlines()[0].strip() if cause is not None and str(cause) else ""
    why = why if len(why) <= 100 else why[:97] + "..."
    reason = f"{type(cause).__name__}: {why}" if cause is not None else str(e)
    raise DataError(f"{path}: cannot read the image, is it a photo? ({reason})") from e


def one_line_error(path, error):
  """``error`` of the photo at ``path`` as a one-line DataError naming the photo."""
  from focus_jax.errors import DataError, FocusError  # pylint: disable=import-outside-toplevel
  text = str(error).strip()
  first = text.splitlines()[0] if text else ""
  if isinstance(error, FocusError):
    message = first if first.startswith(path) else f"{path}: {first}"
  elif isinstance(error, OSError):
    where = f": {error.filename}" if error.filename else ""
    message = f"{path}: cannot write its outputs ({error.strerror or first}{where})"
  else:
    message = f"{path}: {type(error).__name__}: {first}"
  out = DataError(message if len(message) <= 400 else message[:397] + "...")
  out.__cause__ = error
  return out


def check_csv_name(path):
  """The photo's row name in NAME_landmarks.csv must fit the reference layout."""
  import os  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  base = os.path.basename(path)
  if "," in base or "\n" in base or "\r" in base:
    raise DataError(f"{path}: its file name contains a comma or line break, which the "
                    "landmark CSV (NAME_landmarks.csv) cannot hold; rename the photo")


def main(args):
  if not args:
    raise flags.Error(f"fit needs at least one image or folder\nusage: {USAGE}")
  import os  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from focus_jax.app import inference  # pylint: disable=import-outside-toplevel
  from focus_jax.data import landmarks as lm_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError, FocusError  # pylint: disable=import-outside-toplevel

  out_dir = common.out_dir("fit")
  try:
    common.check_out_dir(out_dir)
  except DataError as e:
    print(f"focus-jax fit: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  items = collect_images(args, exclude=out_dir)
  table = lm_lib.read_landmarks_csv(LANDMARKS.value).as_dict() if LANDMARKS.value else {}
  lookup = [next((table[k] for k in keys if k in table), None) for _, _, keys in items]
  detectors = []    # built on first need (dlib is optional)

  def detector(path):
    if not detectors:
      try:
        detectors.append(inference.default_detector(crop_fallback=CROP_FALLBACK.value))
      except DataError as e:
        detectors.append(e)
    if isinstance(detectors[0], DataError):
      raise DataError(f"{path}: no landmarks given (--landmarks) and no automatic detection "
                      f"({detectors[0]})")
    return detectors[0]

  rec = make_reconstructor()
  many = len(items) > 1
  failures, written, pending = [], [], []

  # The bar counts finished photos (written or skipped); the first batch also
  # waits for the compilation.
  bar = tqdm(total=len(items), desc="fit", unit="img", disable=not many)

  def fail(path, error):
    error = one_line_error(path, error)
    failures.append((path, error))
    bar.update(1)
    if many:
      tqdm.write(f"focus-jax fit: skipped {error}", file=sys.stderr)

  def reconstruct(batch):
    """[(item, Reconstruction or the exception)]: a batch that fails is retried photo by
    photo, so that one bad photo does not take the others with it."""
    try:
      return list(zip((item for _, item in batch), rec.run([p for p, _ in batch])))
    except Exception as e:  # pylint: disable=broad-except
      if len(batch) == 1:
        return [(batch[0][1], e)]
      return [r for one in batch for r in reconstruct([one])]

  def flush():
    for item, result in reconstruct(pending):
      path, name, _ = item
      try:
        if isinstance(result, Exception):
          raise result
        inference.write_outputs(result, out_dir, name, image_path=path,
                                csv_name=os.path.basename(path))
      except Exception as e:  # pylint: disable=broad-except
        fail(path, e)
        continue
      written.append(path)
      bar.update(1)
    pending.clear()

  for item, lm in zip(items, lookup):
    path = item[0]
    try:
      check_csv_name(path)
      photo = read_photo(path)
      prep = inference.prepare(photo, landmarks=lm, detector=None if lm is not None
                               else detector(path), size=rec.size, name=path)
    except Exception as e:  # pylint: disable=broad-except
      fail(path, e)
      continue
    pending.append((prep, item))
    if len(pending) == rec.batch_size:
      flush()
  if pending:
    flush()
  bar.close()
  if failures:
    if not many:
      raise failures[0][1]
    raise FocusError(f"{len(failures)} of {len(items)} images failed (listed above); the "
                     f"other {len(written)} were written to {out_dir}")
  print(f"focus-jax fit: wrote {len(written)} reconstruction{'s' * (len(written) != 1)} to "
        f"{out_dir} ({rec.method})")
