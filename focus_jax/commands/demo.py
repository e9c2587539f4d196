"""``focus-jax demo``: the main job on the built-in default, no downloads.

Renders the model (mean face, head poses, random faces), then fits synthetic
occluded faces with the robust per-image fit in one compiled batch — and
scikit-image's astronaut photo with a pasted surgical mask, fitted as
``focus-jax fit`` fits photos, when dlib is installed — and writes
OUT/summary.png (rows: input | fit | mask | error map), OUT/metrics.json (mask F1,
occluder IoU, NoW-style 3D error per face) and OUT/index.html.
"""

from absl import flags

from focus_jax.commands import common

SUMMARY = "Render the built-in model, fit occluded faces, summarise in index.html + PNG."
USAGE = "focus-jax demo [--out DIR] [--size PX] [--samples N] [--faces N] [--fit_size PX]"

SAMPLES = flags.DEFINE_integer("samples", 8, "demo: number of random faces drawn from the model.",
                               lower_bound=0)
FACES = flags.DEFINE_integer("faces", 3, "demo: synthetic occluded faces to fit (0 = none).",
                             lower_bound=0)
FIT_SIZE = flags.DEFINE_integer("fit_size", 128, "demo: width and height of the fitted images "
                                "in pixels (--size is the gallery's).", lower_bound=32)
PHOTO = flags.DEFINE_bool("photo", True, "demo: also fit scikit-image's astronaut with a pasted "
                          "surgical mask of known mask (needs dlib; skipped with a note "
                          "otherwise).")
ROUNDS = flags.DEFINE_integer("rounds", 5, "demo: EM rounds of the robust fit.", lower_bound=1)
STEPS = flags.DEFINE_integer("steps", 40, "demo: Adam steps per EM round.", lower_bound=1)


def main(args):
  if args:
    raise flags.Error(f"demo takes no positional arguments, got {args}")
  model = common.load_model()
  from focus_jax import fitting  # pylint: disable=import-outside-toplevel
  from focus_jax.app import demo  # pylint: disable=import-outside-toplevel
  demo.run_demo(out_dir=common.out_dir("demo"), size=common.SIZE.value,
                num_samples=SAMPLES.value, seed=common.SEED.value, model=model,
                num_faces=FACES.value, fit_size=FIT_SIZE.value, photo=PHOTO.value,
                fit_config=fitting.FitConfig(rounds=ROUNDS.value, steps=STEPS.value))
