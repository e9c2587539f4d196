"""The ``focus-jax`` command.

Usage::

    focus-jax COMMAND [ARGS...] [--flags]
    focus-jax --help                 # the commands and every flag
    focus-jax COMMAND --help         # one command's synopsis and flags

The sub-commands are the modules of :mod:`focus_jax.commands`; flags are absl flags
(``--flag=value`` or ``--flag value``, ``--flagfile=FILE``).
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging

from focus_jax.commands import NAMES, common

FLAGS = flags.FLAGS


def _commands() -> dict:
  """name -> module, for every sub-command that exists (importing defines its flags)."""
  found = {}
  for name in NAMES:
    try:
      found[name] = importlib.import_module(f"focus_jax.commands.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"focus_jax.commands.{name}":
        raise
  return found


def _usage(commands: dict) -> str:
  lines = ["usage: focus-jax COMMAND [ARGS...] [--flags]", "", "commands:"]
  lines += [f"  {name:6s} {module.SUMMARY}" for name, module in commands.items()]
  lines += ["", "`focus-jax COMMAND --help` shows one command's flags."]
  return "\n".join(lines)


def _help(commands: dict, command: str | None) -> str:
  if command is None:
    parts = [_usage(commands), "", "shared flags:", FLAGS.module_help(common)]
    for name, module in commands.items():
      text = FLAGS.module_help(module)
      if text:
        parts += ["", f"{name} flags:", text]
    return "\n".join(parts)
  module = commands[command]
  parts = [f"usage: {module.USAGE}", "", module.SUMMARY]
  if module.__doc__:
    body = module.__doc__.strip().split("\n", 1)
    if len(body) > 1:
      parts += ["", body[1].strip()]
  parts += ["", "flags:", FLAGS.module_help(module), FLAGS.module_help(common)]
  return "\n".join(p for p in parts if p is not None)


def run(argv=None):
  """Console-script entry point."""
  from focus_jax import errors  # pylint: disable=import-outside-toplevel

  argv = list(sys.argv if argv is None else argv)
  commands = _commands()
  positional = [a for a in argv[1:] if not a.startswith("-")]
  command = positional[0] if positional and positional[0] in commands else None
  if any(arg in ("-h", "--help", "--helpshort") for arg in argv[1:]):
    # absl's own --help lists the flags of __main__, which is the console-script shim.
    try:
      print(_help(commands, command), flush=True)
    except BrokenPipeError:  # `focus-jax --help | head`
      sys.stdout = None
    return

  def main(args):
    from focus_jax import host_memory  # pylint: disable=import-outside-toplevel
    host_memory.keep_freed_memory()   # before any computation starts XLA's threads
    if not FLAGS["verbosity"].present:  # jax logs backend probing at INFO; --verbosity=0 shows it
      logging.set_verbosity(logging.WARNING)
    if len(args) < 2 or args[1] not in commands:
      given = args[1] if len(args) > 1 else None
      raise app.UsageError((f"unknown command {given!r}\n\n" if given else "") +
                           _usage(commands))
    try:
      commands[args[1]].main(args[2:])
    except flags.Error as e:
      raise app.UsageError(str(e)) from e
    except errors.FocusError as e:
      print(f"focus-jax {args[1]}: error: {e}", file=sys.stderr)
      sys.exit(1)

  app.run(main, argv=argv)


if __name__ == "__main__":
  run()
