"""The offline digits builder and the grain training pipeline."""

import glob
import os

import numpy as np
import pytest

from genimg_jax.data import datasets, digits, pipeline
from genimg_jax.errors import ConfigError, DataError
from helpers import tiny_config


@pytest.fixture(scope="module")
def config(data_dir):
  return tiny_config(data_dir)


def test_digits_prepared_as_array_record(config, data_dir):
  train = datasets.open_split(config.data, "train")
  test = datasets.open_split(config.data, "test")
  assert len(train) == digits.NUM_TRAIN == 1497 and len(test) == 300
  example = train[0]
  assert example["image"].shape == (8, 8, 1) and example["image"].dtype == np.uint8
  builder = datasets.get_builder(config.data)
  assert builder.is_prepared() and builder.data_dir.startswith(data_dir)
  files = [p.name for p in builder.data_path.iterdir()]
  assert any(".array_record" in name for name in files), files
  # Every stored image is one of sklearn's digits, with its label.
  images, labels = digits.digits_uint8(8)
  all_train = np.stack([train[i]["image"] for i in range(len(train))])
  assert all_train.max() == 255 and all_train.min() == 0
  index = {im.tobytes(): lab for im, lab in zip(images, labels)}
  assert all(index[train[i]["image"].tobytes()] == train[i]["label"] for i in range(0, 1497, 97))


def test_digits_16x16_is_upsampled(data_dir):
  config = tiny_config(data_dir)
  config.unlock()
  config.data.image_size = 16
  image = datasets.open_split(config.data, "train")[0]["image"]
  assert image.shape == (16, 16, 1)


def test_unknown_dataset_and_split(config):
  bad = config.data.copy_and_resolve_references()
  bad.name = "imagenet_typo"
  with pytest.raises(ConfigError) as e:
    datasets.get_builder(bad)
  assert e.value.where == "config.data.name"
  with pytest.raises(DataError, match="no split 'validation'"):
    datasets.open_split(config.data, "validation")
  bad = config.data.copy_and_resolve_references()
  bad.image_size = 28
  with pytest.raises(DataError, match="sizes"):
    datasets.get_builder(bad)


def _batches(source, n, **kw):
  it = iter(pipeline.train_dataset(source, **kw))
  return [next(it) for _ in range(n)], it


def test_pipeline_deterministic_reshuffled_and_resumable(config):
  source = datasets.open_split(config.data, "train")
  kw = dict(seed=3, local_batch_size=499, process_index=0, process_count=1, random_flip=False)
  first, _ = _batches(source, 6, **kw)
  again, it = _batches(source, 3, **kw)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert first[0]["image"].shape == (499, 8, 8, 1) and first[0]["image"].dtype == np.float32
  assert first[0]["image"].min() == -1.0 and first[0]["image"].max() == 1.0
  # 3 batches of 499 = one epoch of 1497: each epoch holds every image once, in a new order.
  epoch1 = np.concatenate([b["label"] for b in first[:3]])
  epoch2 = np.concatenate([b["label"] for b in first[3:]])
  assert np.bincount(epoch1).tolist() == np.bincount(epoch2).tolist()
  assert not np.array_equal(epoch1, epoch2)
  # Restoring a saved position continues exactly.
  state = it.get_state()
  fresh = iter(pipeline.train_dataset(source, **kw))
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)["image"], first[3]["image"])
  other, _ = _batches(source, 1, **dict(kw, seed=4))
  assert not np.array_equal(other[0]["image"], first[0]["image"])


def test_pipeline_process_shards_partition_the_global_batch(config):
  source = datasets.open_split(config.data, "train")
  kw = dict(seed=0, random_flip=False)
  whole, _ = _batches(source, 2, local_batch_size=8, process_index=0, process_count=1, **kw)
  parts = [_batches(source, 2, local_batch_size=4, process_index=p, process_count=2, **kw)[0]
           for p in range(2)]
  for step in range(2):
    global_images = sorted(im.tobytes() for im in whole[step]["image"])
    shards = [sorted(im.tobytes() for im in parts[p][step]["image"]) for p in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == global_images


def test_random_flip(config):
  source = datasets.open_split(config.data, "train")
  kw = dict(seed=0, local_batch_size=64, process_index=0, process_count=1)
  plain, _ = _batches(source, 1, random_flip=False, **kw)
  flipped, _ = _batches(source, 1, random_flip=True, **kw)
  same = [np.array_equal(a, b) for a, b in zip(plain[0]["image"], flipped[0]["image"])]
  mirrored = [np.array_equal(a[:, ::-1], b) for a, b in zip(plain[0]["image"], flipped[0]["image"])]
  assert all(s or m for s, m in zip(same, mirrored))
  assert 10 < sum(mirrored) < 54


def test_unprepared_catalog_data_set_says_how_to_prepare_it(tmp_path):
  config = tiny_config(str(tmp_path))
  config.unlock()
  config.data.name, config.data.image_size, config.data.channels = "cifar10", 32, 3
  with pytest.raises(DataError) as e:
    datasets.open_split(config.data, "train")
  message = str(e.value)
  assert e.value.where == "config.data.name"
  assert "'cifar10' is not prepared" in message and str(tmp_path) in message
  assert "download_and_prepare()" in message
  assert not (tmp_path / "cifar10").exists()  # Nothing half-written.


def test_truncated_data_file_names_the_files(tmp_path):
  config = tiny_config(str(tmp_path))
  datasets.open_split(config.data, "train")
  (path,) = glob.glob(str(tmp_path / "sklearn_digits" / "8x8" / "1.0.0" / "*train.array_record*"))
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(DataError) as e:
    datasets.open_split(config.data, "train")
  assert e.value.where == str(tmp_path / "sklearn_digits" / "8x8" / "1.0.0" / "sklearn_digits-train.array_record-*")
  assert "cannot read record" in str(e.value) and "truncated or corrupt" in str(e.value)
