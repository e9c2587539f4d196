"""A resumable, per-host sharded, prefetching input pipeline (host side NumPy + device put).

Order. Epoch ``e`` visits the dataset in the permutation drawn from
``numpy.random.default_rng([seed, e])`` (or in order without shuffling). On
``process_count`` hosts, host ``h`` takes every ``process_count``-th element of
that permutation starting at ``h``, after cutting the permutation to a multiple
of ``process_count``: the hosts' shares are disjoint, equally long, and together
cover the dataset except at most ``process_count - 1`` examples per epoch (a
different few each epoch). Batches do not straddle epochs: an epoch's tail that
cannot fill a batch is dropped.

State. Everything that decides the next batch is in :meth:`Pipeline.state`, a
small dict of NumPy integers (``seed``, ``epoch``, ``position`` = examples of this
host's epoch order consumed, ``num_skipped``, ``bad`` = indices found unreadable):
save it with the training checkpoint and :meth:`Pipeline.restore` it, and the run
continues with exactly the batches an uninterrupted run would have seen. The state
always describes the batches *delivered* so far, not the ones prefetched. Each
host has its own state (positions differ only through skipped images); save one
per process.

Bad data. An example whose loading raises
:class:`~focus_jax.errors.ImageReadError` is skipped with a warning (once per
index), counted (``num_skipped``) and remembered (``bad``), and the next example
takes its place; skipping is deterministic, so resuming is still exact.

Randomness for augmentation. ``transform(example, rng)`` gets
``numpy.random.default_rng([seed, epoch, index])``, a function of the example's
place in the run only.

Prefetching. A background thread loads (``num_threads`` images in parallel) and
collates up to ``prefetch`` batches ahead and, when a ``sharding`` is given, puts
them on the devices (``jax.make_array_from_process_local_data``: this host's
batch becomes its shard of the global batch).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import warnings
from typing import Any, Callable, Optional

import numpy as np

from focus_jax.errors import DataError, ImageReadError

_STOP = object()


def data_sharding(axis_name: str = "data"):
  """A 1-D mesh over all devices, batch axis sharded: the usual data parallelism."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.asarray(jax.devices()), (axis_name,))
  return NamedSharding(mesh, PartitionSpec(axis_name))


def collate(examples: list) -> dict:
  """Stacks a list of example dicts (same keys) into a batch dict of NumPy arrays."""
  keys = examples[0].keys()
  out = {}
  for k in keys:
    values = [e[k] for e in examples]
    if isinstance(values[0], str):
      out[k] = np.asarray(values)
    else:
      out[k] = np.stack([np.asarray(v) for v in values])
  return out


class Pipeline:
  """Batches of a dataset, shuffled per epoch, sharded per host, prefetched, resumable.

  Args:
    source: anything with ``len(source)`` and ``source.load(index) -> dict`` of
      arrays (and strings), e.g. a :class:`~focus_jax.data.dataset.FaceDataset`
      or :class:`~focus_jax.data.synthetic.SyntheticFaces`.
    batch_size: examples per batch *on this host*.
    seed: shuffling seed.
    shuffle: permute each epoch (False: dataset order every epoch).
    transform: optional ``f(example, rng) -> example`` (augmentation).
    load_fn: optional ``f(index) -> example`` used instead of ``source.load``.
    process_index, process_count: this host and the number of hosts (default
      ``jax.process_index()`` / ``jax.process_count()``).
    num_threads: parallel loads per batch (1 = sequential).
    prefetch: batches prepared ahead by the background thread (0 = none, load
      in the caller's thread).
    sharding: None (NumPy batches) or a ``jax.sharding.Sharding`` for the global
      batch; numeric arrays are put on the devices, strings stay NumPy.
    state: a :meth:`state` to start from.
  """

  def __init__(self, source, batch_size: int, *, seed: int = 0, shuffle: bool = True,
               transform: Optional[Callable[[dict, np.random.Generator], dict]] = None,
               load_fn: Optional[Callable[[int], dict]] = None,
               process_index: Optional[int] = None, process_count: Optional[int] = None,
               num_threads: int = 4, prefetch: int = 2, sharding: Any = None,
               state: Optional[dict] = None):
    if process_index is None or process_count is None:
      import jax  # pylint: disable=import-outside-toplevel
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
      raise ValueError(f"Pipeline: process_index {process_index} not in [0, {process_count})")
    if batch_size < 1:
      raise ValueError(f"Pipeline: batch_size must be positive, got {batch_size}")
    self.source = source
    self.size = len(source)
    self.batch_size = int(batch_size)
    self.shuffle = shuffle
    self.transform = transform
    self.load_fn = load_fn if load_fn is not None else source.load
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.num_threads = max(int(num_threads), 1)
    self.prefetch = max(int(prefetch), 0)
    self.sharding = sharding
    name = getattr(source, "description", type(source).__name__)
    if self.size == 0:
      raise DataError(f"Pipeline: the dataset {name} is empty")
    self.per_host = self.size // self.process_count
    if self.per_host < self.batch_size:
      raise DataError(
          f"Pipeline: {name} has {self.size} examples, {self.per_host} per host for "
          f"{self.process_count} host(s): fewer than one batch of {self.batch_size}")
    self._state = dict(seed=int(seed), epoch=0, position=0, num_skipped=0, bad=())
    if state is not None:
      self._set_state(state)
    self._order_cache = {}
    self._executor = None
    self._thread = None
    self._queue = None
    self._stop = None
    self._warned = set()

  # --------------------------------------------------------------------------- state

  def state(self) -> dict:
    """The position after the last delivered batch, as a dict of NumPy values."""
    s = self._state
    return dict(seed=np.int64(s["seed"]), epoch=np.int64(s["epoch"]),
                position=np.int64(s["position"]), num_skipped=np.int64(s["num_skipped"]),
                bad=np.asarray(sorted(s["bad"]), np.int64))

  def _set_state(self, state: dict) -> None:
    try:
      self._state = dict(seed=int(state["seed"]), epoch=int(state["epoch"]),
                         position=int(state["position"]),
                         num_skipped=int(state.get("num_skipped", 0)),
                         bad=tuple(int(b) for b in np.asarray(state.get("bad", ())).ravel()))
    except (KeyError, TypeError, ValueError) as e:
      raise DataError(f"Pipeline.restore: not a pipeline state ({e}); expected a dict "
                      "with seed, epoch, position (from Pipeline.state())") from e

  def restore(self, state: dict) -> None:
    """Continues from a saved :meth:`state` (discarding prefetched batches)."""
    self._shutdown()
    self._set_state(state)

  @property
  def epoch(self) -> int:
    return self._state["epoch"]

  @property
  def num_skipped(self) -> int:
    return self._state["num_skipped"]

  @property
  def steps_per_epoch(self) -> int:
    """Batches per epoch on this host when nothing is skipped."""
    return self.per_host // self.batch_size

  # --------------------------------------------------------------------------- order

  def epoch_order(self, epoch: int) -> np.ndarray:
    """[per_host] dataset indices this host visits in ``epoch``, in order."""
    order = self._order_cache.get(epoch)
    if order is None:
      seed = self._state["seed"]
      perm = (np.random.default_rng([seed, epoch]).permutation(self.size) if self.shuffle
              else np.arange(self.size))
      order = perm[:self.per_host * self.process_count][self.process_index::self.process_count]
      if len(self._order_cache) > 4:
        self._order_cache.clear()
      self._order_cache[epoch] = order
    return order

  # --------------------------------------------------------------------------- loading

  def _load_one(self, index: int, epoch: int, seed: int):
    try:
      example = self.load_fn(int(index))
    except ImageReadError as e:
      return e
    if self.transform is not None:
      rng = np.random.default_rng([seed, epoch, int(index)])
      example = self.transform(example, rng)
    example = dict(example)
    example["index"] = np.int64(index)
    return example

  def _produce(self, state: dict):
    """The next batch after ``state``: (batch dict, new state). Pure in ``state``."""
    epoch, pos = state["epoch"], state["position"]
    bad, num_skipped = set(state["bad"]), state["num_skipped"]
    seed = state["seed"]
    examples, restarts = [], 0
    while len(examples) < self.batch_size:
      order = self.epoch_order(epoch)
      need = self.batch_size - len(examples)
      if len(order) - pos < need:   # epoch tail cannot complete this batch
        restarts += 1
        if restarts > 2:
          raise DataError(f"Pipeline: two whole epochs of {self.per_host} examples gave no "
                          f"batch of {self.batch_size}; {len(bad)} examples are unreadable")
        epoch, pos, examples = epoch + 1, 0, []
        continue
      candidates = order[pos:pos + need]
      pos += need
      todo = [i for i in candidates if int(i) not in bad]
      num_skipped += len(candidates) - len(todo)
      if self._executor is not None and len(todo) > 1:
        results = list(self._executor.map(lambda i: self._load_one(i, epoch, seed), todo))
      else:
        results = [self._load_one(i, epoch, seed) for i in todo]
      for index, result in zip(todo, results):
        if isinstance(result, ImageReadError):
          bad.add(int(index))
          num_skipped += 1
          if int(index) not in self._warned:
            self._warned.add(int(index))
            warnings.warn(f"skipping example {int(index)}: {result}", stacklevel=2)
        else:
          examples.append(result)
    new_state = dict(seed=state["seed"], epoch=epoch, position=pos,
                     num_skipped=num_skipped, bad=tuple(sorted(bad)))
    return collate(examples), new_state

  def _to_device(self, batch: dict) -> dict:
    if self.sharding is None:
      return batch
    import jax  # pylint: disable=import-outside-toplevel
    out = {}
    for k, v in batch.items():
      if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
        out[k] = jax.make_array_from_process_local_data(self.sharding, v)
      else:
        out[k] = v
    return out

  # --------------------------------------------------------------------------- threads

  def _worker(self, state, q, stop):
    try:
      while not stop.is_set():
        batch, state = self._produce(state)
        item = (self._to_device(batch), state)
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)

  def _start(self):
    if self.num_threads > 1 and self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(self.num_threads)
    if self.prefetch and self._thread is None:
      self._queue = queue.Queue(maxsize=self.prefetch)
      self._stop = threading.Event()
      self._thread = threading.Thread(target=self._worker,
                                      args=(dict(self._state), self._queue, self._stop),
                                      daemon=True, name="focus_jax-pipeline")
      self._thread.start()

  def _shutdown(self):
    if self._thread is not None:
      self._stop.set()
      while self._thread.is_alive():
        try:
          self._queue.get(timeout=0.05)
        except queue.Empty:
          pass
      self._thread = None
      self._queue = None

  def close(self) -> None:
    """Stops the background threads (the pipeline can be iterated again later)."""
    self._shutdown()
    if self._executor is not None:
      self._executor.shutdown(wait=True)
      self._executor = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    """The next batch: dict of [B, ...] arrays plus ``index`` [B] (dataset indices)."""
    self._start()
    if self._thread is None:
      batch, self._state = self._produce(self._state)
      return self._to_device(batch)
    item = self._queue.get()
    if isinstance(item, BaseException):
      self._thread = None
      raise item
    batch, self._state = item
    return batch
