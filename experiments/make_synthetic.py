r"""Writes a synthetic occluded-face dataset in the FOCUS reference layout.

The same as ``focus-jax synth`` (:mod:`focus_jax.commands.synth`, which documents
the output layout), as a script with the same flags; ``--out`` is required here
and ``--model=builtin`` is accepted for the built-in model.

Example::

    python experiments/make_synthetic.py --out /tmp/synth --num 1000 --size 224
"""

from absl import app, flags

from focus_jax import errors
from focus_jax.commands import common, synth

flags.mark_flag_as_required("out")
flags.adopt_module_key_flags(common)
flags.adopt_module_key_flags(synth)


def main(argv):
  try:
    synth.main(argv[1:])
  except flags.Error as e:
    raise app.UsageError(str(e)) from e
  except errors.FocusError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
