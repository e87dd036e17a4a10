"""Every catalog data set's pipeline on tfds mock data (no download): shapes, dtypes, value range."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from genimg_jax.data import datasets, pipeline, preprocess
from genimg_jax.errors import ConfigError
from genimg_jax.images import uint8_to_float
from helpers import tiny_config

# name -> (image_size, channels, eval split) of a config that trains on it.
CONFIGS = {
    "mnist": (28, 1, "test"),
    "fashion_mnist": (28, 1, "test"),
    "cifar10": (32, 3, "test"),
    "celeb_a": (64, 3, "validation"),
    "imagenet_resized/32x32": (32, 3, "validation"),
    "imagenet_resized/64x64": (64, 3, "validation"),
    "imagenet2012": (64, 3, "validation"),  # images of any size: center-cropped and resized
}


def _data_config(tmp_path, name, **fields):
  config = tiny_config(str(tmp_path))
  config.unlock()
  size, channels, eval_split = CONFIGS[name]
  config.data.update(name=name, image_size=size, channels=channels, eval_split=eval_split, **fields)
  return config.data


@pytest.fixture
def mock_prepared(monkeypatch):
  """tfds mock data stands in for the prepared files (mock_data does not fake is_prepared)."""
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  with tfds.testing.mock_data(num_examples=12):
    yield


def test_every_catalog_entry_is_tested():
  assert set(CONFIGS) == set(datasets.CATALOG) - {"digits"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_catalog_pipeline_on_mock_data(name, tmp_path, mock_prepared):
  data = _data_config(tmp_path, name, random_flip=True)
  size, channels, eval_split = CONFIGS[name]
  train = datasets.open_split(data, data.train_split)
  stream = iter(pipeline.train_dataset(train, data, seed=0, local_batch_size=4, process_index=0,
                                       process_count=1))
  for _ in range(4):  # Past the end of the first epoch of 12.
    batch = next(stream)
    assert batch["image"].shape == (4, size, size, channels) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["image"].std() > 0.1  # Random mock pixels, not a constant.
  held_out = pipeline.eval_dataset(datasets.open_split(data, eval_split), data, local_batch_size=4,
                                   process_index=0, process_count=1)
  assert len(held_out) == 3 and held_out[0]["image"].shape == (4, size, size, channels)


def test_celeb_a_is_center_cropped_then_resized(tmp_path, mock_prepared):
  data = _data_config(tmp_path, "celeb_a", crop_size=140)
  raw = datasets.open_split(data, "train")[0]["image"]
  assert raw.shape == (218, 178, 3)
  image = pipeline.eval_dataset(datasets.open_split(data, "train"), data, local_batch_size=1,
                                process_index=0, process_count=1)[0]["image"][0]
  np.testing.assert_array_equal(image, uint8_to_float(preprocess.center_crop_resize(raw, 64, 140)))


def test_center_crop_resize_takes_the_center_and_averages_areas():
  image = np.zeros((218, 178, 3), np.uint8)
  image[39:179, 19:159] = 200  # The centered 140x140 square.
  np.testing.assert_array_equal(preprocess.center_crop_resize(image, 64, 140), np.full((64, 64, 3), 200))
  checker = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)[..., None]
  np.testing.assert_array_equal(preprocess.center_crop_resize(checker, 4), np.full((4, 4, 1), 128))
  wide = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10, 1)
  np.testing.assert_array_equal(preprocess.center_crop_resize(wide, 6), wide[:, 2:8])
  assert preprocess.center_crop_resize(wide, 12).shape == (12, 12, 1)
  with pytest.raises(ValueError, match="larger than the image"):
    preprocess.center_crop_resize(wide, 4, crop_size=7)


@pytest.mark.parametrize("field,value,match", [
    ("channels", 1, "3 channel"), ("eval_split", "val", "has splits"), ("crop_size", 200, "larger than")])
def test_config_must_fit_the_data_set(tmp_path, field, value, match):
  data = _data_config(tmp_path, "celeb_a")
  data[field] = value
  with pytest.raises(ConfigError, match=match) as e:
    datasets.check_config(data)
  assert e.value.where == f"config.data.{field}"
