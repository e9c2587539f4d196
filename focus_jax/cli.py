"""The ``focus-jax`` command.

Usage::

    focus-jax demo [--out DIR] [--size PX]      # the main job on the built-in default
    focus-jax info MODEL_FILE                    # load a 3DMM file and describe it
    focus-jax --help                             # every flag

Sub-commands are the first positional argument; flags are absl flags.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "out/demo", "Folder the command writes its results to (created if "
                    "missing).")
flags.DEFINE_integer("size", 224, "Image width and height in pixels.", lower_bound=16)
flags.DEFINE_integer("samples", 8, "demo: number of random faces drawn from the model.",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "Random seed for everything the command draws.")
flags.DEFINE_string("model", None, "Morphable model file (BFM 2017 .h5, BFM 2009 / Deep3D .mat, "
                    "eos .bin, focus-jax .npz). Default: the built-in face model.")

_COMMANDS = {
    "demo": "Render the built-in face model (mean face, poses, random samples) to PNGs.",
    "info": "Load a morphable model file and print what it holds.",
}


def _usage() -> str:
  lines = ["usage: focus-jax COMMAND [flags]", "", "commands:"]
  lines += [f"  {name:6s} {text}" for name, text in _COMMANDS.items()]
  lines += ["", "Run `focus-jax --helpfull` for every flag."]
  return "\n".join(lines)


def _load_model(path):
  from focus_jax import morphable  # pylint: disable=import-outside-toplevel
  return morphable.builtin() if path is None else morphable.load(path)


def _main(argv):
  if len(argv) < 2 or argv[1] not in _COMMANDS:
    given = argv[1] if len(argv) > 1 else None
    raise app.UsageError((f"unknown command {given!r}\n\n" if given else "") + _usage())
  command, args = argv[1], argv[2:]
  if command == "demo":
    if args:
      raise app.UsageError(f"demo takes no positional arguments, got {args}")
    from focus_jax import demo  # pylint: disable=import-outside-toplevel
    demo.run_demo(out_dir=FLAGS.out, size=FLAGS.size, num_samples=FLAGS.samples,
                  seed=FLAGS.seed, model=_load_model(FLAGS.model))
  elif command == "info":
    if len(args) != 1:
      raise app.UsageError("usage: focus-jax info MODEL_FILE")
    from focus_jax import morphable  # pylint: disable=import-outside-toplevel
    print(morphable.load(args[0]))


def run():
  """Console-script entry point."""
  from focus_jax import errors  # pylint: disable=import-outside-toplevel

  if any(arg in ("-h", "--help", "--helpshort") for arg in sys.argv[1:]):
    # absl's --help lists the flags of __main__, which is the console-script shim here.
    print(_usage().replace("Run `focus-jax --helpfull` for every flag.", "flags:"))
    print(FLAGS.module_help(sys.modules[__name__]))
    return

  def main(argv):
    try:
      _main(argv)
    except errors.FocusError as e:
      print(f"focus-jax: error: {e}", file=sys.stderr)
      sys.exit(1)

  app.run(main)


if __name__ == "__main__":
  run()
