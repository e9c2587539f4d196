"""``focus-jax info``: load a morphable model file and describe it."""

from absl import flags

SUMMARY = "Load a morphable model file and print what it holds."
USAGE = "focus-jax info MODEL_FILE"


def main(args):
  if len(args) != 1:
    raise flags.Error(f"usage: {USAGE}")
  from focus_jax import morphable  # pylint: disable=import-outside-toplevel
  print(morphable.load(args[0]))
