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


def check_out_dir(path: str) -> None:
  """Checks, before any work, that the output folder ``path`` is one a command can write.

  It may exist (a writable folder) or not (then its nearest existing parent must
  be a writable folder, to create it in); nothing is created here.

  Raises:
    DataError: one line naming ``--out``, the path and what is wrong.
  """
  import os  # pylint: disable=import-outside-toplevel
  from focus_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  if os.path.lexists(path) and not os.path.isdir(path):
    raise DataError(f"--out {path}: exists and is not a folder")
  if os.path.isdir(path):
    if not os.access(path, os.W_OK | os.X_OK):
      raise DataError(f"--out {path}: the folder is not writable")
    return
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise DataError(f"--out {path}: cannot create it, {parent} is not a folder")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise DataError(f"--out {path}: cannot create it, {parent} is not writable")


def load_model(path=None):
  """The morphable model of --model (or ``path``); the built-in face when unset."""
  from focus_jax import morphable  # pylint: disable=import-outside-toplevel
  path = MODEL.value if path is None else path
  return morphable.builtin() if path is None else morphable.load(path)
