"""Imports a script of ``benchmarks/`` as a module, for tests of its functions."""

import importlib.util
import os
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")


def load(name: str):
  """``benchmarks/<name>.py`` as a fresh module (its folder importable, as when run)."""
  if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)
  spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod
