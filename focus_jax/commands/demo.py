"""``focus-jax demo``: the main job on the built-in default, no downloads."""

from absl import flags

from focus_jax.commands import common

SUMMARY = "Render the built-in face model (mean face, poses, random samples) to PNGs."
USAGE = "focus-jax demo [--out DIR] [--size PX] [--samples N]"

SAMPLES = flags.DEFINE_integer("samples", 8, "demo: number of random faces drawn from the model.",
                               lower_bound=0)


def main(args):
  if args:
    raise flags.Error(f"demo takes no positional arguments, got {args}")
  from focus_jax import demo  # pylint: disable=import-outside-toplevel
  demo.run_demo(out_dir=common.out_dir("demo"), size=common.SIZE.value,
                num_samples=SAMPLES.value, seed=common.SEED.value, model=common.load_model())
