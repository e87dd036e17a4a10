"""The user's own images: folders and .npz files become tfds data sets, prepared once per content."""

import os

import numpy as np
import PIL.Image
import pytest

from genimg_jax.data import datasets, pipeline, user_images
from genimg_jax.errors import ConfigError, DataError
from helpers import tiny_config


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(array).save(path)


def _rgb(h, w, value):
  return np.full((h, w, 3), value, np.uint8)


@pytest.fixture
def class_folder(tmp_path):
  """cats/ (3 RGB images, one 12x20 that needs a crop) and dogs/ (an 8x8 grayscale among RGB, a 16x16)."""
  root = tmp_path / "pets"
  _save(str(root / "cats" / "a.png"), _rgb(8, 8, 10))
  _save(str(root / "cats" / "b.jpg"), _rgb(8, 8, 20))
  wide = np.zeros((12, 20, 3), np.uint8)
  wide[:, 4:16] = 30  # Only the centered 12x12 square is 30.
  _save(str(root / "cats" / "sub" / "c.png"), wide)
  _save(str(root / "dogs" / "gray.png"), np.full((8, 8), 40, np.uint8))
  _save(str(root / "dogs" / "big.png"), _rgb(16, 16, 50))
  (root / "dogs" / "notes.txt").write_text("not an image")
  return root


def _config(data_dir, name, path, **fields):
  config = tiny_config(str(data_dir))
  config.unlock()
  if fields.get("holdout_fraction") == 0.0:
    fields.setdefault("eval_split", "train")  # There is no 'test' split then.
  config.data.update(dict(dict(name=name, path=str(path), image_size=8, channels=3), **fields))
  return config.data


def _all(data, split):
  source = datasets.open_split(data, split)
  return [source[i] for i in range(len(source))]


def test_class_folder_is_converted_cropped_and_resized(tmp_path, class_folder):
  data = _config(tmp_path / "tfds", "folder", class_folder, holdout_fraction=0.0)
  examples = _all(data, "train")
  by_value = {int(e["image"].mean()): (e["image"], int(e["label"])) for e in examples}
  assert sorted(by_value) == [10, 20, 30, 40, 50]
  for value, (image, label) in by_value.items():
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - value).max() <= 2, value  # JPEG may be off by a level or two.
    assert label == (0 if value <= 30 else 1)  # Sorted subfolders: cats 0, dogs 1.
  builder = datasets.get_builder(data)
  assert builder.info.features["label"].names == ["cats", "dogs"]
  assert str(builder.data_path).startswith(str(tmp_path / "tfds" / "user_images" / "folder-"))


def test_holdout_split_and_flat_folder(tmp_path):
  root = tmp_path / "flat"
  for i in range(20):
    _save(str(root / f"{i:02d}.png"), np.full((8, 8), 10 * i, np.uint8))
  data = _config(tmp_path / "tfds", "folder", root, channels=1, holdout_fraction=0.25)
  train, test = _all(data, "train"), _all(data, "test")
  assert len(train) == 15 and len(test) == 5
  values = sorted(int(e["image"][0, 0, 0]) for e in train + test)
  assert values == [10 * i for i in range(20)]
  assert all(int(e["label"]) == 0 for e in train + test)
  stream = iter(pipeline.train_dataset(datasets.open_split(data, "train"), data, seed=0, local_batch_size=5,
                                       process_index=0, process_count=1))
  assert next(stream)["image"].shape == (5, 8, 8, 1)


def test_corrupt_image_is_reported_by_path_and_nothing_is_kept(tmp_path, class_folder):
  bad = class_folder / "dogs" / "broken.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
  data = _config(tmp_path / "tfds", "folder", class_folder, holdout_fraction=0.0)
  with pytest.raises(DataError) as e:
    datasets.open_split(data, "train")
  assert e.value.where == str(class_folder)
  assert "1 unreadable image(s)" in str(e.value) and str(bad) in str(e.value)
  assert "skip_corrupt" in str(e.value)
  assert not datasets.get_builder(data).is_prepared()
  leftovers = [f for _, _, files in os.walk(tmp_path / "tfds" / "user_images") for f in files]
  assert leftovers == ["index.json"], leftovers

  data.skip_corrupt = True
  assert len(_all(data, "train")) == 5


def test_prepared_once_and_keyed_by_content(tmp_path, class_folder):
  data = _config(tmp_path / "tfds", "folder", class_folder, holdout_fraction=0.0)
  first = datasets.prepare(data)
  marker = first.data_path / "dataset_info.json"
  stamp = os.stat(marker).st_mtime_ns
  again = datasets.prepare(data)
  assert again.data_path == first.data_path and os.stat(marker).st_mtime_ns == stamp  # Not rebuilt.
  # Same bytes, new modification time: the same prepared copy (found by hashing the content).
  path = class_folder / "cats" / "a.png"
  os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
  assert datasets.get_builder(data).data_path == first.data_path
  # New content or new settings: a new copy.
  _save(str(path), _rgb(8, 8, 99))
  assert datasets.get_builder(data).data_path != first.data_path
  data.image_size = 4
  assert datasets.get_builder(data).data_path != first.data_path


def test_npz_with_labels_and_resize(tmp_path):
  images = np.stack([np.full((10, 10, 1), 20 * i, np.uint8) for i in range(6)])
  path = tmp_path / "mine.npz"
  np.savez(path, images=images, labels=np.arange(6) % 3)
  data = _config(tmp_path / "tfds", "npz", path, holdout_fraction=0.0, channels=3)
  examples = _all(data, "train")
  assert len(examples) == 6
  for e in examples:
    value = int(e["image"][0, 0, 0])
    assert e["image"].shape == (8, 8, 3) and (e["image"] == value).all()  # Gray -> RGB, 10x10 -> 8x8.
    assert int(e["label"]) == (value // 20) % 3
  assert datasets.get_builder(data).info.features["label"].num_classes == 3


@pytest.mark.parametrize("arrays,where,match", [
    ({"images": np.zeros((4, 8, 8, 3), np.float32)}, ": images", "uint8"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(3, np.int64)}, ": labels", "shape"),
    ({"pixels": np.zeros((4, 8, 8, 3), np.uint8)}, "", "no 'images' array"),
])
def test_bad_npz_names_the_file_and_key(tmp_path, arrays, where, match):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  data = _config(tmp_path / "tfds", "npz", path, holdout_fraction=0.0)
  with pytest.raises(DataError, match=match) as e:
    datasets.open_split(data, "train")
  assert e.value.where == f"{path}{where}"


def test_user_data_config_errors(tmp_path):
  with pytest.raises(ConfigError) as e:
    datasets.get_builder(_config(tmp_path, "folder", ""))
  assert e.value.where == "config.data.path"
  with pytest.raises(DataError, match="does not exist") as e:
    datasets.get_builder(_config(tmp_path, "folder", tmp_path / "missing"))
  with pytest.raises(ConfigError, match="has splits") as e:
    datasets.get_builder(_config(tmp_path, "folder", tmp_path, holdout_fraction=0.0, eval_split="test"))
  assert e.value.where == "config.data.eval_split"
  (tmp_path / "mixed" / "sub").mkdir(parents=True)
  _save(str(tmp_path / "mixed" / "sub" / "x.png"), _rgb(4, 4, 0))
  _save(str(tmp_path / "mixed" / "y.png"), _rgb(4, 4, 0))
  with pytest.raises(DataError, match="both image files") as e:
    user_images.list_folder(str(tmp_path / "mixed"))


def test_a_32_bit_float_image_is_refused_naming_the_file(tmp_path):
  root = tmp_path / "floats"
  _save(str(root / "a.png"), np.full((8, 8), 30, np.uint8))
  PIL.Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(root / "b.tif")
  data = _config(tmp_path / "tfds", "folder", root, channels=1, holdout_fraction=0.0)
  with pytest.raises(DataError, match="mode F with values in") as e:
    datasets.open_split(data, "train")
  assert e.value.where == str(root) and str(root / "b.tif") in str(e.value)
