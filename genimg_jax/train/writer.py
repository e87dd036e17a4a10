"""Run logs: TensorBoard event files, metrics.jsonl and PNG sample grids, written by process 0 only."""

import json
import math
import os

import jax
import numpy as np
import tensorboardX

from genimg_jax import images as images_lib


def metrics_path(workdir: str) -> str:
  """workdir/metrics.jsonl: one JSON object {"step": N, name: value, ...} per logged step
  (a non-finite value is null)."""
  return os.path.join(workdir, "metrics.jsonl")


class RunWriter:
  """Writes scalars to workdir/tensorboard and workdir/metrics.jsonl, and sample (and other image)
  grids to workdir/samples."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.samples_dir = os.path.join(workdir, "samples")
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard")) if self.enabled else None
    self._jsonl = open(metrics_path(workdir), "a") if self.enabled else None

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """Logs float scalars at `step`: TensorBoard, and one line appended to metrics.jsonl."""
    if self.enabled:
      for name, value in values.items():
        self._tb.add_scalar(name, value, step)
      self._tb.flush()
      row = {k: float(v) if math.isfinite(v) else None for k, v in values.items()}  # Strict JSON: no NaN.
      self._jsonl.write(json.dumps({"step": step, **row}) + "\n")
      self._jsonl.flush()

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
      self._jsonl.close()
