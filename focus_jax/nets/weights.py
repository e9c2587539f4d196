"""Where pretrained network weights come from, and the error when they are missing.

Lookup order for every weight file: the explicit ``path`` argument (what the
``--identity_weights`` / ``--encoder_init`` style flags of the experiments pass), then an
environment variable, then (dlib only) the ``face-recognition-models`` package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

from focus_jax.errors import FocusError

# Environment variables that name weight files when no path is passed.
ENV_DLIB = "FOCUS_JAX_DLIB_FACE_MODEL"
ENV_ARCFACE = "FOCUS_JAX_ARCFACE_WEIGHTS"
ENV_RESNET = "FOCUS_JAX_RESNET_WEIGHTS"

DLIB_FILE = "dlib_face_recognition_resnet_model_v1.dat"


class WeightsError(FocusError, ValueError):
  """A pretrained-weights file is missing, unreadable or of the wrong network."""


def _face_recognition_models_dir() -> Optional[Path]:
  # find_spec does not execute the package: its __init__ imports pkg_resources,
  # which recent setuptools no longer ships.
  try:
    spec = importlib.util.find_spec("face_recognition_models")
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return Path(list(spec.submodule_search_locations)[0]) / "models"


def face_recognition_models_file(name: str) -> Optional[Path]:
  """A file shipped by the ``face-recognition-models`` package, or None if absent."""
  d = _face_recognition_models_dir()
  if d is None or not (d / name).is_file():
    return None
  return d / name


def resolve_dlib_weights(path: Optional[str | os.PathLike] = None) -> Path:
  """Path of dlib's face-recognition ResNet; raises WeightsError saying how to get it."""
  candidate = path or os.environ.get(ENV_DLIB)
  if candidate:
    p = Path(candidate).expanduser()
    if not p.is_file():
      raise WeightsError(
          f"dlib face-recognition weights not found at {p} (from "
          f"{'the path argument' if path else '$' + ENV_DLIB}). Point it at "
          f"{DLIB_FILE}, or drop it to use the copy from "
          f"`pip install face-recognition-models`.")
    return p
  p = face_recognition_models_file(DLIB_FILE)
  if p is None:
    raise WeightsError(
        f"dlib face-recognition weights ({DLIB_FILE}) not found. Install them with "
        f"`pip install face-recognition-models` (or `pip install focus-jax[detect]`), "
        f"or pass the file's path (weights=... / --identity_weights) or set ${ENV_DLIB}.")
  return p


def resolve_file(path: Optional[str | os.PathLike], env: str, what: str, how: str) -> Path:
  """Generic lookup: explicit path, else ``$env``; raises WeightsError with ``how``."""
  candidate = path or os.environ.get(env)
  if not candidate:
    raise WeightsError(f"no {what} given. {how} Pass its path (weights=...) or set ${env}.")
  p = Path(candidate).expanduser()
  if not p.is_file():
    raise WeightsError(f"{what} not found at {p}. {how} Pass its path (weights=...) or "
                       f"set ${env}.")
  return p


ARCFACE_HOW = ("Download the insightface arcface_torch ms1mv3_arcface_r50_fp16 "
               "backbone.pth (the network the FOCUS reference used; see "
               "insightface/recognition/arcface_torch, model zoo); torch is not needed "
               "to read it.")
RESNET_HOW = ("Use a torchvision ImageNet ResNet state_dict of the encoder's depth (e.g. "
              "resnet50-0676ba61.pth, torchvision's IMAGENET1K_V1 weights); torch is not "
              "needed to read it.")
