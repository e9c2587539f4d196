"""Observability of a run: per-step losses to CSV and TensorBoard, image tiles.

TensorBoard event files are written directly (TFRecord framing with masked
CRC-32C around hand-encoded ``Event`` protocol buffers: scalars and PNG
images), so neither TensorFlow nor tensorboard is needed to write them;
``tensorboard --logdir WORKDIR`` reads them.

Files in the run directory (process 0 only):
  ``metrics.csv``   step, phase, wall time, seconds/step, every loss term;
  ``events.out.tfevents.*``  the same scalars, plus the tiles;
  ``images/step_NNNNNN.png``  tiles: target | render overlay | predicted mask.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import struct
import time
from typing import Dict, Optional, Sequence

import numpy as np

from focus_jax.images import encode_png

# ----------------------------------------------------------------------- CRC-32C


def _crc_table():
  poly = 0x82F63B78
  table = np.zeros(256, np.uint32)
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table[i] = c
  return [int(t) for t in table]


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of ``data``."""
  crc = 0xFFFFFFFF
  table = _TABLE
  for b in data:
    crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ----------------------------------------------------------------------- protobuf


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field(number: int, wire: int) -> bytes:
  return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _field(number, 2) + _varint(len(payload)) + payload


def _event(step: int, wall_time: float, summary: Optional[bytes] = None,
           file_version: Optional[str] = None) -> bytes:
  # Event: wall_time (1, double), step (2, int64), file_version (3), summary (5).
  out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if summary is not None:
    out += _bytes_field(5, summary)
  return out


def _scalar_value(tag: str, value: float) -> bytes:
  # Summary.Value: tag (1), simple_value (2, float).
  return _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5)
                      + struct.pack("<f", float(value)))


def _image_value(tag: str, png: bytes, height: int, width: int) -> bytes:
  # Summary.Image: height (1), width (2), colorspace (3), encoded_image_string (4).
  image = (_field(1, 0) + _varint(height) + _field(2, 0) + _varint(width) + _field(3, 0)
           + _varint(3) + _bytes_field(4, png))
  return _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(4, image))


class EventWriter:
  """Appends TensorBoard events to ``<logdir>/events.out.tfevents.<time>.<host>``."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._write(_event(0, time.time(), file_version="brain.Event:2"))

  def _write(self, record: bytes) -> None:
    header = struct.pack("<Q", len(record))
    self._f.write(header + struct.pack("<I", _masked_crc(header)) + record
                  + struct.pack("<I", _masked_crc(record)))

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    summary = b"".join(_scalar_value(k, v) for k, v in values.items())
    self._write(_event(step, time.time(), summary))

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """image: [H, W, 3] float in [0, 1] or uint8."""
    png = encode_png(image)
    self._write(_event(step, time.time(), _image_value(tag, png, image.shape[0],
                                                       image.shape[1])))

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def read_events(path: str) -> list:
  """[(step, {tag: value})] of the scalar events in a file (tests, plots)."""
  out = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    if struct.unpack("<I", data[pos + 8:pos + 12])[0] != _masked_crc(data[pos:pos + 8]):
      raise ValueError(f"{path}: bad record header CRC at byte {pos}")
    record = data[pos + 12:pos + 12 + length]
    if struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] != _masked_crc(record):
      raise ValueError(f"{path}: bad record CRC at byte {pos}")
    pos += 16 + length
    out.append(_parse_event(record))
  return [e for e in out if e[1]]


def _read_varint(buf, i):
  shift = n = 0
  while True:
    b = buf[i]
    i += 1
    n |= (b & 0x7F) << shift
    shift += 7
    if not b & 0x80:
      return n, i


def _fields(buf):
  i = 0
  while i < len(buf):
    key, i = _read_varint(buf, i)
    num, wire = key >> 3, key & 7
    if wire == 0:
      v, i = _read_varint(buf, i)
    elif wire == 1:
      v, i = buf[i:i + 8], i + 8
    elif wire == 5:
      v, i = buf[i:i + 4], i + 4
    else:
      n, i = _read_varint(buf, i)
      v, i = buf[i:i + n], i + n
    yield num, wire, v


def _parse_event(record):
  step, scalars = 0, {}
  for num, _, v in _fields(record):
    if num == 2:
      step = v
    elif num == 5:
      for vnum, _, value in _fields(v):
        if vnum != 1:
          continue
        tag, simple = None, None
        for fnum, _, fv in _fields(value):
          if fnum == 1:
            tag = bytes(fv).decode()
          elif fnum == 2:
            simple = struct.unpack("<f", fv)[0]
        if tag is not None and simple is not None:
          scalars[tag] = simple
  return step, scalars


# ----------------------------------------------------------------------- images


def tile(images: np.ndarray, render: np.ndarray, face: np.ndarray, mask: np.ndarray,
         max_rows: int = 4) -> np.ndarray:
  """Rows of [target | render overlay | predicted mask | target × mask]: [R·S, 4·S, 3].

  images, render: [B, S, S, 3]; face, mask: [B, S, S] in [0, 1]. The mask panel is
  white = inlier face, red = face labelled outlier, black = background.
  """
  rows = []
  for i in range(min(max_rows, images.shape[0])):
    f, m = face[i][..., None], mask[i][..., None]
    overlay = f * render[i] + (1 - f) * images[i]
    inside = m * f
    panel = inside * np.ones(3) + (f - inside) * np.array([1.0, 0.1, 0.1])
    rows.append(np.concatenate([images[i], overlay, panel, images[i] * (0.25 + 0.75 * m)],
                               axis=1))
  return np.clip(np.concatenate(rows, axis=0), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------- CSV


class MetricsLog:
  """metrics.csv (+ TensorBoard) of one run; appends across resumptions.

  Args:
    workdir: the run directory. columns: the loss-term names (fixed per stage).
    enabled: False on processes other than 0 (everything becomes a no-op).
    start_step: the step this run starts from (the resumed checkpoint's, 0 for a
      fresh run): rows of later steps, logged by a run that stopped before its next
      checkpoint, are dropped, since this run logs those steps again.
  """

  BASE = ("step", "phase", "time", "seconds_per_step")

  def __init__(self, workdir: str, columns: Sequence[str], enabled: bool = True,
               start_step: Optional[int] = None):
    self.enabled = enabled
    self.columns = tuple(self.BASE) + tuple(columns)
    self.workdir = workdir
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.csv")
    new = not os.path.exists(self.path)
    if not new:
      with open(self.path, newline="") as f:
        header = next(csv.reader(f), None)
      if header is not None and tuple(header) != self.columns:
        os.replace(self.path, self.path + f".{int(time.time())}.old")
        new = True
      elif start_step is not None:
        _drop_rows_after(self.path, start_step)
    self._f = open(self.path, "a", newline="")
    self._csv = csv.writer(self._f)
    if new:
      self._csv.writerow(self.columns)
    self.events = EventWriter(workdir)

  def write(self, step: int, phase: str, values: Dict[str, float], seconds: float) -> None:
    if not self.enabled:
      return
    row = [step, phase, f"{time.time():.3f}", f"{seconds:.5f}"]
    row += ["" if values.get(c) is None else f"{float(values[c]):.7g}"
            for c in self.columns[len(self.BASE):]]
    self._csv.writerow(row)
    self.events.scalars(step, {f"{phase}/{k}" if k not in ("loss",) else f"{phase}/loss":
                               float(v) for k, v in values.items()})

  def image(self, step: int, image: np.ndarray, tag: str = "tiles") -> str:
    if not self.enabled:
      return ""
    folder = os.path.join(self.workdir, "images")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step_{step:06d}.png")
    with open(path, "wb") as f:
      f.write(encode_png(image))
    self.events.image(step, tag, image)
    return path

  def flush(self) -> None:
    if self.enabled:
      self._f.flush()
      self.events.flush()

  def close(self) -> None:
    if self.enabled:
      self._f.close()
      self.events.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites metrics.csv without the rows of steps after ``step`` (atomically)."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  keep = rows[:1] + [r for r in rows[1:] if not (r and r[0].isdigit() and int(r[0]) > step)]
  if len(keep) == len(rows):
    return
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    csv.writer(f).writerows(keep)
  os.replace(tmp, path)


def read_metrics(path: str) -> Dict[str, np.ndarray]:
  """metrics.csv -> {column: array}; a resumed run's repeated steps keep the last row."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  last = {}
  for r in rows:
    last[int(r["step"])] = r
  steps = sorted(last)
  out = {"step": np.asarray(steps), "phase": np.asarray([last[s]["phase"] for s in steps])}
  for key in rows[0].keys() if rows else ():
    if key in ("step", "phase"):
      continue
    out[key] = np.asarray([float(last[s][key]) if last[s][key] not in ("", None) else np.nan
                           for s in steps])
  return out
