"""Where evaluation caches live under the data dir, and how they are named and written."""

import os

import jax
import ml_collections
import numpy as np

from genimg_jax.data import datasets
from genimg_jax.files import atomic_open

FEATURE_NETS_DIR = "genimg_feature_nets"
REFERENCE_DIR = "genimg_reference_stats"


def data_dir(data: ml_collections.ConfigDict) -> str:
  return datasets.resolve_data_dir(data.data_dir)


def dataset_key(data: ml_collections.ConfigDict) -> str:
  """A file-name-safe key of a data set at the size it is read at.

  The prepared data set's folder under the data dir names the data set, its
  version and config (and, for the user's own images, their content); the image
  size and channel count are added since catalog sets are resized on reading.
  """
  builder = datasets.prepare(data)
  folder = os.path.relpath(str(builder.data_dir), str(builder.data_dir_root))
  return f"{folder.replace(os.sep, '_')}_{data.image_size}x{data.image_size}x{data.channels}"


def save_npz(path: str, **arrays) -> None:
  """Writes a plain .npz from process 0 only, through a temporary file, so no reader sees half a file."""
  if jax.process_index() != 0:
    return
  with atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def load_npz(path: str) -> dict[str, np.ndarray]:
  """All arrays of a .npz, read without pickle."""
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}
