r"""Detects 68 landmarks in every image of a folder and writes the reference-layout CSV cache.

Needs the optional extra: ``pip install 'focus-jax[detect]'`` (dlib-bin and
face-recognition-models). The cache (``detected_landmarks.csv`` plus
``detected_landmarks_info.csv`` with the method per image) goes next to the
images, or to the user cache folder when the image folder is read-only; later
``focus_jax.data.read_folder`` calls reuse it.

Example::

    python experiments/detect_landmarks.py --images ../shared/data/occluded_faces
"""

import collections
import sys

from absl import app, flags

from focus_jax import errors
from focus_jax.data import detect

_IMAGES = flags.DEFINE_string("images", None, "Image folder (searched recursively).",
                              required=True)
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Cache folder to use when the image folder "
                                 "is read-only (default: $FOCUS_JAX_CACHE or ~/.cache/focus_jax).")
_DETECTORS = flags.DEFINE_list("detectors", ["hog", "cnn"], "Face detectors to try, in order.")
_UPSAMPLE = flags.DEFINE_integer("upsample", 1, "HOG: try the image upsampled 0..N times.",
                                 lower_bound=0)
_ALIGNED = flags.DEFINE_enum("aligned", "auto", ["auto", "yes", "no"],
                             "Whether the images are aligned face crops, which enables the "
                             "whole-crop fallback when no face is detected ('auto': square "
                             "images up to 512 px).")
_CALIBRATE = flags.DEFINE_bool("calibrate", True, "Fallback box = the folder's median HOG box "
                               "(else the whole crop).")
_REFRESH = flags.DEFINE_bool("refresh", False, "Ignore an existing cache.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  aligned = {"auto": "auto", "yes": True, "no": False}[_ALIGNED.value]
  try:
    detector = detect.LandmarkDetector(detectors=_DETECTORS.value, upsample=_UPSAMPLE.value,
                                       aligned=aligned)
    result = detect.detect_folder(_IMAGES.value, detector=detector, cache_dir=_CACHE_DIR.value,
                                  refresh=_REFRESH.value, calibrate=_CALIBRATE.value)
  except (errors.FocusError, ValueError) as e:
    sys.exit(f"error: {e}")
  counts = collections.Counter(result.methods)
  total = len(result.names) + len(result.failed) + len(result.unreadable)
  print(f"{total} images: {counts.get('hog', 0)} found by HOG, {counts.get('cnn', 0)} by the "
        f"CNN detector, {counts.get('crop', 0)} by the whole-crop fallback"
        + (f", {counts.get('cached', 0)} from an older cache" if counts.get("cached") else "")
        + f"; {len(result.failed)} failed, {len(result.unreadable)} unreadable")
  if result.fallback_box is not None:
    print("fallback box (fractions of width/height): "
          + ", ".join(f"{v:.3f}" for v in result.fallback_box))
  print(f"cache: {result.cache}")


if __name__ == "__main__":
  app.run(main)
