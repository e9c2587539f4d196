r"""Writes a synthetic occluded-face dataset in the FOCUS reference layout.

Every sample is a random face of the chosen morphable model (identity,
expression, albedo, pose, SH light), over a real or procedural background, with
unmodelled appearance detail (brows, lipstick, stubble, freckles) and occluders
covering a chosen fraction of the face (see ``focus_jax/data/synthetic.py``).
Sample i depends only on (--seed, i), so datasets can be extended or rebuilt.

Output::

    OUT/images/000000.png                      the image
    OUT/images/000000_visible_skin_mask.png    ground truth: face and not occluded
    OUT/images/000000_face_mask.png            the whole face region (--maps)
    OUT/images/000000_detail.png               strength of the unmodelled detail (--maps)
    OUT/{train,val,test}_landmarks.csv         reference-layout landmarks (80/10/10 %)
    OUT/params.npz                             coefficients, pose, light, exact landmarks,
                                               coverage, meshes (--meshes), per-sample info

Example::

    python experiments/make_synthetic.py --out /tmp/synth --num 1000 --size 224
"""

import os
import sys

from absl import app, flags

from focus_jax import errors, morphable
from focus_jax.data import synthetic

_OUT = flags.DEFINE_string("out", None, "Output folder (created).", required=True)
_NUM = flags.DEFINE_integer("num", 100, "Number of samples.", lower_bound=1)
_START = flags.DEFINE_integer("start", 0, "Index of the first sample, e.g. to make another "
                              "part of the same dataset (same --seed) in another --out folder: "
                              "each run writes its own CSVs and params.npz.", lower_bound=0)
_SIZE = flags.DEFINE_integer("size", 224, "Image width and height in pixels.", lower_bound=16)
_SEED = flags.DEFINE_integer("seed", 0, "Dataset seed; sample i depends only on (seed, i).",
                             lower_bound=0)
_MODEL = flags.DEFINE_string("model", "builtin", "'builtin' (the built-in face model) or a "
                             "morphable model file (BFM 2017 .h5, BFM 2009 / Deep3D .mat, "
                             "eos/SFM .bin, focus-jax .npz).")
_OCCLUDERS = flags.DEFINE_string("occluders", None, "Optional folder of RGBA .png occluder "
                                 "images (alpha = occluder) used besides the procedural ones.")
_COVERAGE = flags.DEFINE_list("coverage", ["0.1", "0.4"], "Min,max fraction of the face "
                              "pixels the occluders cover (drawn uniformly per sample).")
_OCCLUDED = flags.DEFINE_float("occluded", 1.0, "Fraction of samples that get occluders.",
                               lower_bound=0.0, upper_bound=1.0)
_PHOTOS = flags.DEFINE_float("photo_backgrounds", 0.5, "Fraction of backgrounds cut from "
                             "scikit-image's sample photos (the rest procedural).",
                             lower_bound=0.0, upper_bound=1.0)
_SPLITS = flags.DEFINE_list("splits", ["0.8", "0.1", "0.1"], "Train,val,test fractions.")
_BATCH = flags.DEFINE_integer("batch", 8, "Faces rendered per call.", lower_bound=1)
_MESHES = flags.DEFINE_bool("meshes", True, "Store every mesh ([N, V, 3] float32) in "
                            "params.npz (large for big N: drop with --nomeshes; meshes can be "
                            "recomputed from the stored coefficients).")
_MAPS = flags.DEFINE_bool("maps", True, "Also write *_face_mask.png and *_detail.png.")
_DECIMALS = flags.DEFINE_integer("landmark_decimals", 0, "Decimals of the CSV landmarks (0: "
                                 "integers, which the reference's reader needs).", lower_bound=0)


def _floats(values, flag, count):
  try:
    out = [float(v) for v in values]
  except ValueError:
    raise app.UsageError(f"--{flag}: expected {count} numbers, got {values}") from None
  if len(out) != count:
    raise app.UsageError(f"--{flag}: expected {count} numbers, got {len(out)}")
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  coverage = _floats(_COVERAGE.value, "coverage", 2)
  if not 0.0 <= coverage[0] <= coverage[1] <= 1.0:
    raise app.UsageError(f"--coverage: need 0 <= min <= max <= 1, got {coverage}")
  splits = _floats(_SPLITS.value, "splits", 3)
  try:
    model = (morphable.builtin() if _MODEL.value == "builtin"
             else morphable.load(_MODEL.value))
    config = synthetic.SyntheticConfig(size=_SIZE.value, coverage=tuple(coverage),
                                       occlusion_probability=_OCCLUDED.value,
                                       photo_probability=_PHOTOS.value)
    generator = synthetic.SyntheticFaces(model, config, seed=_SEED.value,
                                         occluder_dir=_OCCLUDERS.value, batch_size=_BATCH.value)
  except errors.FocusError as e:
    sys.exit(f"error: {e}")
  print(f"model: {model}")
  result = synthetic.write_dataset(_OUT.value, generator, _NUM.value, start=_START.value,
                                   fractions=splits, save_meshes=_MESHES.value,
                                   save_maps=_MAPS.value, decimals=_DECIMALS.value)
  print(f"wrote {_NUM.value} samples to {os.path.abspath(result['image_dir'])}")
  for key, path in result["paths"].items():
    print(f"  {key}: {path}")
  print(f"{result['seconds_per_sample'] * 1e3:.0f} ms per sample (including the first "
        "compilation)")


if __name__ == "__main__":
  app.run(main)
