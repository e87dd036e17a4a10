"""Data sets by config name: find or prepare the tfds builder, open a split for random access."""

import os
import sys
from typing import Callable

import ml_collections
import tensorflow_datasets as tfds

from genimg_jax.data import digits
from genimg_jax.errors import DataError
from genimg_jax.registry import lookup


def _digits_builder(data: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
  if data.image_size not in digits.SIZES:
    raise DataError("config.data.image_size",
                    f"the digits data set comes in sizes {digits.SIZES}, not {data.image_size}")
  return digits.SklearnDigits(config=f"{data.image_size}x{data.image_size}", data_dir=data_dir,
                              file_format="array_record")


def _catalog_builder(tfds_name: str, image_size: int):
  """A tfds catalog data set stored as array_record; prepared ahead of training (it downloads)."""

  def factory(data: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
    if data.image_size != image_size:
      raise DataError("config.data.image_size", f"{data.name} images are {image_size}x{image_size}, "
                      f"not {data.image_size}")
    return tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")

  return factory


# name -> (builder factory, prepared offline without a download?)
DATASETS: dict[str, tuple[Callable, bool]] = {
    "digits": (_digits_builder, True),
    "cifar10": (_catalog_builder("cifar10", 32), False),
}


def resolve_data_dir(data_dir: str) -> str:
  """config.data.data_dir, else $GENIMG_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(data_dir or os.environ.get("GENIMG_DATA_DIR", "~/tensorflow_datasets"))


def get_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder for config.data (not yet prepared). Raises ConfigError for unknown names."""
  factory, _ = lookup("config.data.name", data.name, DATASETS)
  return factory(data, resolve_data_dir(data.data_dir))


def prepare(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the builder for config.data, preparing an offline data set if it is missing."""
  builder = get_builder(data)
  if not builder.is_prepared():
    _, offline = DATASETS[data.name]
    if not offline:
      raise DataError("config.data.name", (
          f"data set {data.name!r} is not prepared: no {builder.data_dir}. Prepare it once on a "
          "machine with internet (it downloads), into the same data dir: python -c \"import "
          f"tensorflow_datasets as tfds; tfds.builder('{builder.name}', data_dir='{builder.data_dir_root}', "
          "file_format='array_record').download_and_prepare()\""))
    print(f"preparing data set {data.name!r} under {builder.data_dir} (once)", file=sys.stderr)
    tfds.disable_progress_bar()
    builder.download_and_prepare()
  return builder


class CheckedSource:
  """Random access to a prepared split; a record that cannot be read raises DataError naming its files."""

  def __init__(self, source, where: str, data_dir: str):
    self._source = source
    self._where = where
    self._data_dir = data_dir

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int):
    try:
      return self._source[index]
    except Exception as e:  # array_record/riegeli and image decoding fail in many ways.
      raise DataError(self._where, f"cannot read record {index} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:160]}); the prepared files may be truncated or "
                      f"corrupt: delete {self._data_dir} to prepare them again") from None


def open_split(data: ml_collections.ConfigDict, split: str) -> CheckedSource:
  """A random-access source of {'image': uint8 [H, W, C], 'label': int} for one split.

  Its first and last records are read once here, so truncated files fail before training.
  """
  builder = prepare(data)
  if split not in builder.info.splits:
    raise DataError("config.data", f"data set {data.name!r} has no split {split!r}; "
                    f"it has {sorted(builder.info.splits)}")
  where = os.path.join(builder.data_dir, f"{builder.name}-{split}.array_record-*")
  source = CheckedSource(builder.as_data_source(split=split), where, builder.data_dir)
  source[0], source[len(source) - 1]  # pylint: disable=pointless-statement
  return source
