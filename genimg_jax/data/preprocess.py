"""Per-image preprocessing on uint8 arrays: channel conversion, center crop and resize."""

import numpy as np
import PIL.Image

PIL_MODES = {1: "L", 3: "RGB"}


def to_channels(image: PIL.Image.Image, channels: int) -> PIL.Image.Image:
  """The image in mode L (channels=1) or RGB (channels=3); RGB -> L uses PIL's ITU-R 601 luma."""
  return image.convert(PIL_MODES[channels])


def center_crop_resize(image: np.ndarray, size: int, crop_size: int = 0) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [size, size, C].

  Crops the centered crop_size x crop_size square (0: the largest centered square,
  min(H, W)), then resizes it to size x size: area averaging (PIL BOX) when
  shrinking, bicubic when enlarging. An image already size x size with no crop
  asked for is returned unchanged.
  """
  height, width, channels = image.shape
  crop = crop_size or min(height, width)
  if crop > min(height, width):
    raise ValueError(f"crop {crop} is larger than the image ({height}x{width})")
  if crop == height == width == size:
    return image
  top, left = (height - crop) // 2, (width - crop) // 2
  square = image[top:top + crop, left:left + crop]
  pil = PIL.Image.fromarray(square[..., 0] if channels == 1 else square)
  resample = PIL.Image.Resampling.BOX if size <= crop else PIL.Image.Resampling.BICUBIC
  resized = np.asarray(pil.resize((size, size), resample))
  return resized.reshape(size, size, channels)
