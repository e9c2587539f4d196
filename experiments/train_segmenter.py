"""Trains the real-face segmenter (focus_jax/nets/segmenter.py) on real photos with pasted occluders.

Data: the unoccluded real photos of ``--data`` whose people are in ``--half`` of
``benchmarks/real_split.txt`` (tune by default: the semi-real benchmark reports the
other half), minus ``--exclude_people``. Every training example is one photo with
0-2 occluders of :mod:`focus_jax.data.real_occluders` drawn from a random stream
that never meets the benchmark's (seed ``[--seed, 7919, i]``), the landmarks
jittered like a detector's (so the crop moves as it does on occluded photos), a
photometric jitter of the whole picture (gain, contrast, gamma, blur, noise), a
random mirror, then the aligned crop of :func:`focus_jax.app.inference.prepare`
resized to the network's input like :func:`focus_jax.nets.segmenter.face_probability`
does. Target: the occluder mask (alpha ≥ 0.5) in the crop; the loss is a binary cross
entropy weighted 1 inside the landmark hull (where the benchmark scores) and
``--outside_weight`` elsewhere.

Rebuild the packaged weights (about 20 minutes on 2 CPU cores):

  python experiments/train_segmenter.py --out focus_jax/priors/real_face_segmenter.npz
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="weights file to write (.npz)")
  p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "real_faces"),
                 help="folder of unoccluded real photos")
  p.add_argument("--split", default=os.path.join(ROOT, "benchmarks", "real_split.txt"),
                 help="people split (file person half)")
  p.add_argument("--half", default="tune", choices=("tune", "heldout", "both"),
                 help="train on the photos of this half")
  p.add_argument("--exclude_people", default="",
                 help="comma-separated people left out (for a validation split)")
  p.add_argument("--samples", type=int, default=2400, help="training examples drawn")
  p.add_argument("--steps", type=int, default=2500, help="optimiser steps")
  p.add_argument("--batch", type=int, default=16, help="examples per step")
  p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (cosine)")
  p.add_argument("--input_size", type=int, default=96, help="network input side (px)")
  p.add_argument("--base_width", type=int, default=12, help="UNet channels of block 1")
  p.add_argument("--depth", type=int, default=4, help="UNet blocks")
  p.add_argument("--outside_weight", type=float, default=0.2,
                 help="loss weight outside the landmark hull")
  p.add_argument("--seed", type=int, default=1, help="random stream (0 is the benchmark's)")
  p.add_argument("--cache", default="", help="optional .npz to keep/reuse the drawn examples")
  args = p.parse_args(argv[1:])
  if args.seed == 0:
    p.error("--seed 0 is the benchmark's occluder stream; use another")
  return args


def photometric(rng, img):
  """Global colour and sensor jitter of a [H, W, 3] picture in [0, 1]."""
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  img = img * rng.normal(1.0, 0.06, 3) * rng.uniform(0.8, 1.15)
  mean = img.mean()
  img = (img - mean) * rng.uniform(0.8, 1.2) + mean
  img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
  if rng.random() < 0.3:
    img = ndimage.gaussian_filter(img, (rng.uniform(0.3, 1.2),) * 2 + (0,))
  if rng.random() < 0.3:
    img = img + rng.normal(0.0, rng.uniform(0.005, 0.03), img.shape)
  return np.clip(img, 0.0, 1.0)


def jitter_landmarks(rng, lm):
  """Detector-like landmark noise: a small similarity move plus per-point noise."""
  eye = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
  centre = lm.mean(0)
  ang = np.deg2rad(rng.normal(0.0, 3.0))
  rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
  scale = np.exp(rng.normal(0.0, 0.04))
  shift = rng.normal(0.0, 0.04 * eye, 2)
  out = (lm - centre) @ rot.T * scale + centre + shift
  return out + rng.normal(0.0, 0.015 * eye, lm.shape)


def draw_example(rng, photo, lm, face, size):
  """One (crop [size, size, 3], occluder mask [size, size], hull [size, size]) at 224 px."""
  from focus_jax.app import inference  # pylint: disable=import-outside-toplevel
  from focus_jax.data import real_occluders  # pylint: disable=import-outside-toplevel
  from focus_jax.eval import mask_metrics  # pylint: disable=import-outside-toplevel
  count = rng.choice([0, 1, 2], p=[0.1, 0.75, 0.15])
  img = photo.copy()
  mask = np.zeros(photo.shape[:2], bool)
  for _ in range(count):
    family = real_occluders.FAMILIES[rng.integers(len(real_occluders.FAMILIES))]
    occ = real_occluders.draw_covering(family, itertools.repeat(rng), photo, face)
    img = real_occluders.composite(img, occ)
    mask |= occ.mask
  img = photometric(rng, img)
  prep = inference.prepare(img, landmarks=jitter_landmarks(rng, lm).astype(np.float32),
                           size=size)
  crop_mask = prep.alignment.crop(mask.astype(np.float32))
  hull = mask_metrics.landmark_hull(prep.alignment.to_crop(lm), (size, size))
  crop = prep.crop
  if rng.random() < 0.5:
    crop, crop_mask, hull = crop[:, ::-1], crop_mask[:, ::-1], hull[:, ::-1]
  return crop, crop_mask, hull


def build_examples(args):
  """Draws ``args.samples`` examples: dict of uint8 crops, float masks and hulls at input size."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import real_split  # pylint: disable=import-outside-toplevel
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  from focus_jax.app import inference  # pylint: disable=import-outside-toplevel
  from focus_jax.data import real_occluders  # pylint: disable=import-outside-toplevel
  from focus_jax.nets import segmenter  # pylint: disable=import-outside-toplevel
  excluded = {p for p in args.exclude_people.split(",") if p}
  halves = ("tune", "heldout") if args.half == "both" else (args.half,)
  chosen = [(n, p) for n, p, h in real_split.read_split(args.split)
            if h in halves and p not in excluded]
  detector = inference.default_detector()
  photos = []
  for name, person in chosen:
    path = os.path.join(args.data, name)
    if not os.path.exists(path):
      raise SystemExit(f"{path}: missing (the split names it)")
    photo = images.read_image(path)
    lm, _ = inference.find_landmarks(photo, detector, name)
    lm = np.asarray(lm, np.float64)
    photos.append((photo, lm, real_occluders.face_geometry(photo, lm)))
  print(f"train_segmenter: {len(photos)} photos of {len({p for _, p in chosen})} people "
        f"({','.join(sorted({p for _, p in chosen}))})", flush=True)
  crops, masks, hulls = [], [], []
  t = time.perf_counter()
  chunk = []
  for i in range(args.samples):
    rng = np.random.default_rng([args.seed, 7919, i])
    photo, lm, face = photos[i % len(photos)]
    chunk.append(draw_example(rng, photo, lm, face, 224))
    if len(chunk) == 64 or i == args.samples - 1:
      c = jnp.asarray(np.stack([x[0] for x in chunk]), jnp.float32)
      m = jnp.asarray(np.stack([x[1] for x in chunk]), jnp.float32)[..., None]
      hl = jnp.asarray(np.stack([x[2] for x in chunk]), jnp.float32)[..., None]
      crops.append(np.asarray(np.round(segmenter.resize(c, args.input_size) * 255), np.uint8))
      masks.append(np.asarray(segmenter.resize(m, args.input_size)[..., 0], np.float16))
      hulls.append(np.asarray(segmenter.resize(hl, args.input_size)[..., 0] > 0.5))
      chunk = []
      print(f"  drew {i + 1}/{args.samples} examples ({time.perf_counter() - t:.0f} s)",
            flush=True)
  return dict(crops=np.concatenate(crops), masks=np.concatenate(masks),
              hulls=np.concatenate(hulls))


def train(args, data):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from focus_jax.nets import segmenter  # pylint: disable=import-outside-toplevel
  seg = segmenter.Segmenter(input_size=args.input_size, base_width=args.base_width,
                            depth=args.depth)
  variables = seg.init(jax.random.PRNGKey(args.seed))
  sched = optax.warmup_cosine_decay_schedule(
      0.0, args.lr, min(100, args.steps // 10), args.steps, args.lr * 0.02)
  opt = optax.adamw(sched, weight_decay=1e-4)
  opt_state = opt.init(variables["params"])

  @jax.jit
  def step(params, stats, opt_state, crops, masks, hulls, key):
    gain = 1.0 + 0.05 * jax.random.normal(key, (crops.shape[0], 1, 1, 3))
    x = jnp.clip(crops.astype(jnp.float32) / 255.0 * gain, 0.0, 1.0)
    y = masks.astype(jnp.float32)
    w = jnp.where(hulls, 1.0, args.outside_weight)

    def loss_fn(p):
      logits, new_stats = segmenter.occluder_logits(seg, {"params": p, "batch_stats": stats},
                                                    x, train=True)
      bce = optax.sigmoid_binary_cross_entropy(logits, y)
      return jnp.sum(bce * w) / jnp.sum(w), new_stats
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  params, stats = variables["params"], variables["batch_stats"]
  n = len(data["crops"])
  rng = np.random.default_rng([args.seed, 31])
  key = jax.random.PRNGKey(args.seed + 1)
  t, losses = time.perf_counter(), []
  for i in range(args.steps):
    idx = rng.integers(0, n, args.batch)
    key, sub = jax.random.split(key)
    params, stats, opt_state, loss = step(params, stats, opt_state, data["crops"][idx],
                                          data["masks"][idx], data["hulls"][idx], sub)
    losses.append(float(loss))
    if not np.isfinite(losses[-1]):
      raise SystemExit(f"train_segmenter: non-finite loss at step {i}; nothing written")
    if (i + 1) % 100 == 0 or i + 1 == args.steps:
      print(f"  step {i + 1}/{args.steps}: loss {np.mean(losses[-100:]):.4f} "
            f"({time.perf_counter() - t:.0f} s)", flush=True)
  return seg, {"params": params, "batch_stats": stats}


def main(argv=None):
  args = parse_args(argv or sys.argv)
  from focus_jax.nets import segmenter  # pylint: disable=import-outside-toplevel
  if args.cache and os.path.exists(args.cache):
    with np.load(args.cache, allow_pickle=False) as z:
      data = {k: z[k] for k in ("crops", "masks", "hulls")}
    print(f"train_segmenter: {len(data['crops'])} examples from {args.cache}", flush=True)
  else:
    data = build_examples(args)
    if args.cache:
      np.savez(args.cache, **data)
  seg, variables = train(args, data)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  segmenter.save(args.out, seg, variables)
  print(f"train_segmenter: wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
