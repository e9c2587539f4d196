"""Flags shared by several ``focus-jax`` sub-commands."""

from absl import flags

OUT = flags.DEFINE_string(
    "out", None, "Folder the command writes its results to (created if missing). "
    "Default: out/<command>.")
MODEL = flags.DEFINE_string(
    "model", None, "Morphable model file (BFM 2017 .h5, BFM 2009 / Deep3D .mat, eos .bin, "
    "focus-jax .npz). Default: the built-in face model.")
SEED = flags.DEFINE_integer("seed", 0, "Random seed for everything the command draws.")
SIZE = flags.DEFINE_integer("size", 224, "Image width and height in pixels.", lower_bound=16)


def out_dir(command: str) -> str:
  """The --out folder, or out/<command> when the flag is not given."""
  return OUT.value or f"out/{command}"


def load_model(path=None):
  """The morphable model of --model (or ``path``); the built-in face when unset."""
  from focus_jax import morphable  # pylint: disable=import-outside-toplevel
  path = MODEL.value if path is None else path
  return morphable.builtin() if path is None else morphable.load(path)
