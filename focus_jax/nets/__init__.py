"""Networks (flax.linen, NHWC): the encoder, the segmentation UNet, identity features.

* :mod:`~focus_jax.nets.encoder` — :class:`FaceEncoder` (ResNet-18/34/50 + zero-initialised
  head → 3DMM coefficients, pose, SH light, scaled and truncated as the reference);
* :mod:`~focus_jax.nets.unet` — :class:`UNet` (render ⊕ target → inlier mask);
* :mod:`~focus_jax.nets.identity` — face-recognition embeddings and shallow features
  with landmark alignment: dlib's ResNet (default; weights from PyPI) or ArcFace;
* :mod:`~focus_jax.nets.convert` — PyTorch ``.pth`` → Flax (torchvision ResNet,
  ArcFace iResNet), no torch needed; :mod:`~focus_jax.nets.dlib_reader` — dlib ``.dat``;
* :mod:`~focus_jax.nets.align` — similarity alignment and differentiable warping.
"""

from focus_jax.nets import align, convert, dlib_reader, encoder, identity, layers, unet
from focus_jax.nets.encoder import EncoderOutput, FaceEncoder, ResNet
from focus_jax.nets.identity import IdentityFeatures, IdentityNet
from focus_jax.nets.unet import UNet
from focus_jax.nets.weights import WeightsError

__all__ = [
    "align", "convert", "dlib_reader", "encoder", "identity", "layers", "unet",
    "EncoderOutput", "FaceEncoder", "ResNet", "IdentityFeatures", "IdentityNet", "UNet",
    "WeightsError",
]
