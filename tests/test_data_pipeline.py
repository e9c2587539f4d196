"""The input pipeline: per-epoch shuffling, per-host sharding, exact resumption, bad data."""

import warnings

import jax
import numpy as np
import pytest

from focus_jax.data import pipeline
from focus_jax.errors import DataError, ImageReadError


class Source:
  """A toy dataset: example i is (x = i, image = i * ones), some indices unreadable."""

  def __init__(self, n, bad=()):
    self.n, self.bad = n, set(bad)

  def __len__(self):
    return self.n

  def load(self, i):
    if i in self.bad:
      raise ImageReadError(f"img{i}.jpg: cannot read the image (truncated)")
    return dict(x=np.int64(i), image=np.full((2, 2, 3), i, np.float32), name=f"img{i}.jpg")


def _augment(example, rng):
  example["noise"] = rng.uniform(size=3).astype(np.float32)
  return example


def _make(source, **kw):
  args = dict(batch_size=4, seed=7, process_index=0, process_count=1, transform=_augment)
  args.update(kw)
  return pipeline.Pipeline(source, **args)


def _run(pipe, steps):
  return [next(pipe) for _ in range(steps)]


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


@pytest.mark.parametrize("prefetch,threads", [(0, 1), (2, 3)])
def test_resumes_at_the_same_batch(prefetch, threads):
  source = Source(23, bad=(5, 17))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    reference = _run(_make(source, prefetch=prefetch, num_threads=threads), 14)  # > 2 epochs
    for stop in (1, 5, 6, 11):
      first = _make(source, prefetch=prefetch, num_threads=threads)
      _run(first, stop)
      saved = first.state()
      first.close()
      resumed = _make(source, prefetch=prefetch, num_threads=threads, state=saved)
      for got, want in zip(_run(resumed, 14 - stop), reference[stop:]):
        _same(got, want)
      resumed.close()
      # restore() on a running pipeline discards what it prefetched.
      other = _make(source, prefetch=prefetch, num_threads=threads)
      _run(other, 3)
      other.restore(saved)
      _same(next(other), reference[stop])
      other.close()


def test_state_is_small_and_counts_skips():
  pipe = _make(Source(10, bad=(2,)), prefetch=0)
  with pytest.warns(UserWarning, match="skipping example 2: img2.jpg"):
    _run(pipe, 2)
  state = pipe.state()
  assert set(state) == {"seed", "epoch", "position", "num_skipped", "bad"}
  assert state["bad"].tolist() == [2] and state["num_skipped"] == 1
  assert all(np.ndim(v) == 0 for k, v in state.items() if k != "bad")
  with pytest.raises(DataError, match="not a pipeline state"):
    pipe.restore({"epoch": 1})


def test_each_epoch_is_a_new_permutation_without_repeats():
  source = Source(24)
  pipe = _make(source, prefetch=0, transform=None)
  assert pipe.steps_per_epoch == 6
  epochs = [np.concatenate([b["x"] for b in _run(pipe, 6)]) for _ in range(3)]
  for e in epochs:
    assert sorted(e.tolist()) == list(range(24))
  assert not np.array_equal(epochs[0], epochs[1])
  np.testing.assert_array_equal(epochs[1], pipe.epoch_order(1))
  # the permutation is a function of (seed, epoch) only
  np.testing.assert_array_equal(_make(source).epoch_order(2), epochs[2])
  assert not np.array_equal(_make(source, seed=8).epoch_order(0), epochs[0])


def test_no_shuffle_keeps_dataset_order():
  pipe = _make(Source(9), shuffle=False, prefetch=0, transform=None)
  np.testing.assert_array_equal(next(pipe)["x"], [0, 1, 2, 3])
  np.testing.assert_array_equal(next(pipe)["x"], [4, 5, 6, 7])
  np.testing.assert_array_equal(next(pipe)["x"], [0, 1, 2, 3])   # tail of 1 dropped


@pytest.mark.parametrize("n,hosts", [(24, 3), (25, 3), (8, 8), (30, 4)])
def test_per_host_sharding_covers_without_overlap(n, hosts):
  source = Source(n)
  for epoch in range(3):
    orders = [_make(source, batch_size=1, process_index=h, process_count=hosts)
              .epoch_order(epoch) for h in range(hosts)]
    assert len({len(o) for o in orders}) == 1               # lockstep: equal shares
    union = np.concatenate(orders)
    assert len(np.unique(union)) == len(union)              # no overlap
    assert len(union) == n - n % hosts                      # covers all but < hosts
  if n % hosts == 0:
    assert sorted(union.tolist()) == list(range(n))


def test_hosts_see_disjoint_batches():
  source = Source(32)
  seen = []
  for h in range(4):
    pipe = _make(source, batch_size=2, process_index=h, process_count=4, prefetch=0)
    seen.append(np.concatenate([b["x"] for b in _run(pipe, 4)]))   # one epoch per host
  all_seen = np.concatenate(seen)
  assert sorted(all_seen.tolist()) == list(range(32))


def test_strings_stay_numpy_and_arrays_go_to_devices():
  pipe = _make(Source(8), sharding=pipeline.data_sharding(), prefetch=1)
  batch = next(pipe)
  assert isinstance(batch["image"], jax.Array) and batch["image"].shape == (4, 2, 2, 3)
  assert isinstance(batch["name"], np.ndarray) and batch["name"][0].startswith("img")
  assert isinstance(batch["index"], jax.Array)
  pipe.close()


def test_empty_or_too_small_dataset_is_an_error():
  with pytest.raises(DataError, match="empty"):
    _make(Source(0))
  with pytest.raises(DataError, match="fewer than one batch"):
    _make(Source(5), batch_size=2, process_count=3, process_index=0)
  pipe = _make(Source(6, bad=range(6)), prefetch=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(DataError, match="unreadable"):
      next(pipe)


def test_errors_in_the_loader_reach_the_caller():
  class Broken(Source):
    def load(self, i):
      raise RuntimeError("bug in the loader")

  pipe = _make(Broken(8), prefetch=2)
  with pytest.raises(RuntimeError, match="bug in the loader"):
    next(pipe)
  pipe.close()
