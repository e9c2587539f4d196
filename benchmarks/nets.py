"""Forward+backward time of each network at batch 12, 224×224 (run by hand).

    python benchmarks/nets.py [--batch 12] [--size 224] [--repeats 3] [--only encoder,unet]

Writes ``benchmarks/results/nets.md`` (one line per network: compile time, median
step time, images/s) and prints the same. Random weights (timing does not depend on
them); the identity networks use their real architectures, with a 224² image aligned
to their crop inside the timed function, gradient taken w.r.t. the image as in the
losses.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.nets import encoder, identity, layers, unet


def _key(seed):
  return jax.random.key(seed, impl="unsafe_rbg")


def _time(fn, args, repeats):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times)


def bench_encoder(batch, size, rng):
  enc = encoder.FaceEncoder()
  images = jnp.asarray(rng.uniform(size=(batch, size, size, 3)), jnp.float32)
  variables = jax.jit(enc.init)(_key(0), images[:1])

  @jax.jit
  def step(params, stats, images):
    def loss(p):
      out, upd = enc.apply({"params": p, "batch_stats": stats}, images, train=True,
                           mutable=["batch_stats"])
      return jnp.sum(out.raw ** 2) + jnp.sum(out.light), upd
    return jax.grad(loss, has_aux=True)(params)

  return ("encoder ResNet-50 (train mode, grad w.r.t. params)",
          layers.count_params(variables["params"]), step,
          (variables["params"], variables["batch_stats"], images))


def bench_unet(batch, size, rng):
  net = unet.UNet()
  x = jnp.asarray(rng.uniform(size=(batch, size, size, 6)), jnp.float32)
  variables = jax.jit(net.init)(_key(1), x[:1])

  @jax.jit
  def step(params, stats, x, key):
    def loss(p):
      y, upd = net.apply({"params": p, "batch_stats": stats}, x, train=True,
                         rngs={"dropout": key}, mutable=["batch_stats"])
      return jnp.mean(y), upd
    return jax.grad(loss, has_aux=True)(params)

  return ("UNet width 64 (train mode, dropout, grad w.r.t. params)",
          layers.count_params(variables["params"]), step,
          (variables["params"], variables["batch_stats"], x, _key(2)))


def _identity_bench(kind, batch, size, rng):
  net = identity.random_identity(kind, _key(3))
  images = jnp.asarray(rng.uniform(size=(batch, size, size, 3)), jnp.float32)
  lm = np.tile(rng.uniform(0.3 * size, 0.7 * size, (1, 68, 2)), (batch, 1, 1))
  five = align_template(size)
  for idx, p in zip(((36, 39), (42, 45), (30,), (48,), (54,)), five):
    lm[:, list(idx)] = p
  lm = jnp.asarray(lm, jnp.float32)

  @jax.jit
  def step(net, images, lm):
    def loss(img):
      f = net(img, lm)
      return jnp.sum(f.embedding * f.embedding[::-1]) + jnp.mean(f.shallow)
    return jax.grad(loss)(images)

  name = ("identity dlib ResNet (crop 150, embedding + shallow, grad w.r.t. image)"
          if kind == "dlib" else
          "identity ArcFace iResNet-50 (crop 112, embedding + shallow, grad w.r.t. image)")
  return name, layers.count_params(net.variables["params"]), step, (net, images, lm)


def align_template(size):
  from focus_jax.nets import align
  return align.ARCFACE_TEMPLATE_112 / 112.0 * 0.6 * size + 0.2 * size


BENCHES = dict(
    encoder=bench_encoder, unet=bench_unet,
    dlib=lambda b, s, r: _identity_bench("dlib", b, s, r),
    arcface=lambda b, s, r: _identity_bench("arcface", b, s, r))


def _cpu_model() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=12)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--only", default=",".join(BENCHES))
  parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "nets.md"))
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  device = jax.devices()[0]
  header = [
      "# Network forward+backward timings",
      "",
      f"- date: {datetime.date.today().isoformat()}",
      f"- machine: {_cpu_model()} ({platform.machine()}), {os.cpu_count()} CPU cores visible, "
      f"{platform.system()} {platform.release()}",
      f"- device: {device.platform} ({device.device_kind}); jax {jax.__version__}, "
      f"jaxlib {jax.lib.__version__ if hasattr(jax.lib, '__version__') else ''}",
      f"- load average at start: {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
      f"- batch {args.batch}, {args.size}×{args.size}, float32; step = median of "
      f"{args.repeats} timed step(s) after one compile+warm-up step",
      "",
      "| network | params | compile+first step (s) | step (s) | images/s |",
      "| --- | ---: | ---: | ---: | ---: |",
  ]
  rows = []
  for name in args.only.split(","):
    title, nparams, fn, fargs = BENCHES[name](args.batch, args.size, rng)
    compile_s, step_s = _time(fn, fargs, args.repeats)
    row = (f"| {title} | {nparams / 1e6:.1f} M | {compile_s:.1f} | {step_s:.2f} | "
           f"{args.batch / step_s:.3g} |")
    print(row, flush=True)
    rows.append(row)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  footer = ["", f"- load average at end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
            f"(the machine may be shared: a load above the core count inflates the times)"]
  out.write_text("\n".join(header + rows + footer) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
