"""The one conversion each way between stored pixels and model images, and PNG grids.

Inside the library images are float32 NHWC in [-1, 1]; uint8 in [0, 255] only at
the edges (data sets, PNG files). Sample grids and evaluation both use these.
"""

import math
import os

import numpy as np
import PIL.Image


def uint8_to_float(images):
  """uint8 [0, 255] -> float32 [-1, 1]: x / 127.5 - 1. Any shape; numpy or jax array."""
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def float_to_uint8(images) -> np.ndarray:
  """float [-1, 1] -> uint8: round((x + 1) * 127.5), clipped to [0, 255]. Returns numpy."""
  scaled = np.round((np.asarray(images, dtype=np.float32) + 1.0) * 127.5)
  return np.clip(scaled, 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles uint8 images [N, H, W, C] into one uint8 picture [rows*(H+pad)+pad, cols*(W+pad)+pad, C].

  `columns` defaults to ceil(sqrt(N)); gaps are black.
  """
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  out = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
  return out


def save_grid(path: str, images, columns: int | None = None) -> np.ndarray:
  """Saves float images [N, H, W, C] in [-1, 1] as a PNG grid; returns the uint8 grid [H', W', C]."""
  picture = make_grid(float_to_uint8(images), columns)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  PIL.Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(path, format="PNG")
  return picture
