"""``--encoder_init``: the encoder's ResNet trunk from an ImageNet torchvision checkpoint.

The FOCUS reference starts stage 1 from torchvision's ImageNet ResNet-50
(``encoder/encoder.py``: ``torchvision.models.resnet50(pretrained=True)`` with the
final ``fc`` layer set to zero; Occlusion-Robust-MoFA commit 33a5add). Here the
``.pth`` state dict is converted when a fresh stage-1 run starts (torch is not needed:
:mod:`focus_jax.nets.convert` reads it with a restricted unpickler); the head stays
zero, so the first predictions are the mean face as in the reference. The file's
SHA-256 is printed and written to ``<workdir>/encoder_init.json`` so a run records
which weights it started from.

Values of ``config.encoder_init``: ``''`` (random trunk), ``'imagenet'`` (the file
named by ``$FOCUS_JAX_RESNET_WEIGHTS``, e.g. torchvision's ``resnet50-0676ba61.pth``;
what ``paper.flags`` sets) or a path to the ``.pth`` file.
"""

from __future__ import annotations

import hashlib
import json
import os

import flax

from focus_jax.nets import encoder as encoder_lib
from focus_jax.nets import weights as weights_lib
from focus_jax.train.config import TrainConfig

RECORD = "encoder_init.json"


def sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file (read in 1 MiB chunks)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def resolve(value: str, depth: int):
  """The weights file of an ``encoder_init`` value (None for ''); raises WeightsError."""
  if not value:
    return None
  return weights_lib.resolve_file(None if value == "imagenet" else value, weights_lib.ENV_RESNET,
                                  f"ImageNet ResNet-{depth} weights (--encoder_init={value})",
                                  weights_lib.RESNET_HOW)


def apply(config: TrainConfig, encoder: encoder_lib.FaceEncoder, variables: dict,
          workdir: str | None = None, verbose: bool = True) -> dict:
  """``variables`` (the encoder's ``{"params", "batch_stats"}``) with the trunk of
  ``config.encoder_init`` (unchanged when it is ''); records the file and its SHA-256
  in ``workdir/encoder_init.json``.

  Raises:
    WeightsError: the file is missing or its tensors do not fit the trunk.
  """
  path = resolve(config.encoder_init, config.encoder_depth)
  if path is None:
    return variables
  digest = sha256(path)
  plain = {"params": flax.core.unfreeze(variables["params"]),
           "batch_stats": flax.core.unfreeze(variables["batch_stats"])}
  out = encoder_lib.encoder_variables_from_torchvision(str(path), encoder, plain)
  if verbose:
    print(f"encoder initialised from {path} (sha256 {digest})", flush=True)
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RECORD), "w", encoding="utf-8") as f:
      json.dump({"path": os.path.abspath(path), "sha256": digest}, f, indent=1)
  return out
