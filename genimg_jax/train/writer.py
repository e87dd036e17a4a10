"""Run logs: TensorBoard event files and PNG sample grids, written by process 0 only."""

import os

import jax
import numpy as np
import tensorboardX

from genimg_jax import images as images_lib


class RunWriter:
  """Writes scalars to workdir/tensorboard and sample (and other image) grids to workdir/samples."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.samples_dir = os.path.join(workdir, "samples")
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard")) if self.enabled else None

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self.enabled:
      for name, value in values.items():
        self._tb.add_scalar(name, value, step)
      self._tb.flush()

  def samples(self, step: int, images: np.ndarray) -> str | None:
    """Saves images [N, H, W, C] in [-1, 1] as samples/step_<step>.png and in TensorBoard."""
    return self._image("samples", f"step_{step:07d}.png", step, images)

  def grid(self, name: str, step: int, images: np.ndarray) -> str | None:
    """Saves images [N, H, W, C] in [-1, 1] as samples/<name>_<step>.png and in TensorBoard as `name`."""
    return self._image(name, f"{name}_{step:07d}.png", step, images)

  def _image(self, tag: str, filename: str, step: int, images: np.ndarray) -> str | None:
    if not self.enabled:
      return None
    path = os.path.join(self.samples_dir, filename)
    picture = images_lib.save_grid(path, images)
    self._tb.add_image(tag, picture, step, dataformats="HWC")
    self._tb.flush()
    return path

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
