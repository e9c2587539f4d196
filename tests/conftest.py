"""Fixtures shared by the test modules."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
  """The project's shared data folder (``<repo>/../shared``); it may be absent.

  Tests that need a file from it should skip, naming the file, when it is missing.
  """
  return Path(__file__).resolve().parents[1].parent / "shared"
