"""host_memory.keep_freed_memory: repeated runs of a jitted function stop faulting in
fresh pages for XLA's temporary buffer, and change no result."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="keep_freed_memory applies to glibc's malloc only")

# Runs a function whose intermediates XLA keeps in one temporary buffer of
# ~2 x 32 MB (two cumulative sums cannot fuse into one loop). With the kept heap
# the first calls may still fault in fresh pages: the heap grows by one buffer per
# call for 1 to 6 calls (measured; it varies from process to process with where
# glibc places the blocks, likely small blocks that outlive a call split the
# freed buffer) and then holds room enough (~0.5-0.8 GB here). The old test
# measured from the second call and so failed in about one process in five. So the
# script warms up until three calls in a row fault fewer
# than 100 pages (at most 40 calls), then reports the median faults of ten calls
# and how many warm-up calls it took.
_SCRIPT = r"""
import json, resource, sys
import numpy as np
from focus_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp

@jax.jit
def f(x):
  a = jnp.cumsum(x)
  b = jnp.cumsum(a[::-1] * 0.5)
  return jnp.sum(a * b[::-1] - x), jnp.max(b)

def faults_of_one_call():
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  out = np.asarray(f(x))
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, out

x = jnp.asarray(np.random.default_rng(0).normal(size=(1 << 23,)), jnp.float32)
first = np.asarray(f(x))
warmup, quiet = 0, 0
while quiet < 3 and warmup < 40:
  quiet = quiet + 1 if faults_of_one_call()[0] < 100 else 0
  warmup += 1
faults = []
for _ in range(10):
  count, out = faults_of_one_call()
  faults.append(count)
print(json.dumps(dict(applied=applied, faults=float(np.median(faults)), warmup=warmup,
                      same=bool(np.array_equal(first, out)),
                      checksum=float(np.sum(out, dtype=np.float64)))))
"""


def _run(mode):
  env = dict(os.environ, FOCUS_JAX_KEEP_FREED_MEMORY="1", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_stops_page_faults_and_changes_no_result():
  default, kept = _run("default"), _run("keep")
  assert kept["applied"] and not default["applied"]
  # Without it each call maps the temporary buffer afresh: ~64 MB of new pages
  # (~16,000 faults of 4 KiB; fewer with transparent huge pages, so only a floor),
  # and it never settles.
  assert default["faults"] > 1000 and default["warmup"] == 40, default
  # With it the heap settles within a few calls (then, rarely, grows by one more
  # buffer: 4-6 faulting calls in 300, the last by call 50, in five processes), and
  # calls fault nothing new.
  assert kept["warmup"] < 30, kept
  assert kept["faults"] < 0.01 * default["faults"], (kept, default)
  assert kept["same"] and default["same"]
  assert kept["checksum"] == default["checksum"]


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
  from focus_jax import host_memory
  monkeypatch.setattr(host_memory, "_state", {"applied": None})
  monkeypatch.setenv("FOCUS_JAX_KEEP_FREED_MEMORY", "0")
  assert host_memory.keep_freed_memory() is False
