"""Sets of files that appear together in one folder, or not at all (host-side, POSIX).

A photo's outputs (``NAME.obj``, ``NAME_params.npz``, ...) are written into a
staging folder next to them (same file system) and then committed:

1. every target is checked first (a folder where a file should go stops the
   commit before anything is touched);
2. under an exclusive lock on the folder (``flock``; concurrent writers in other
   processes or threads take turns), a ``COMMIT`` list is written into the staging
   folder, each old file is moved into the staging folder and the new one renamed
   into its place; an error undoes the renames, restoring the old set;
3. the staging folder is removed, still under the lock.

A crash (power, SIGKILL) in step 2 leaves a staging folder holding ``COMMIT``;
the next process that commits into that folder (its first commit there) or
:func:`recover` finishes it, so readers after that see either the old set or the
new one. Staging folders of
crashed writers that had not reached ``COMMIT`` stay as hidden ``.partial-*``
folders (the targets were not touched): they can be deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Sequence

from focus_jax.errors import DataError

try:
  import fcntl
except ImportError:   # not POSIX: commits are not serialised between processes
  fcntl = None

STAGING_PREFIX = ".partial-"
_COMMIT = "COMMIT"
_OLD = "old"
_RECOVERED = set()   # folders this process has already recovered (listing is O(files))


def staging_folder(folder: str) -> str:
  """A new, empty staging folder inside ``folder`` (created with its parents)."""
  os.makedirs(folder, exist_ok=True)
  return tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)


@contextlib.contextmanager
def _locked(folder: str) -> Iterator[None]:
  if fcntl is None:
    yield
    return
  fd = os.open(folder, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)    # releases the lock


def _check_targets(folder: str, names: Sequence[str]) -> None:
  for n in names:
    target = os.path.join(folder, n)
    if os.path.isdir(target) and not os.path.islink(target):
      raise DataError(f"{target}: a folder is in the way of this output file")


def commit(staging: str, names: Sequence[str]) -> None:
  """Moves the files ``names`` from ``staging`` into its parent folder, as one set.

  Raises:
    DataError: a folder is in the way of a target (nothing was touched).
    OSError: a rename failed (the old set is restored).
  The staging folder is removed in every case.
  """
  folder = os.path.dirname(os.path.abspath(staging))
  try:
    _check_targets(folder, names)
    with _locked(folder):
      if folder not in _RECOVERED:
        recover(folder, _locked_already=True)
        _RECOVERED.add(folder)
      marker = os.path.join(staging, _COMMIT)
      with open(marker, "w") as f:
        f.write("\n".join(names) + "\n")
      old = os.path.join(staging, _OLD)
      os.mkdir(old)
      done = []
      try:
        for n in names:
          target = os.path.join(folder, n)
          had_old = os.path.lexists(target)
          if had_old:
            os.replace(target, os.path.join(old, n))
          done.append((n, had_old))
          os.replace(os.path.join(staging, n), target)
      except BaseException:
        os.remove(marker)          # from here on a crash must not roll this set forward
        for n, had_old in reversed(done):
          target = os.path.join(folder, n)
          if os.path.lexists(target) and not os.path.lexists(os.path.join(staging, n)):
            os.replace(target, os.path.join(staging, n))
          if had_old:
            os.replace(os.path.join(old, n), target)
        raise
      finally:
        shutil.rmtree(staging, ignore_errors=True)   # under the lock: see recover()
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def recover(folder: str, _locked_already: bool = False) -> list:
  """Finishes the commits into ``folder`` that a crash interrupted; returns their names.

  A staging folder holding ``COMMIT`` had all its files complete: the ones not yet
  renamed are moved into place (over the old ones) and the folder is removed.
  """
  if not os.path.isdir(folder):
    return []
  if not _locked_already:
    with _locked(folder):
      return recover(folder, _locked_already=True)
  finished = []
  for entry in sorted(os.listdir(folder)):
    staging = os.path.join(folder, entry)
    marker = os.path.join(staging, _COMMIT)
    if not entry.startswith(STAGING_PREFIX) or not os.path.isfile(marker):
      continue
    with open(marker) as f:
      # Plain file names only: a COMMIT list never moves anything out of ``folder``.
      names = [n for n in f.read().splitlines()
               if n and n not in (".", "..") and os.path.basename(n) == n]
    for n in names:
      src = os.path.join(staging, n)
      if os.path.isfile(src):
        os.replace(src, os.path.join(folder, n))
    shutil.rmtree(staging, ignore_errors=True)
    finished.append(entry)
  return finished
