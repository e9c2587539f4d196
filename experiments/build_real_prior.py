r"""Builds the built-in face's misfit prior from real unoccluded photos.

Detects each photo's 68 landmarks with dlib, aligns it to the 224-pixel crop as
``focus-jax fit`` does, fits it robustly and records each visible vertex's colour
residual; the per-vertex median over the photos, divided by the likelihood's σ
and clipped to [1, --max_scale], is the σ multiplier
(focus_jax.fitting.build_prior_from_photos). ``focus-jax fit`` uses the packaged
result (focus_jax/priors/builtin_real_faces.npz) for the built-in model by default.

The packaged file was built from the *tune* half of the people of
../shared/data/real_faces (benchmarks/real_split.txt), so that the semi-real
benchmark's held-out people never shaped it::

    python experiments/build_real_prior.py --photos ../shared/data/real_faces \
        --split benchmarks/real_split.txt --half tune \
        --out focus_jax/priors/builtin_real_faces.npz
"""

import os
import sys

from absl import app, flags

flags.DEFINE_string("photos", None, "Folder of unoccluded face photos.", required=True)
flags.DEFINE_string("out", None, "Output .npz file.", required=True)
flags.DEFINE_string("split", None, "Optional people split (benchmarks/real_split.txt "
                    "layout: name, person, half per line); with --half, only that half's "
                    "photos are used.")
flags.DEFINE_enum("half", "tune", ["tune", "heldout"], "Half of --split to use.")
flags.DEFINE_float("max_scale", 3.0, "Cap of the σ multiplier.", lower_bound=1.0)
flags.DEFINE_integer("min_count", 5, "Photos that must see a vertex for it to get a "
                     "multiplier (else 1).", lower_bound=1)
flags.DEFINE_integer("batch", 4, "Photos per fit call.", lower_bound=1)
FLAGS = flags.FLAGS


def _names(folder, split_path, half):
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  names = images.list_images(folder)
  if not split_path:
    return names
  chosen = set()
  with open(split_path, encoding="utf-8") as f:
    for line in f:
      parts = line.split()
      if len(parts) >= 3 and not line.startswith("#") and parts[2] == half:
        chosen.add(parts[0])
  return [n for n in names if n in chosen]


def main(argv):
  del argv
  import numpy as np  # pylint: disable=import-outside-toplevel
  from focus_jax import images, morphable  # pylint: disable=import-outside-toplevel
  from focus_jax import prior as prior_lib  # pylint: disable=import-outside-toplevel
  from focus_jax.app import inference  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  from focus_jax.fitting import build_prior_from_photos  # pylint: disable=import-outside-toplevel
  names = _names(FLAGS.photos, FLAGS.split, FLAGS.half)
  if not names:
    sys.exit(f"build_real_prior: no photos in {FLAGS.photos}"
             + (f" for half {FLAGS.half!r} of {FLAGS.split}" if FLAGS.split else ""))
  preps = []
  for name in names:
    path = os.path.join(FLAGS.photos, name)
    try:
      preps.append(inference.prepare(images.read_image(path), name=path))
    except DataError as e:
      print(f"skipped: {e}")
  model = morphable.builtin()
  prior = build_prior_from_photos(model, np.stack([p.crop for p in preps]),
                                  np.stack([p.crop_landmarks for p in preps]),
                                  batch=FLAGS.batch, max_scale=FLAGS.max_scale,
                                  min_count=FLAGS.min_count)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  prior_lib.save(FLAGS.out, prior)
  s = prior.sigma_scale
  print(f"{FLAGS.out}: {len(preps)} photos, σ multiplier median {np.median(s):.2f}, "
        f"90th percentile {np.percentile(s, 90):.2f}, max {s.max():.2f}")


if __name__ == "__main__":
  app.run(main)
