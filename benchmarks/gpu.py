"""Accelerator benchmark (run by hand on a GPU/TPU machine): renderer images/s up to
batch 64, training seconds/step and images/s of the tiny and paper configurations
(float32 and bfloat16 activations), and the robust fit's time per image.

  python benchmarks/gpu.py                      # all measurements, report to results/gpu.md
  python benchmarks/gpu.py --workers render/27k/64/hard fit/224/64

Each measurement ("worker", named KIND/... as in ``--workers``) runs in its own
subprocess, so that its accelerator peak memory is its own. The workers start
together, so their XLA compilations overlap on the host's cores; each stops after its
warm-up call (compilation included) and waits for its turn, and the parent lets the
workers time their steps one after another once all are compiled (or
``--compile_deadline`` has passed), so no two timed sections share the accelerator.
Workers that are not compiled by ``--deadline`` are killed and reported as such; the
report is rewritten after every worker, so a cut-off run keeps what it measured.

Worker kinds:
  render/MESH/BATCH/MODE      forward+backward of a photometric loss at 224² as in
                              benchmarks/render.py (MESH 6.7k, 27k or 108k; needs the
                              SFM model in ../shared/models/sfm)
  train/CONFIG/PHASE/DTYPE/BATCH  one pmapped training step (CONFIG tiny or paper;
                              PHASE pretrain, unet, em_encoder or em_unet; DTYPE
                              float32 or bfloat16); the paper config needs the dlib
                              face-recognition weights (see focus_jax/nets/weights.py)
  fit/SIZE/BATCH              the default robust fit (FitConfig(): rounds x steps
                              iterations) of BATCH synthetic SIZE² faces in one call
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "gpu.md")

DEFAULT_WORKERS = (
    "render/27k/64/hard", "render/27k/64/soft", "render/108k/64/hard",
    "render/108k/64/soft", "render/6.7k/64/hard", "render/27k/12/hard",
    "render/27k/12/soft", "render/108k/1/hard", "render/108k/1/soft", "render/27k/1/hard",
    "train/paper/pretrain/float32/12", "train/paper/em_encoder/float32/12",
    "train/paper/em_unet/float32/12", "train/paper/pretrain/bfloat16/12",
    "train/paper/em_encoder/bfloat16/12", "train/paper/em_unet/bfloat16/12",
    "train/tiny/pretrain/float32/4", "train/tiny/em_encoder/float32/4",
    "train/tiny/em_unet/float32/4", "train/tiny/pretrain/float32/64",
    "fit/224/1", "fit/224/64",
)
_TURN = "FOCUS_BENCH_TURN"


def wait_for_turn():
  """Called by a worker after its warm-up: signal 'compiled', wait for 'go'."""
  base = os.environ.get(_TURN)
  if not base:
    return
  open(base + ".ready", "w").close()
  while not os.path.exists(base + ".go"):
    time.sleep(0.02)


def _train_worker(config_name, phase, dtype, batch, steps):
  import train as train_bench  # pylint: disable=import-outside-toplevel
  from focus_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  cfg = (config_lib.paper(identity="dlib") if config_name == "paper"
         else config_lib.tiny()).replace(compute_dtype=dtype, batch_size=batch)
  out = train_bench.step_seconds(cfg, phase, steps, before_timing=wait_for_turn)
  return dict(out, config=config_name, phase=phase, dtype=dtype, batch=batch,
              image_size=cfg.image_size, steps=steps,
              images_per_s=batch / out["seconds_per_step"])


def _fit_worker(size, batch, repeats):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import focus_jax as fj  # pylint: disable=import-outside-toplevel
  from focus_jax import fitting  # pylint: disable=import-outside-toplevel
  from focus_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  model = fj.morphable.builtin()
  samples = synthetic.SyntheticFaces(model, synthetic.SyntheticConfig(size=size),
                                     seed=999).generate(range(batch))
  images = np.stack([s.image for s in samples])
  landmarks = np.stack([s.landmarks for s in samples])
  if batch == 1:
    images, landmarks = images[0], landmarks[0]
  config = fitting.FitConfig()
  t = time.perf_counter()
  jax.block_until_ready(fitting.fit(model, images, landmarks, config=config))
  first = time.perf_counter() - t
  wait_for_turn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fitting.fit(model, images, landmarks, config=config))
    times.append(time.perf_counter() - t)
  return dict(size=size, batch=batch, iterations=config.rounds * config.steps,
              first_call_s=first, seconds=min(times), seconds_per_image=min(times) / batch,
              images_per_s=batch / min(times))


def run_worker(spec: str, repeats: int, train_steps: int) -> dict:
  """Runs one measurement in this process and returns its row."""
  import jax  # pylint: disable=import-outside-toplevel
  kind, *args = spec.split("/")
  if kind == "render":
    import render as render_bench  # pylint: disable=import-outside-toplevel
    mesh, batch, mode = args
    row = render_bench.run_one(mesh, int(batch), mode, repeats, before_timing=wait_for_turn)
    row["images_per_s"] = 1000.0 * int(batch) / row["ms"]
  elif kind == "train":
    config_name, phase, dtype, batch = args
    row = _train_worker(config_name, phase, dtype, int(batch), train_steps)
  elif kind == "fit":
    size, batch = args
    row = _fit_worker(int(size), int(batch), max(2, repeats // 4))
  else:
    raise ValueError(f"unknown worker kind {kind!r} in {spec!r}: use render, train or fit")
  import render as render_bench  # pylint: disable=import-outside-toplevel
  row.update(spec=spec, kind=kind, device_peak_mib=render_bench.device_peak_mib(),
             device=jax.devices()[0].device_kind, jax=jax.__version__)
  return row


def orchestrate(specs, args) -> list:
  """Starts every worker, waits until all are compiled (or the compile deadline), then
  lets them time one at a time; returns rows (failed workers carry 'error')."""
  turn_dir = tempfile.mkdtemp(prefix="focus_gpu_bench_")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             XLA_PYTHON_CLIENT_PREALLOCATE="false")
  start = time.time()
  procs = []
  for i, spec in enumerate(specs):
    base = os.path.join(turn_dir, str(i))
    log = open(base + ".log", "w")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", spec,
           "--repeats", str(args.repeats), "--train_steps", str(args.train_steps)]
    procs.append(dict(spec=spec, base=base, log=log, proc=subprocess.Popen(
        cmd, env=dict(env, **{_TURN: base}), stdout=subprocess.PIPE, stderr=log, text=True)))
  ready = lambda p: os.path.exists(p["base"] + ".ready")
  while (time.time() - start < args.compile_deadline
         and not all(ready(p) or p["proc"].poll() is not None for p in procs)):
    time.sleep(0.5)
  print(f"compiled: {sum(map(ready, procs))}/{len(procs)} workers after "
        f"{time.time() - start:.0f} s", flush=True)
  rows, pending = [], list(procs)
  while pending:
    p = next((q for q in pending if ready(q) or q["proc"].poll() is not None), None)
    if p is None:
      if time.time() - start > args.deadline:
        for q in pending:
          q["proc"].kill()
          q["log"].close()
          rows.append(dict(spec=q["spec"], error=f"not compiled after {args.deadline:.0f} s"))
        break
      time.sleep(0.5)
      continue
    pending.remove(p)
    open(p["base"] + ".go", "w").close()
    try:
      out, _ = p["proc"].communicate(timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
      p["proc"].kill()
      out = ""
    p["log"].close()
    if p["proc"].returncode == 0 and out.strip():
      row = json.loads(out.strip().splitlines()[-1])
    else:
      with open(p["base"] + ".log") as f:
        tail = f.read()[-1500:]
      row = dict(spec=p["spec"], error=f"exit {p['proc'].returncode}: {tail}")
    rows.append(row)
    print(summary_line(row), flush=True)
    write_report(rows, args.output)
  # One file with every worker's stderr (XLA warnings, tracebacks) beside the report.
  with open(os.path.splitext(args.output)[0] + ".log", "w") as out:
    for p in procs:
      with open(p["base"] + ".log") as f:
        out.write(f"==== {p['spec']}\n{f.read()}\n")
  return rows


def summary_line(r: dict) -> str:
  if "error" in r:
    return f"{r['spec']:36s} FAILED: {r['error'][-300:]}"
  peak = r.get("device_peak_mib")
  mem = f"  device peak {peak:8.0f} MiB" if peak is not None else ""
  if r["kind"] == "render":
    return f"{r['spec']:36s} {r['ms']:9.2f} ms/batch  {r['images_per_s']:9.1f} img/s{mem}"
  if r["kind"] == "train":
    return (f"{r['spec']:36s} {r['seconds_per_step']:9.4f} s/step  "
            f"{r['images_per_s']:9.1f} img/s  (first call {r['first_call_s']:.0f} s){mem}")
  return (f"{r['spec']:36s} {r['seconds']:9.3f} s/call  {r['seconds_per_image']:8.4f} s/img "
          f"(first call {r['first_call_s']:.0f} s){mem}")


def write_report(rows, path):
  ok = [r for r in rows if "error" not in r]
  device = ok[0]["device"] if ok else "?"
  jax_version = ok[0]["jax"] if ok else "?"
  mib = lambda r: "–" if r.get("device_peak_mib") is None else f"{r['device_peak_mib']:.0f}"
  lines = [
      "# Accelerator benchmark", "",
      f"Generated by `benchmarks/gpu.py` on {datetime.date.today()}: {device}, jax "
      f"{jax_version}, host {platform.machine()} with {os.cpu_count()} cores. Each row is "
      "one subprocess; the timed sections ran one at a time after all workers had "
      "compiled (compile times overlap, so 'first call' is inflated). Device peak = the "
      "allocator's peak bytes in use of that process.", ""]
  # Per worker kind: section title and (column header, right-aligned, cell) triples.
  sections = {
      "render": ("Renderer (forward + backward of a photometric loss at 224², as "
                 "benchmarks/render.py; kernels: JAX = the pure-JAX path that runs on "
                 "accelerators)", [
                     ("triangles", True, lambda r: r["triangles"]),
                     ("batch", True, lambda r: r["batch"]),
                     ("mode", False, lambda r: r["mode"]),
                     ("kernels", False, lambda r: r["kernels"]),
                     ("ms / batch (median)", True, lambda r: f"{r['ms']:.2f}"),
                     ("images/s", True, lambda r: f"{r['images_per_s']:.0f}"),
                     ("device peak MiB", True, mib),
                     ("first call s", True, lambda r: f"{r['compile_s']:.0f}")]),
      "train": ("Training steps (one pmapped step on one device, synthetic batch)", [
          ("config", False, lambda r: r["config"]),
          ("image", True, lambda r: f"{r['image_size']}²"),
          ("phase", False, lambda r: r["phase"]),
          ("activations", False, lambda r: r["dtype"]),
          ("batch", True, lambda r: r["batch"]),
          ("s / step", True, lambda r: f"{r['seconds_per_step']:.4f}"),
          ("images/s", True, lambda r: f"{r['images_per_s']:.1f}"),
          ("device peak MiB", True, mib),
          ("first call s", True, lambda r: f"{r['first_call_s']:.0f}")]),
      "fit": ("Robust fit (FitConfig() defaults, built-in model)", [
          ("image", True, lambda r: f"{r['size']}²"),
          ("batch", True, lambda r: r["batch"]),
          ("iterations", True, lambda r: r["iterations"]),
          ("s / call (best)", True, lambda r: f"{r['seconds']:.3f}"),
          ("s / image", True, lambda r: f"{r['seconds_per_image']:.4f}"),
          ("images/s", True, lambda r: f"{r['images_per_s']:.1f}"),
          ("device peak MiB", True, mib),
          ("first call s", True, lambda r: f"{r['first_call_s']:.0f}")]),
  }
  for kind, (title, columns) in sections.items():
    kind_rows = [r for r in ok if r["kind"] == kind]
    if not kind_rows:
      continue
    lines += [f"## {title}", "", "| " + " | ".join(c[0] for c in columns) + " |",
              "| " + " | ".join("---:" if c[1] else "---" for c in columns) + " |"]
    lines += ["| " + " | ".join(str(c[2](r)) for c in columns) + " |" for r in kind_rows]
    lines.append("")
  failed = [r for r in rows if "error" in r]
  if failed:
    lines += ["## Failed or cut off", ""]
    last_line = lambda e: e.strip().splitlines()[-1][:300] if e.strip() else "no output"
    lines += [f"- `{r['spec']}`: {last_line(r['error'])}" for r in failed]
    lines.append("")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  with open(os.path.splitext(path)[0] + ".json", "w") as f:
    json.dump(rows, f, indent=1, default=str)


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workers", nargs="+", default=list(DEFAULT_WORKERS),
                  help="measurements to run (see above); default: all of them")
  ap.add_argument("--repeats", type=int, default=10, help="timed render calls per worker "
                  "(median reported); fits use a quarter of it (at least 2, best reported)")
  ap.add_argument("--train_steps", type=int, default=5, help="timed training steps")
  ap.add_argument("--compile_deadline", type=float, default=300.0,
                  help="seconds after which timing starts even if some workers still compile")
  ap.add_argument("--deadline", type=float, default=420.0,
                  help="seconds after which workers still compiling are killed")
  ap.add_argument("--worker_timeout", type=float, default=120.0,
                  help="seconds a worker may take for its timed section")
  ap.add_argument("--allow_cpu", action="store_true",
                  help="run on a CPU-only machine (a smoke test of this script)")
  ap.add_argument("--output", default=RESULTS,
                  help="markdown report (a .json with every row and a .log with every "
                       "worker's stderr beside it)")
  ap.add_argument("--worker", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker:
    print(json.dumps(run_worker(args.worker, args.repeats, args.train_steps), default=str))
    return
  # The workers share the accelerator: this process must not reserve its memory.
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() == "cpu" and not args.allow_cpu:
    raise SystemExit("gpu.py: no accelerator found (jax.default_backend() is 'cpu'); "
                     "use benchmarks/render.py and benchmarks/train.py on a CPU, or pass "
                     "--allow_cpu for a smoke test")
  print(f"{len(args.workers)} workers on {jax.devices()[0].device_kind}", flush=True)
  rows = orchestrate(args.workers, args)
  write_report(rows, args.output)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
