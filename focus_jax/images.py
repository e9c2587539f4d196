"""Image files and host-side image helpers (NumPy, not traced).

Every image file the package reads or writes goes through here: photos and masks
(:func:`read_image`, :func:`read_mask`, :func:`read_pixels`, :func:`image_shape`),
photo folders (:func:`list_images`), PNG files and bytes (:func:`save_png`,
:func:`encode_png`); plus tiling and landmark overlays.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from focus_jax.errors import ImageReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Files next to the images that are not photos (masks and maps this package writes).
_NOT_PHOTOS = ("_visible_skin_mask", "_face_mask", "_detail", "_occluder_mask")


def read_pixels(path: str | os.PathLike) -> np.ndarray:
  """The decoded pixels of an image file, as stored (any dtype, channels, shape).

  Raises:
    whatever the decoder raises (OSError, ValueError, ...): :func:`read_image`
    turns that into an ImageReadError.
  """
  import imageio.v3 as iio  # pylint: disable=import-outside-toplevel
  return np.asarray(iio.imread(os.fspath(path)))


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Reads a photo as [H, W, 3] float32 RGB in [0, 1].

  Grey images are repeated to three channels, alpha is dropped, 16-bit images
  are scaled by 1/65535.

  Raises:
    ImageReadError: missing, unreadable, truncated or not an image.
  """
  path = os.fspath(path)
  try:
    img = read_pixels(path)
  except Exception as e:  # decoders raise anything: OSError, ValueError, SyntaxError...
    raise ImageReadError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
  return to_rgb_float(img, path)


def to_rgb_float(img, name: str = "image") -> np.ndarray:
  """A decoded image as [H, W, 3] float32 in [0, 1].

  Grey is repeated to three channels, alpha is dropped, uint8 / uint16 are
  scaled by 1/255 / 1/65535, floats are clipped to [0, 1].

  Raises:
    ImageReadError: not an [H, W], [H, W, 1|3|4] image, or an unsupported pixel
      type (the message starts with ``name``).
  """
  img = np.asarray(img)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  if img.ndim != 3 or img.shape[-1] not in (3, 4) or min(img.shape[:2]) < 1:
    raise ImageReadError(f"{name}: not an RGB image (array shape {img.shape})")
  img = img[..., :3]
  if img.dtype == np.uint8:
    return img.astype(np.float32) / 255.0
  if img.dtype == np.uint16:
    return img.astype(np.float32) / 65535.0
  if img.dtype.kind == "f":
    return np.clip(img.astype(np.float32), 0.0, 1.0)
  raise ImageReadError(f"{name}: unsupported pixel type {img.dtype}")


def read_mask(path: str | os.PathLike) -> np.ndarray:
  """Reads a ground-truth mask as [H, W] float32 in {0, 1} (white = 1).

  Raises:
    ImageReadError: unreadable file.
  """
  img = read_image(path)
  return (img.mean(axis=-1) >= 0.5).astype(np.float32)


def image_shape(path: str | os.PathLike) -> tuple:
  """(height, width) of an image file, from its header when Pillow can read it.

  Raises:
    ImageReadError: neither Pillow nor :func:`read_image` can read it.
  """
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(path) as im:
      return im.size[1], im.size[0]
  except Exception:  # pylint: disable=broad-except
    return read_image(path).shape[:2]


def list_images(image_dir: str, recursive: bool = True) -> list:
  """Photo names (relative to ``image_dir``, '/'-separated, sorted) in a folder.

  Masks and maps written next to photos (``*_visible_skin_mask.png`` ...) are
  left out.
  """
  names = []
  for root, dirs, files in os.walk(image_dir):
    dirs.sort()
    for f in sorted(files):
      stem, ext = os.path.splitext(f)
      if ext.lower() not in IMAGE_EXTENSIONS or stem.endswith(_NOT_PHOTOS):
        continue
      rel = os.path.relpath(os.path.join(root, f), image_dir)
      names.append(rel.replace(os.sep, "/"))
    if not recursive:
      break
  return names


def to_uint8(image) -> np.ndarray:
  """[H, W, C] float in [0, 1] (or uint8) -> uint8, clipped."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(path: str | os.PathLike, image) -> None:
  """Writes ``image`` ([H, W], [H, W, 3] float in [0, 1] or uint8) as PNG, atomically."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.png"
  import imageio.v3 as iio  # pylint: disable=import-outside-toplevel
  try:
    iio.imwrite(tmp, to_uint8(image))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def encode_png(image) -> bytes:
  """[H, W, C] float in [0, 1] (or uint8) -> the bytes of a PNG file."""
  import imageio.v3 as iio  # pylint: disable=import-outside-toplevel
  return iio.imwrite("<bytes>", to_uint8(image), extension=".png")


def tile(images: Sequence[np.ndarray], cols: int, pad: int = 2, background: float = 1.0):
  """Lays equally sized [H, W, 3] images out on a grid with ``cols`` columns."""
  images = [np.asarray(im, np.float32) for im in images]
  h, w = images[0].shape[:2]
  rows = -(-len(images) // cols)
  canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), background, np.float32)
  for k, im in enumerate(images):
    r, c = divmod(k, cols)
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    canvas[y:y + h, x:x + w] = im if im.ndim == 3 else im[..., None]
  return canvas


def draw_points(image, points, color=(0.1, 0.9, 0.2), radius: int = 1, valid=None):
  """Draws [N, 2] pixel positions (x, y; centre-at-+0.5 convention) as small squares."""
  out = np.array(image, np.float32, copy=True)
  h, w = out.shape[:2]
  points = np.asarray(points)
  valid = np.ones(len(points), bool) if valid is None else np.asarray(valid)
  for (x, y), ok in zip(points, valid):
    if not ok or not np.isfinite([x, y]).all():
      continue
    col, row = int(np.floor(x)), int(np.floor(y))
    out[max(row - radius, 0):min(row + radius + 1, h),
        max(col - radius, 0):min(col + radius + 1, w)] = color
  return out
