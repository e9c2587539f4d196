"""Rebuilds benchmarks/real_split.txt: who is who in ../shared/data/real_faces, and which
people tune the fit and which are held out (benchmarks/real.py).

The folder has no identity labels. Per photo: dlib's HOG (then CNN) face box, its
68-point shape, dlib's face-recognition descriptor (``dlib_face_recognition_resnet_model_v1``,
128-d, from the face-recognition-models package); photos are grouped by average-linkage
clustering of the descriptors cut at dlib's same-person distance 0.6. (Single linkage, i.e.
"connected at < 0.6", merged two actors of similar looks; complete linkage split one
actress in two; average linkage matched the contact sheet by eye: 13 people.) People are
numbered p01, p02, ... in the order of their first photo (natural file-name order).

Halves: people, never photos, are split into ``tune`` and ``heldout``: largest people
first (ties in a fixed hashed order), each to the half with fewer photos so far.

  python benchmarks/real_split.py                 # rewrites benchmarks/real_split.txt
  python benchmarks/real_split.py --check         # exit 1 if the rebuilt split differs
  python benchmarks/real_split.py --sheet /tmp/people.png   # contact sheet, one row per person

The contact sheet shows the photos: keep it out of the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "real_faces"))
SPLIT_FILE = os.path.join(HERE, "real_split.txt")
THRESHOLD = 0.6
HALVES = ("tune", "heldout")
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def natural_key(name: str):
  """'img10.jpg' after 'img9.jpg'."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_photos(folder: str) -> list:
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  return sorted((n for n in os.listdir(folder)
                 if n.lower().endswith(tuple(images.IMAGE_EXTENSIONS))), key=natural_key)


def descriptors(folder: str, names) -> np.ndarray:
  """[N, 128] dlib face-recognition descriptors of the largest face of each photo."""
  import dlib  # pylint: disable=import-outside-toplevel
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  from focus_jax.data import detect  # pylint: disable=import-outside-toplevel
  files = detect.model_files()
  models = os.path.dirname(files["predictor"])
  recognizer = dlib.face_recognition_model_v1(os.path.join(models, RECOGNITION_FILE))
  predictor = dlib.shape_predictor(files["predictor"])
  finder = detect.LandmarkDetector(aligned=False)
  out = []
  for n in names:
    img = (np.clip(images.read_image(os.path.join(folder, n)), 0, 1) * 255 + 0.5).astype(np.uint8)
    found = finder.find_face(img)
    if found.box is None:
      raise SystemExit(f"{n}: dlib finds no face; the split needs every photo")
    shape = predictor(img, dlib.rectangle(*found.box))
    out.append(np.asarray(recognizer.compute_face_descriptor(img, shape, 0), np.float64))
  return np.stack(out)


def people(desc: np.ndarray) -> np.ndarray:
  """[N] person numbers 1.. (in the order of first appearance) from descriptors."""
  from scipy.cluster import hierarchy  # pylint: disable=import-outside-toplevel
  from scipy.spatial.distance import pdist  # pylint: disable=import-outside-toplevel
  labels = hierarchy.fcluster(hierarchy.linkage(pdist(desc), "average"), THRESHOLD, "distance")
  order = {}
  for lab in labels:
    order.setdefault(int(lab), len(order) + 1)
  return np.array([order[int(lab)] for lab in labels])


def halves(person_ids) -> dict:
  """person id -> 'tune' | 'heldout' (balanced photo counts, people whole)."""
  counts = {}
  for p in person_ids:
    counts[p] = counts.get(p, 0) + 1
  key = lambda p: (-counts[p], hashlib.sha256(f"real-split:{p}".encode()).hexdigest())
  load = {h: 0 for h in HALVES}
  out = {}
  for p in sorted(counts, key=key):
    h = min(HALVES, key=lambda h: (load[h], HALVES.index(h)))
    out[p] = h
    load[h] += counts[p]
  return out


def build(folder: str) -> list:
  """[(file name, person id 'pNN', half)] for the photos of ``folder``."""
  names = list_photos(folder)
  ids = [f"p{k:02d}" for k in people(descriptors(folder, names))]
  half = halves(ids)
  return [(n, p, half[p]) for n, p in zip(names, ids)]


def format_split(rows) -> str:
  lines = ["# Identity split of ../shared/data/real_faces for benchmarks/real.py; rebuilt by "
           "python benchmarks/real_split.py.",
           "# person: dlib face-recognition descriptors, average-linkage clusters cut at "
           f"{THRESHOLD} (checked by eye on a contact sheet).",
           "# half: tune = choose settings on these people; heldout = report only.",
           "# file person half"]
  lines += [f"{n} {p} {h}" for n, p, h in rows]
  return "\n".join(lines) + "\n"


def read_split(path: str = SPLIT_FILE) -> list:
  """[(file name, person id, half)] from a split file; ValueError naming the bad line."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for k, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      parts = line.split()
      if len(parts) != 3 or parts[2] not in HALVES:
        raise ValueError(f"{path}:{k}: expected 'file person tune|heldout', got {line!r}")
      rows.append(tuple(parts))
  return rows


def contact_sheet(folder: str, rows, path: str, thumb: int = 96) -> None:
  from focus_jax import images  # pylint: disable=import-outside-toplevel
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  groups = {}
  for n, p, h in rows:
    groups.setdefault((h, p), []).append(n)
  width = max(len(g) for g in groups.values())
  cells = []
  for key in sorted(groups):
    for k in range(width):
      if k < len(groups[key]):
        img = images.read_image(os.path.join(folder, groups[key][k]))
        z = thumb / img.shape[0]
        cells.append(np.clip(ndimage.zoom(img, (z, z, 1), order=1), 0, 1))
      else:
        cells.append(np.ones((thumb, thumb, 3), np.float32))
  images.save_png(path, images.tile(cells, width))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", default=DEFAULT_DATA, help="the real_faces folder")
  ap.add_argument("--out", default=SPLIT_FILE)
  ap.add_argument("--check", action="store_true", help="compare with --out, write nothing")
  ap.add_argument("--sheet", default=None, help="also write a contact sheet PNG (one row per "
                  "person, tune half first); not for the repository")
  args = ap.parse_args()
  if not os.path.isdir(args.data):
    raise SystemExit(f"{args.data} not found: the split is built from ../shared/data/real_faces")
  rows = build(args.data)
  text = format_split(rows)
  if args.sheet:
    contact_sheet(args.data, rows, args.sheet)
    print(f"wrote {args.sheet}")
  if args.check:
    same = os.path.exists(args.out) and open(args.out, encoding="utf-8").read() == text
    print(f"{args.out}: {'identical' if same else 'DIFFERS from the rebuilt split'}")
    sys.exit(0 if same else 1)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
  n_people = len({p for _, p, _ in rows})
  per_half = {h: (len({p for _, p, hh in rows if hh == h}), sum(hh == h for *_, hh in rows))
              for h in HALVES}
  print(f"wrote {args.out}: {len(rows)} photos, {n_people} people; "
        + ", ".join(f"{h}: {a} people / {b} photos" for h, (a, b) in per_half.items()))


if __name__ == "__main__":
  main()
