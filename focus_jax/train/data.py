"""Training data: a dataset folder -> aligned S×S examples -> per-host pipelines.

A data directory is either the reference layout (images + ``<split>_landmarks.csv``,
e.g. what ``experiments/make_synthetic.py`` writes) or a plain folder of face
photos whose landmarks are detected (dlib) and cached; see
:func:`focus_jax.data.dataset.open_dataset`. Examples are aligned to the canonical
crop at the training size.
"""

from __future__ import annotations

import glob
import os
import threading
from typing import Optional

import jax
import numpy as np

from focus_jax.data import augment as augment_lib
from focus_jax.data import cutout as cutout_lib
from focus_jax.data import dataset as dataset_lib
from focus_jax.data import pipeline as pipeline_lib
from focus_jax.errors import DataError
from focus_jax.train.config import TrainConfig

PSEUDO_PATTERN = "pseudo_masks_p*.npz"


def open_data(data_dir: str, split: Optional[str] = "train"):
  """The dataset of ``data_dir`` (reference layout split, else detected landmarks).

  Raises:
    DataError: the folder does not exist or holds no usable images.
  """
  if not data_dir:
    raise DataError("--data_dir is required: a dataset folder (reference layout, e.g. from "
                    "experiments/make_synthetic.py, or a folder of face photos)")
  if not os.path.isdir(data_dir):
    raise DataError(f"--data_dir={data_dir}: no such folder")
  image_dir = data_dir
  if os.path.isdir(os.path.join(data_dir, "images")) and glob.glob(
      os.path.join(data_dir, "*_landmarks.csv")):
    image_dir = os.path.join(data_dir, "images")
  want = split
  if split is not None and not any(os.path.isfile(p) for p in dataset_lib._find_csv(  # pylint: disable=protected-access
      os.path.abspath(image_dir), split)):
    want = None   # a plain folder: every image, detected landmarks
  if want is not None:
    return dataset_lib.read_reference(image_dir, want)
  return dataset_lib.read_folder(image_dir, progress=False)


class AlignedSource:
  """``source.load(i)`` -> the example aligned to ``size``, plus optional extras.

  Decoding and aligning an example costs ~3 ms of host time at 64² (more at 224²),
  which is more than a small network's step on an accelerator; ``cache_mb`` keeps
  loaded examples in host memory, so that a dataset that fits is read from disk once
  and later epochs cost nothing. Cached arrays are read-only and identical to freshly
  loaded ones, so caching never changes a run.

  Args:
    ds: a FaceDataset. size: crop side. pseudo: optional {index: [S, S] uint8}.
    cache_mb: host memory for loaded examples [MiB]; examples beyond it are loaded
      every time (0: no cache).
  """

  def __init__(self, ds, size: int, pseudo: Optional[dict] = None, cache_mb: float = 0):
    self.ds, self.size, self.pseudo = ds, size, pseudo
    self.description = getattr(ds, "description", "dataset")
    self._cache, self._cache_left = {}, int(cache_mb * 2**20)
    self._lock = threading.Lock()

  def __len__(self):
    return len(self.ds)

  def load(self, index: int) -> dict:
    cached = self._cache.get(index)
    if cached is not None:
      return dict(cached)
    ex = self._load(index)
    size = sum(v.nbytes for v in ex.values() if isinstance(v, np.ndarray))
    with self._lock:
      if size <= self._cache_left and index not in self._cache:
        for v in ex.values():
          if isinstance(v, np.ndarray):
            v.setflags(write=False)
        self._cache[index] = ex
        self._cache_left -= size
    return dict(ex)

  def _load(self, index: int) -> dict:
    ex = self.ds.load(index, size=self.size)
    ex = {k: v for k, v in ex.items() if k not in ("transform", "original_size")}
    ex["landmarks"] = np.nan_to_num(ex["landmarks"].astype(np.float32))
    if self.pseudo is not None:
      if index not in self.pseudo:
        raise DataError(f"no pseudo mask for example {index} ({self.ds[index].name}); "
                        "regenerate them with experiments/make_pseudo_masks.py on the same "
                        "--data_dir")
      ex["pseudo"] = (self.pseudo[index] > 127).astype(np.float32)
    return ex


def training_transform(config: TrainConfig):
  """``f(example, rng)`` of a training stage, or None: ``config.augment`` (the reference's
  shift / scale / rotation / flip), then for stage 'unet' the pasted occluders of
  ``config.unet_occluders``. The pipeline draws ``rng`` from (seed, epoch, index), so a
  resumed run sees the same augmented batches."""
  fns = []
  if config.augment:
    fns.append(augment_lib.make_transform(config.image_size))
  if config.stage == "unet":
    occluders = cutout_lib.make_transform(config.unet_occluders)
    if occluders is not None:
      fns.append(occluders)
  if not fns:
    return None

  def transform(example: dict, rng) -> dict:
    for fn in fns:
      example = fn(example, rng)
    return example

  return transform


def make_pipeline(source, config: TrainConfig, host_batch: int, shuffle: bool = True,
                  state: Optional[dict] = None) -> pipeline_lib.Pipeline:
  """The training pipeline of ``config`` (with :func:`training_transform`)."""
  return pipeline_lib.Pipeline(source, host_batch, seed=config.seed, shuffle=shuffle,
                               transform=training_transform(config),
                               num_threads=config.num_threads, prefetch=config.prefetch,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(), state=state)


def pipeline_state_to_row(state: dict) -> np.ndarray:
  return np.asarray([state["epoch"], state["position"], state["num_skipped"]], np.int32)


def row_to_pipeline_state(row, seed: int) -> dict:
  return dict(seed=seed, epoch=int(row[0]), position=int(row[1]), num_skipped=int(row[2]),
              bad=())


def save_pseudo(out_dir: str, indices, masks, process: int = 0) -> str:
  """Writes this process's pseudo masks ([N, S, S] in {0, 1}) keyed by dataset index."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"pseudo_masks_p{process}.npz")
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, index=np.asarray(indices, np.int64),
                      mask=(np.asarray(masks) > 0.5).astype(np.uint8) * 255)
  os.replace(tmp, path)
  return path


def load_pseudo(pseudo_dir: str) -> dict:
  """{dataset index: [S, S] uint8} from every ``pseudo_masks_p*.npz`` in the folder."""
  files = sorted(glob.glob(os.path.join(pseudo_dir, PSEUDO_PATTERN)))
  if not files:
    raise DataError(f"--pseudo_dir={pseudo_dir}: no {PSEUDO_PATTERN} files; run "
                    "experiments/make_pseudo_masks.py first")
  out = {}
  for f in files:
    with np.load(f) as z:
      for i, m in zip(z["index"], z["mask"]):
        out[int(i)] = m
  return out
