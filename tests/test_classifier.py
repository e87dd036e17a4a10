"""The offline classifier feature network: accuracy, deterministic retraining, the cache."""

import os

import jax
import numpy as np
import pytest

from genimg_jax.evaluation import classifier
from helpers import tiny_config


@pytest.fixture(scope="module")
def digits16(tmp_path_factory):
  # A data dir of its own: the classifier is cached there, and other modules may have trained it in theirs.
  config = tiny_config(str(tmp_path_factory.mktemp("tfds_classifier")))
  config.unlock()
  config.data.image_size = 16  # The size the digits configs train at.
  return config.data


def test_classifier_is_accurate_bit_identical_when_retrained_and_cached(digits16):
  path = classifier.cache_path(digits16)
  assert not os.path.exists(path)
  trained = classifier.get(digits16)
  assert os.path.isfile(path)
  assert trained.test_accuracy >= 0.97, trained.test_accuracy
  assert f"test acc {trained.test_accuracy:.4f}" in trained.name

  images, labels = classifier.load_split(digits16, "train")
  retrained = classifier.train(images, labels, trained.num_classes)
  for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(retrained)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()

  cached = classifier.get(digits16)  # Loaded, not trained: same parameters and name.
  assert cached.name == trained.name and cached.test_accuracy == trained.test_accuracy
  for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(cached.params)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_batch_order_visits_every_example_once_per_epoch():
  order = classifier.batch_order(10, steps=6, batch_size=5, seed=3)
  assert order.shape == (6, 5)
  for epoch in order.reshape(3, 10):
    assert sorted(epoch) == list(range(10))
  assert not np.array_equal(order[:2], order[2:4])
  np.testing.assert_array_equal(order, classifier.batch_order(10, steps=6, batch_size=5, seed=3))


def test_random_shift_moves_images_by_at_most_one_pixel():
  image = -np.ones((1, 5, 5, 1), np.float32)
  image[0, 2, 2, 0] = 1.0
  shifted = classifier.random_shift(np.repeat(image, 50, axis=0), 1, np.random.default_rng(0))
  positions = {tuple(np.argwhere(s[..., 0] == 1.0)[0]) for s in shifted}
  assert positions == {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}
