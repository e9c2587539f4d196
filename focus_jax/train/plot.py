"""Loss curves of training runs to PNG (Pillow only; no matplotlib needed).

One panel per run directory (its ``metrics.csv``), one line per loss term, each
term min-max normalised within the panel (the terms' scales differ by orders of
magnitude; the legend gives each term's first and last value).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from focus_jax.train import logs

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
_SKIP = ("time", "seconds_per_step", "finite", "num_skipped", "pseudo_fraction")


def _smooth(y, k):
  if k <= 1 or len(y) < k:
    return y
  return np.convolve(np.pad(y, (k // 2, k - 1 - k // 2), mode="edge"), np.ones(k) / k,
                     mode="valid")


def plot_runs(run_dirs: Sequence[str], out_path: str, width: int = 520, height: int = 300,
              smooth: int = 5) -> str:
  """Writes one panel per run (stacked vertically) to ``out_path`` (PNG)."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  panels = []
  for run in run_dirs:
    path = os.path.join(run, "metrics.csv")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no metrics.csv (is {run} a training run directory?)")
    m = logs.read_metrics(path)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 40, 24, width - 170, height - 24
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    steps = m["step"].astype(float)
    draw.text((left, 4), f"{os.path.basename(os.path.normpath(run))}  (steps "
              f"{int(steps[0])}-{int(steps[-1])}; each term min-max scaled)", fill=(0, 0, 0))
    draw.text((left, bottom + 4), "step", fill=(0, 0, 0))
    names = [k for k in m if k not in ("step", "phase") + _SKIP
             and np.isfinite(m[k]).sum() > 1 and np.nanstd(m[k]) > 0]
    for i, name in enumerate(names):
      y = m[name]
      ok = np.isfinite(y)
      xs, ys = steps[ok], _smooth(y[ok], smooth)
      lo, hi = float(np.min(ys)), float(np.max(ys))
      span = max(hi - lo, 1e-12)
      px = left + (xs - steps[0]) / max(steps[-1] - steps[0], 1) * (right - left)
      py = bottom - (ys - lo) / span * (bottom - top)
      color = _COLORS[i % len(_COLORS)]
      draw.line(list(zip(px.tolist(), py.tolist())), fill=color, width=2)
      draw.text((right + 6, top + 14 * i), f"{name} {y[ok][0]:.3g}->{y[ok][-1]:.3g}",
                fill=color)
    panels.append(img)
  out = Image.new("RGB", (width, height * len(panels)), "white")
  for i, p in enumerate(panels):
    out.paste(p, (0, i * height))
  os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
  out.save(out_path)
  return out_path
