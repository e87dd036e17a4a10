"""The one conversion each way between stored pixels and model images, and image files.

Inside the library images are float32 NHWC in [-1, 1]; uint8 in [0, 255] only at
the edges (data sets, PNG files, .npz exports). Sample grids, exports and evaluation
all use these.
"""

import math
import os
import zipfile

import numpy as np
import PIL.Image

from genimg_jax.files import atomic_open


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


def _save_png(path: str, picture: np.ndarray) -> None:
  """uint8 [H, W, C] (C 1 or 3) as a grayscale or RGB PNG, written atomically."""
  with atomic_open(path, "wb") as f:
    PIL.Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(f, format="PNG")


def save_grid(path: str, images, columns: int | None = None) -> np.ndarray:
  """Saves float images [N, H, W, C] in [-1, 1] as a PNG grid; returns the uint8 grid [H', W', C]."""
  picture = make_grid(float_to_uint8(images), columns)
  _save_png(path, picture)
  return picture


OUTPUTS = "a .png file (one grid), a .npz file (uint8 arr_0 [N, H, W, C]) or a directory (one PNG per image)"


def output_kind(path: str) -> str:
  """'grid' for *.png, 'npz' for *.npz, 'directory' for a path without a suffix (or an existing
  directory); ValueError naming OUTPUTS for any other suffix."""
  suffix = os.path.splitext(path.rstrip("/"))[1].lower()
  if os.path.isdir(path) or path.endswith("/") or not suffix:
    return "directory"
  if suffix in (".png", ".npz"):
    return {".png": "grid", ".npz": "npz"}[suffix]
  raise ValueError(f"{path!r} has the suffix {suffix!r}; write {OUTPUTS}")


class ImageSink:
  """Writes `num` generated images, given batch by batch in order, to `path` (see output_kind).

  add(images [B, H, W, C] float in [-1, 1]); close() finishes the file. A directory gets
  <index>.png per image as they come; an .npz is filled through a memory-mapped .npy on
  disk and then stored (uncompressed, as np.savez does) as arr_0, so memory stays bounded
  whatever `num`; a grid keeps its images in memory. Files appear complete or not at all.
  """

  def __init__(self, path: str, num: int):
    self.path, self.num, self.kind, self.count = path, num, output_kind(path), 0
    self._grid, self._array = [], None
    self._digits = max(6, len(str(num - 1)))
    if self.kind == "directory":
      os.makedirs(path, exist_ok=True)

  def add(self, images) -> None:
    pixels = float_to_uint8(images)
    if self.kind == "directory":
      for i, picture in enumerate(pixels, start=self.count):
        _save_png(os.path.join(self.path, f"{i:0{self._digits}d}.png"), picture)
    elif self.kind == "grid":
      self._grid.append(pixels)
    else:
      if self._array is None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._array = np.lib.format.open_memmap(self.path + ".arr_0.npy.tmp", mode="w+", dtype=np.uint8,
                                                shape=(self.num,) + pixels.shape[1:])
      self._array[self.count:self.count + len(pixels)] = pixels
    self.count += len(pixels)

  def close(self) -> None:
    """Writes the grid or the .npz (all `num` images must have been added)."""
    if self.count != self.num:
      raise ValueError(f"{self.path}: {self.count} of {self.num} images were added")
    if self.kind == "grid":
      _save_png(self.path, make_grid(np.concatenate(self._grid)))
    elif self.kind == "npz":
      self._array.flush()
      npy, self._array = self._array.filename, None
      with atomic_open(self.path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        z.write(npy, "arr_0.npy")
      os.remove(npy)
