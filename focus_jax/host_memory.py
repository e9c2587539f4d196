"""Host-memory set-up for CPU runs: keep freed memory instead of unmapping it.

XLA:CPU gives every run of a compiled function one fresh temporary buffer (all
its intermediates; ~320 MB for a rendering step at 27k triangles, batch 12)
and frees it at the end. glibc's ``malloc`` serves blocks that large with
``mmap`` and returns them with ``munmap`` (its mmap threshold is capped at
32 MB), so each run touches new pages and pays a page fault per 4 KiB it
writes: ~14,000 faults, 15-20 % of the step's CPU time on a 2-core VM.

:func:`keep_freed_memory` asks glibc to serve every block from its heap and
to keep freed memory there (``mallopt``: no ``mmap`` for large blocks, no
trimming, one arena so that blocks freed by one thread are reused by
another). The next run then usually reuses pages that are already mapped (not
always: in some processes the buffer keeps landing on fresh pages). The price:
the process's resident memory does not shrink after a peak, which suits a
training or fitting process that repeats the same step. The command-line entry
points (``focus-jax``, ``experiments/*``) and the benchmarks call it; library
users may call it first thing in their own programs. It changes no result.
``FOCUS_JAX_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Largest value mallopt takes for the trim threshold (an int): never trim.
_NEVER_TRIM = 2**31 - 1

_state = {"applied": None}


def keep_freed_memory() -> bool:
  """Makes glibc's malloc reuse freed memory (see the module docstring).

  Call it before the first JAX computation: the single-arena setting only
  applies to threads that have not yet allocated (XLA's CPU worker threads
  start with its first computation); called later it still stops the
  ``mmap``/``munmap`` of large blocks from threads already on the main arena.

  Returns:
    True when the settings were applied (now or by an earlier call); False
    when they do not apply: not glibc (macOS, musl), ``mallopt`` refused them,
    or ``FOCUS_JAX_KEEP_FREED_MEMORY`` is 0/false/no/off.
  """
  if _state["applied"] is not None:
    return _state["applied"]
  flag = os.environ.get("FOCUS_JAX_KEEP_FREED_MEMORY", "1").strip().lower()
  applied = False
  if flag not in ("0", "false", "no", "off") and platform.libc_ver()[0] == "glibc":
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
      mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
      applied = all(mallopt(param, value) == 1 for param, value in (
          (_M_ARENA_MAX, 1), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_MMAP_MAX, 0)))
  _state["applied"] = applied
  return applied
