"""Sub-commands of the ``focus-jax`` console command.

Each sub-command is a module here with

* ``SUMMARY`` — one line for ``focus-jax --help``;
* ``USAGE`` — its synopsis (positional arguments), shown by ``focus-jax CMD --help``;
* its own absl flags, defined at import time (imports must stay light: no jax at
  module level, so ``--help`` is instant);
* ``main(args: list[str]) -> None`` — runs the command on the positional
  arguments left after flag parsing; raises :class:`focus_jax.errors.FocusError`
  for bad input (the CLI prints it as one line and exits 1).

Flags several commands share (``--out``, ``--model``, ``--seed``, ...) live in
:mod:`focus_jax.commands.common`.
"""

# Order = order in `focus-jax --help`.
NAMES = ("demo", "fit", "eval", "now", "synth", "train", "info")
