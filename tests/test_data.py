"""The offline digits builder and the grain training pipeline."""

import glob
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from genimg_jax.data import datasets, digits, pipeline
from genimg_jax.errors import ConfigError, DataError
from helpers import REPO, tiny_config


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
  with pytest.raises(ConfigError, match="sizes") as e:
    datasets.get_builder(bad)
  assert e.value.where == "config.data.image_size"
  bad = config.data.copy_and_resolve_references()
  bad.eval_split = "validation"
  with pytest.raises(ConfigError, match="has splits") as e:
    datasets.get_builder(bad)
  assert e.value.where == "config.data.eval_split"


def _data(config, **fields):
  data = config.data.copy_and_resolve_references()
  data.update(fields)
  return data


def _batches(source, n, data, **kw):
  it = iter(pipeline.train_dataset(source, data, **kw))
  return [next(it) for _ in range(n)], it


def test_pipeline_deterministic_reshuffled_and_resumable(config):
  source = datasets.open_split(config.data, "train")
  kw = dict(data=config.data, seed=3, local_batch_size=499, process_index=0, process_count=1)
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


def test_global_batches_do_not_depend_on_the_process_count(config):
  """Process p's batch is block p of the global batch, random flips and dequantization included."""
  source = datasets.open_split(config.data, "train")
  data = _data(config, random_flip=True, dequantize=True)
  whole, _ = _batches(source, 3, data, seed=0, local_batch_size=8, process_index=0, process_count=1)
  parts = [_batches(source, 3, data, seed=0, local_batch_size=4, process_index=p, process_count=2)[0]
           for p in range(2)]
  for step in range(3):
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key])
  later, _ = _batches(source, 1, data, seed=0, local_batch_size=4, process_index=1, process_count=2, start_batch=2)
  np.testing.assert_array_equal(later[0]["image"], parts[1][2]["image"])


def test_random_flip(config):
  source = datasets.open_split(config.data, "train")
  kw = dict(seed=0, local_batch_size=64, process_index=0, process_count=1)
  plain, _ = _batches(source, 1, _data(config, random_flip=False), **kw)
  flipped, _ = _batches(source, 1, _data(config, random_flip=True), **kw)
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
  assert "genimg data prepare --config" in message and "copy the data dir's" in message
  assert not (tmp_path / "cifar10").exists()  # Nothing half-written.


def test_no_network_fails_fast_and_writes_nothing(tmp_path, monkeypatch):
  def refuse(address, timeout):
    raise socket.gaierror(-2, "Name or service not known")

  monkeypatch.setattr(socket, "create_connection", refuse)
  config = tiny_config(str(tmp_path))
  config.unlock()
  config.data.name, config.data.image_size, config.data.channels = "imagenet_resized/32x32", 32, 3
  config.data.eval_split = "validation"
  with pytest.raises(DataError) as e:
    datasets.prepare(config.data, download=True)
  message = str(e.value)
  assert "cannot reach www.image-net.org" in message and "needs an ImageNet account" in message
  assert str(tmp_path / "imagenet_resized") in message
  assert not glob.glob(str(tmp_path / "**" / "*.array_record*"), recursive=True)


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
  def no_network(self, *args, **kwargs):
    os.makedirs(os.path.join(self.download_dir, "mnist"), exist_ok=True)
    open(os.path.join(self.download_dir, "mnist", "train-images.gz.tmp.123"), "w").write("partial")
    raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

  monkeypatch.setattr(datasets, "_check_reachable", lambda url: None)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", no_network)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
  config = tiny_config(str(tmp_path))
  config.unlock()
  config.data.name, config.data.image_size = "mnist", 28
  with pytest.raises(DataError) as e:
    datasets.prepare(config.data, download=True)
  message = str(e.value)
  assert "preparing 'mnist'" in message and "ConnectionError" in message and "nothing was kept" in message
  assert "copy the data dir's " + str(tmp_path / "mnist") in message
  assert not glob.glob(str(tmp_path / "mnist" / "*")), os.listdir(tmp_path / "mnist")
  assert not glob.glob(str(tmp_path / "downloads" / "**" / "*.tmp.*"), recursive=True)


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


class IndexedSource:
  """n distinct 4x4x1 images; label i marks element i, so tests can see which elements came."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((4, 4, 1), i % 256, np.uint8), "label": i}


def test_process_shards_are_disjoint_and_cover_each_epoch(config):
  kw = dict(data=_data(config, image_size=4), seed=5, local_batch_size=4, process_count=2)
  per_process = [_batches(IndexedSource(48), 12, process_index=p, **kw)[0] for p in range(2)]
  epochs = []
  for epoch in range(2):  # 48 elements / 2 processes / 4 per batch = 6 batches per epoch.
    shards = [np.concatenate([b["label"] for b in batches[6 * epoch:6 * epoch + 6]]) for batches in per_process]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate(shards).tolist()) == list(range(48))
    epochs.append(np.concatenate(shards))
  assert not np.array_equal(epochs[0], epochs[1])


def test_dequantize_spreads_each_value_over_its_bin(config):
  source = datasets.open_split(config.data, "train")
  kw = dict(seed=0, local_batch_size=32, process_index=0, process_count=1)
  plain = _batches(source, 1, config.data, **kw)[0][0]["image"]
  noisy = _batches(source, 1, _data(config, dequantize=True), **kw)[0][0]["image"]
  again = _batches(source, 1, _data(config, dequantize=True), **kw)[0][0]["image"]
  np.testing.assert_array_equal(noisy, again)
  offset = (noisy - plain) * 127.5
  assert noisy.dtype == np.float32 and np.abs(offset).max() <= 0.5 + 1e-5
  assert abs(offset.mean()) < 0.02 and 0.27 < offset.std() < 0.31  # U(-1/2, 1/2): std 0.2887.


_RESUME_SCRIPT = """
import json, sys
import numpy as np
from absl import flags
flags.FLAGS.mark_as_parsed()
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from genimg_jax.data import datasets, pipeline
config = tiny_config({data_dir!r})
config.unlock()
config.data.num_workers = 2
it = iter(pipeline.train_dataset(datasets.open_split(config.data, "train"), config.data, seed=7,
                                 local_batch_size=64, process_index=0, process_count=1))
if sys.argv[1] == "save":
  for _ in range({k}):
    next(it)
  json.dump(it.get_state(), open(sys.argv[2], "w"))
else:
  it.set_state(json.load(open(sys.argv[2])))
  np.save(sys.argv[3], next(it)["image"])
"""


@pytest.mark.slow
def test_iterator_state_resumes_exactly_in_a_new_process(config, data_dir, tmp_path):
  """Saved and restored by two processes reading with 2 worker processes; the reference reads with threads."""
  k = 30  # More than one epoch of 1497 // 64 = 23 batches: resumes mid-epoch 2.
  script = _RESUME_SCRIPT.format(tests=os.path.join(REPO, "tests"), data_dir=data_dir, k=k)
  state, restored = str(tmp_path / "state.json"), str(tmp_path / "next.npy")
  for args in (["save", state], ["load", state, restored]):
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
  assert json.load(open(state))
  uninterrupted, _ = _batches(datasets.open_split(config.data, "train"), k + 1, config.data, seed=7,
                              local_batch_size=64, process_index=0, process_count=1)
  np.testing.assert_array_equal(np.load(restored), uninterrupted[k]["image"])
