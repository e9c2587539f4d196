"""Data parallelism: one code path from one CPU to many hosts.

* Every step runs under ``jax.pmap`` over this host's local devices, with the
  axis :data:`~focus_jax.train.steps.AXIS`; after ``jax.distributed.initialize``
  that axis spans every device of every process, so ``pmean`` of gradients and
  BatchNorm statistics is global. One device and one process is the special case.
* Each process reads its own shard of the data (:class:`~focus_jax.data.pipeline.
  Pipeline` with ``process_index``/``process_count``) and splits its host batch
  over its local devices (:func:`shard`).
* :func:`initialize` wraps ``jax.distributed.initialize``; on CPU it selects the
  gloo collectives (without them cross-process collectives fail on CPU).
"""

from __future__ import annotations

import collections
import itertools
import json
from typing import Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.train.steps import AXIS


def initialize(coordinator: Optional[str] = None, num_processes: int = 1,
               process_id: int = 0) -> None:
  """Joins a multi-process run (no-op for a single process without a coordinator).

  Args:
    coordinator: ``host:port`` of process 0 (None: single process, or let JAX
      auto-detect on clusters it knows, e.g. Cloud TPU, when num_processes > 1).
    num_processes, process_id: this run's size and this process's rank.
  """
  if coordinator is None and num_processes <= 1:
    return
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception:  # pylint: disable=broad-except
    pass  # older/newer JAX without the option: GPU/TPU runs do not need it
  if coordinator is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def _local_sharding():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  return NamedSharding(Mesh(np.asarray(jax.local_devices()), (AXIS,)), PartitionSpec(AXIS))


def put_sharded(tree):
  """Host pytree of [local devices, ...] arrays -> one slice per local device."""
  sharding = _local_sharding()
  return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x), sharding), tree)


def replicate(tree):
  """Host pytree -> one copy per local device (leading axis = local devices)."""
  n = jax.local_device_count()
  return put_sharded(jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree))


def unreplicate(tree):
  """The first local device's copy, as NumPy."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), jax.device_get(tree))


def numeric(batch: dict) -> dict:
  """Drops non-numeric entries (names) from a batch dict."""
  return {k: v for k, v in batch.items()
          if isinstance(v, (np.ndarray, jax.Array)) and np.dtype(v.dtype).kind in "biuf"}


def shard(batch: dict, num_devices: Optional[int] = None) -> dict:
  """Host batch [B, ...] -> [devices, B / devices, ...] (numeric entries only)."""
  n = num_devices or jax.local_device_count()
  out = {}
  for k, v in numeric(batch).items():
    if v.shape[0] % n:
      raise ValueError(f"shard: host batch of {v.shape[0]} does not split over {n} local "
                       "devices; make the batch size a multiple of the device count")
    out[k] = np.asarray(v).reshape((n, v.shape[0] // n) + v.shape[1:])
  return out


def prefetch_to_device(iterator: Iterable[dict], size: int = 2) -> Iterator[dict]:
  """Shards host batches over the local devices and keeps ``size`` of them on the
  devices ahead of the step (transfers overlap the running computation)."""
  queue = collections.deque()

  def put(batch):
    return put_sharded(shard(batch))

  it = iter(iterator)
  for batch in itertools.islice(it, size):
    queue.append(put(batch))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(it, 1):
      queue.append(put(batch))


def pmap_step(step, donate: bool = False, devices=None):
  """``jax.pmap`` of a ``step(state, batch, model, identity)``: state and batch are per
  device, model and identity broadcast. ``devices``: default all (local) devices."""
  donate_args = (0,) if donate and jax.default_backend() != "cpu" else ()
  return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None, None),
                  donate_argnums=donate_args, devices=devices)


def host_batch_size(global_batch: int) -> int:
  """This process's share of the global batch (checked to split evenly)."""
  procs, local = jax.process_count(), jax.local_device_count()
  if global_batch % (procs * local):
    raise ValueError(f"--batch_size={global_batch} must be a multiple of the number of "
                     f"devices ({procs} process(es) x {local} local device(s))")
  return global_batch // procs


def allgather_json(obj) -> list:
  """[obj of process 0, obj of process 1, ...] for a small JSON-able object."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  raw = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
  lengths = multihost_utils.process_allgather(np.asarray([raw.size], np.int32))
  padded = np.zeros((int(np.max(lengths)),), np.uint8)
  padded[:raw.size] = raw
  every = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode("utf-8"))
          for row, n in zip(np.asarray(every), np.asarray(lengths).ravel())]


def sync(name: str) -> None:
  """A barrier across processes (no-op for one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def broadcast_int(value: int) -> int:
  """Process 0's integer, on every process."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return int(multihost_utils.broadcast_one_to_all(jnp.asarray(value, jnp.int32)))
