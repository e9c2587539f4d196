"""Line plots as PNG without matplotlib (Pillow, which imageio already requires).

:func:`line_plot` draws one or more curves with axes, ticks, a grid, labels and a
legend — enough for cumulative-error curves in reports. Pixels: width x height.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

# Distinct colours (RGB 0-255) for up to eight curves, then they repeat.
COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (23, 190, 207))


def _ticks(lo: float, hi: float, count: int = 6) -> np.ndarray:
  """About ``count`` round tick positions covering [lo, hi]."""
  span = max(hi - lo, 1e-12)
  raw = span / max(count - 1, 1)
  step = 10 ** np.floor(np.log10(raw))
  for m in (1, 2, 2.5, 5, 10):
    if m * step >= raw:
      step = m * step
      break
  first = np.ceil(lo / step - 1e-9) * step
  return np.arange(first, hi + step * 1e-6, step)


def _label(v: float) -> str:
  return f"{v:.3g}" if abs(v) >= 1e-9 else "0"


def line_plot(path: str | os.PathLike, curves: Sequence[tuple], *, xlabel: str = "",
              ylabel: str = "", title: str = "", xlim: Optional[tuple] = None,
              ylim: Optional[tuple] = None, width: int = 640, height: int = 440) -> np.ndarray:
  """Writes a line plot to ``path`` (PNG) and returns it as [height, width, 3] uint8.

  Args:
    curves: (label, x [T], y [T]) per curve.
    xlim, ylim: axis ranges; default the data range (y from 0).
  """
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=import-outside-toplevel
  xs = [np.asarray(c[1], np.float64) for c in curves]
  ys = [np.asarray(c[2], np.float64) for c in curves]
  if xlim is None:
    xlim = (min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)) if xs else (0, 1)
  if ylim is None:
    ylim = (0.0, max(float(y.max()) for y in ys)) if ys else (0, 1)
  if xlim[1] <= xlim[0]:
    xlim = (xlim[0], xlim[0] + 1.0)
  if ylim[1] <= ylim[0]:
    ylim = (ylim[0], ylim[0] + 1.0)
  font = ImageFont.load_default()
  img = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  left, right, top, bottom = 64, width - 16, 44 if title else 26, height - 46
  sx = lambda v: left + (v - xlim[0]) / (xlim[1] - xlim[0]) * (right - left)
  sy = lambda v: bottom - (v - ylim[0]) / (ylim[1] - ylim[0]) * (bottom - top)
  for t in _ticks(*xlim):
    x = sx(t)
    draw.line([(x, top), (x, bottom)], fill=(225, 225, 225))
    draw.line([(x, bottom), (x, bottom + 4)], fill=(0, 0, 0))
    draw.text((x, bottom + 6), _label(t), fill=(0, 0, 0), font=font, anchor="ma")
  for t in _ticks(*ylim):
    y = sy(t)
    draw.line([(left, y), (right, y)], fill=(225, 225, 225))
    draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
    draw.text((left - 6, y), _label(t), fill=(0, 0, 0), font=font, anchor="rm")
  draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
  for k, (x, y) in enumerate(zip(xs, ys)):
    ok = np.isfinite(x) & np.isfinite(y)
    pts = [(sx(a), sy(b)) for a, b in zip(np.clip(x[ok], *xlim), np.clip(y[ok], *ylim))]
    if len(pts) > 1:
      draw.line(pts, fill=COLORS[k % len(COLORS)], width=2)
  if title:
    draw.text((width / 2, 8), title, fill=(0, 0, 0), font=font, anchor="ma")
  if xlabel:
    draw.text(((left + right) / 2, height - 18), xlabel, fill=(0, 0, 0), font=font, anchor="ma")
  if ylabel:
    draw.text((left, top - 4), ylabel, fill=(0, 0, 0), font=font, anchor="ld")
  # Legend in the lower right (cumulative curves leave it empty).
  labels = [c[0] for c in curves if c[0]]
  if labels:
    y0 = bottom - 10 - 16 * len(labels)
    for k, label in enumerate(labels):
      y = y0 + 16 * k + 8
      draw.line([(right - 190, y), (right - 164, y)], fill=COLORS[k % len(COLORS)], width=3)
      draw.text((right - 158, y), label[:28], fill=(0, 0, 0), font=font, anchor="lm")
  out = np.asarray(img, np.uint8)
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  images.save_png(path, out)
  return out


def cumulative_error_plot(path: str | os.PathLike, curves: dict, *, title: str = "",
                          unit: str = "mm") -> np.ndarray:
  """The cumulative-error curves {label: (thresholds, fractions)} as a PNG."""
  items = [(label, t, 100.0 * np.asarray(f)) for label, (t, f) in curves.items()]
  xmax = max(float(np.max(t)) for _, t, _ in items) if items else 1.0
  return line_plot(path, items, xlabel=f"scan-to-mesh error ({unit})",
                   ylabel="% of scan points", title=title or "Cumulative error",
                   xlim=(0.0, xmax), ylim=(0.0, 100.0))
