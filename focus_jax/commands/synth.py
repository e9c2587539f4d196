"""``focus-jax synth``: write a synthetic occluded-face dataset with ground truth.

Every sample is a random face of the morphable model (identity, expression,
albedo, pose, SH light) over a real or procedural background, with unmodelled
appearance detail (brows, lipstick, stubble, freckles) and occluders covering a
chosen fraction of the face (focus_jax.data.synthetic). Sample i depends only on
(--seed, i), so datasets can be extended or rebuilt.

Output:
  OUT/images/000000.png                      the image
  OUT/images/000000_visible_skin_mask.png    ground truth: face and not occluded
  OUT/images/000000_face_mask.png            the whole face region (--maps)
  OUT/images/000000_detail.png               strength of the unmodelled detail (--maps)
  OUT/{train,val,test}_landmarks.csv         reference-layout landmarks (--splits)
  OUT/params.npz                             coefficients, pose, light, exact landmarks,
                                             coverage, meshes (--meshes), per-sample info

Example:
  focus-jax synth --out data/synth --num 1000 --size 224
"""

import os

from absl import flags

from focus_jax.commands import common

SUMMARY = "Write a synthetic occluded-face dataset (images, masks, landmarks, meshes)."
USAGE = "focus-jax synth --out DIR [--num N] [--size PX] [--seed S] [--model FILE]"

NUM = flags.DEFINE_integer("num", 100, "synth: number of samples.", lower_bound=1)
START = flags.DEFINE_integer(
    "start", 0, "synth: index of the first sample, e.g. to make another part of the same "
    "dataset (same --seed) in another --out folder: each run writes its own CSVs and "
    "params.npz.", lower_bound=0)
OCCLUDERS = flags.DEFINE_string(
    "occluders", None, "synth: optional folder of RGBA .png occluder images (alpha = "
    "occluder) used besides the procedural ones.")
COVERAGE = flags.DEFINE_list(
    "coverage", ["0.1", "0.4"], "synth: min,max fraction of the face pixels the occluders "
    "cover (drawn uniformly per sample).")
OCCLUDED = flags.DEFINE_float("occluded", 1.0, "synth: fraction of samples that get occluders.",
                              lower_bound=0.0, upper_bound=1.0)
PHOTOS = flags.DEFINE_float(
    "photo_backgrounds", 0.5, "synth: fraction of backgrounds cut from scikit-image's sample "
    "photos (the rest procedural).", lower_bound=0.0, upper_bound=1.0)
SPLITS = flags.DEFINE_list("splits", ["0.8", "0.1", "0.1"], "synth: train,val,test fractions.")
BATCH = flags.DEFINE_integer("batch", 8, "synth: faces rendered per compiled call.",
                             lower_bound=1)
MESHES = flags.DEFINE_bool(
    "meshes", True, "synth: store every mesh ([N, V, 3] float32) in params.npz (needed by "
    "`focus-jax eval` for the 3D error; large for big N: drop with --nomeshes).")
MAPS = flags.DEFINE_bool("maps", True, "synth: also write *_face_mask.png and *_detail.png.")
DECIMALS = flags.DEFINE_integer(
    "landmark_decimals", 0, "synth: decimals of the CSV landmarks (0: integers, which the "
    "reference's reader needs).", lower_bound=0)


def _floats(values, flag, count):
  try:
    out = [float(v) for v in values]
  except ValueError:
    raise flags.Error(f"--{flag}: expected {count} numbers, got {values}") from None
  if len(out) != count:
    raise flags.Error(f"--{flag}: expected {count} numbers, got {len(out)}")
  return out


def main(args):
  if args:
    raise flags.Error(f"synth takes no positional arguments, got {args}")
  coverage = _floats(COVERAGE.value, "coverage", 2)
  if not 0.0 <= coverage[0] <= coverage[1] <= 1.0:
    raise flags.Error(f"--coverage: need 0 <= min <= max <= 1, got {coverage}")
  splits = _floats(SPLITS.value, "splits", 3)
  if min(splits) < 0 or sum(splits) <= 0:
    raise flags.Error(f"--splits: need non-negative fractions with a positive sum, got {splits}")
  from focus_jax import morphable  # pylint: disable=import-outside-toplevel
  from focus_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  model = (morphable.builtin() if common.MODEL.value in (None, "builtin")
           else common.load_model())
  config = synthetic.SyntheticConfig(size=common.SIZE.value, coverage=tuple(coverage),
                                     occlusion_probability=OCCLUDED.value,
                                     photo_probability=PHOTOS.value)
  generator = synthetic.SyntheticFaces(model, config, seed=common.SEED.value,
                                       occluder_dir=OCCLUDERS.value, batch_size=BATCH.value)
  print(f"model: {model}")
  out = common.out_dir("synth")
  result = synthetic.write_dataset(out, generator, NUM.value, start=START.value,
                                   fractions=splits, save_meshes=MESHES.value,
                                   save_maps=MAPS.value, decimals=DECIMALS.value)
  print(f"wrote {NUM.value} samples to {os.path.abspath(result['image_dir'])}")
  for key, path in result["paths"].items():
    print(f"  {key}: {path}")
  print(f"{result['seconds_per_sample'] * 1e3:.0f} ms per sample (including the first "
        "compilation)")
