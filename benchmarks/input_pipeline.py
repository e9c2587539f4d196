"""Is the host the bottleneck of training? (run by hand; prints, writes nothing)

Times the tiny configuration's stage-1 step on one synthetic dataset: the bare
pmapped step on one fixed batch (``benchmarks/train.py``'s ``step_seconds``), the
input pipeline alone (no step; warm example cache), and the whole training loop
(``trainer.train``: input pipeline, prefetch, logging) without and with the in-memory
example cache (``TrainConfig.cache_mb``). Checkpoints and image tiles are turned off,
so the difference between the loop and the bare step is the input pipeline and the
loop's own overhead.

  python benchmarks/input_pipeline.py [--steps 200] [--batch 8] [--num 80] [--image_size 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import train as train_bench  # noqa: E402  (benchmarks/train.py)
from focus_jax import morphable  # noqa: E402
from focus_jax.data import synthetic  # noqa: E402
from focus_jax.train import config as config_lib, data as data_lib, trainer  # noqa: E402


def pipeline_seconds(cfg, data_dir: str, batches: int) -> float:
  """Seconds per host batch of the input pipeline alone (no training step), with the
  example cache filled by one epoch first: the host's ceiling on steps per second."""
  source = data_lib.AlignedSource(data_lib.open_data(data_dir, "train"), cfg.image_size,
                                  cache_mb=cfg.cache_mb)
  for i in range(len(source)):
    source.load(i)
  pipe = data_lib.make_pipeline(source, cfg, cfg.batch_size)
  try:
    it = iter(pipe)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
      next(it)
    return (time.perf_counter() - t) / batches
  finally:
    pipe.close()


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=200, help="steps of each training loop")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--num", type=int, default=80, help="synthetic faces (80%% train split)")
  ap.add_argument("--image_size", type=int, default=64)
  args = ap.parse_args()
  tmp = tempfile.mkdtemp(prefix="focus_input_bench_")
  try:
    cfg = config_lib.tiny(progress=False, log_every=10, image_every=10**9,
                          checkpoint_every=10**9, batch_size=args.batch,
                          image_size=args.image_size, num_steps=args.steps)
    gen = synthetic.SyntheticFaces(morphable.builtin(resolution=cfg.model_resolution),
                                   synthetic.SyntheticConfig(size=args.image_size), seed=0,
                                   batch_size=16)
    synthetic.write_dataset(os.path.join(tmp, "data"), gen, args.num, progress=False,
                            save_maps=False)
    bare = train_bench.step_seconds(cfg, "pretrain", steps=20)["seconds_per_step"]
    print(f"bare step (one fixed batch): {1000 * bare:.1f} ms", flush=True)
    host = pipeline_seconds(cfg, os.path.join(tmp, "data"), args.steps)
    print(f"input pipeline alone (warm cache, {cfg.num_threads} threads): {1000 * host:.1f} "
          "ms/batch", flush=True)
    for cache_mb in (0, cfg.cache_mb):
      run = trainer.train(cfg.replace(cache_mb=cache_mb), os.path.join(tmp, f"run{cache_mb}"),
                          os.path.join(tmp, "data"))
      print(f"training loop, cache_mb={cache_mb}: {1000 * run.seconds_per_step:.1f} ms/step "
            f"({run.seconds_per_step / bare:.2f}x the bare step)", flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
