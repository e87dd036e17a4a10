"""A short dcgan_digits run through the trainer: stable, moving, and closer to the data.

The distance to the data is a Frechet distance between Gaussian fits of classifier
features: the 64 hidden ReLU units of a small MLP (scikit-learn) trained here on the
digits' train split, for 1000 EMA-generator samples against the 1497 training images.
"""

import functools

import jax
import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

from genimg_jax import config as config_lib
from genimg_jax import images, methods, seeds
from genimg_jax.data import datasets
from genimg_jax.train import trainer, workdir as workdir_lib
from helpers import REPO, read_scalars

STEPS = 300


def _split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images [N, H*W*C] float32 in [-1, 1], labels [N]) of a whole split."""
  source = datasets.open_split(config.data, split)
  examples = [source[i] for i in range(len(source))]
  pixels = np.stack([images.uint8_to_float(np.asarray(e["image"])) for e in examples])
  return pixels.reshape(len(examples), -1), np.array([e["label"] for e in examples])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of feature sets [N, F] (float64).

  tr (C_a C_b)^(1/2) is the sum of the square roots of the eigenvalues of C_a C_b,
  which are real and >= 0 for covariance matrices.
  """
  a, b = a.astype(np.float64), b.astype(np.float64)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root_trace = np.sum(np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)))
  return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * root_trace)


def test_frechet_distance_closed_form():
  """Two Gaussians with diagonal covariances: ||mu_a - mu_b||^2 + sum (s_a - s_b)^2."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(200_000, 3)) * [1.0, 2.0, 0.5] + [1.0, 0.0, 0.0]
  b = rng.normal(size=(200_000, 3)) * [3.0, 1.0, 0.5]
  assert frechet_distance(a, b) == pytest.approx(1.0 + 4.0 + 1.0 + 0.0, rel=1e-2)
  assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  config = config_lib.load(f"{REPO}/configs/dcgan_digits.py", [
      f"--config.data.data_dir={data_dir}", f"--config.train.steps={STEPS}", "--config.train.log_every=50",
      f"--config.train.checkpoint_every={STEPS}", "--config.train.num_samples=16"])
  workdir = str(tmp_path_factory.mktemp("dcgan_digits"))
  method = methods.make(config)
  initial = jax.jit(method.init)(seeds.root_keys(config.seed)["init"])  # the trainer's start
  final = trainer.train(config, workdir, show_progress=False)
  sample = jax.jit(functools.partial(method.sample, num=1000))
  return config, workdir, method, initial, final, sample


def test_training_is_stable(run):
  _, workdir, _, _, final, _ = run
  scalars = read_scalars(workdir)
  gaps = [real - fake for (_, real), (_, fake) in zip(scalars["d_real"], scalars["d_fake"])]
  assert len(gaps) == STEPS // 50 and np.all(np.isfinite(gaps))
  assert all(v == 0.0 for _, v in scalars["nonfinite"])
  assert int(final.step) == STEPS


def test_ema_samples_change_and_get_closer_to_the_data(run):
  config, _, _, initial, final, sample = run
  key = jax.random.PRNGKey(1)
  before = np.asarray(sample(initial.ema_params, key)).reshape(1000, -1)
  after = np.asarray(sample(final.ema_params, key)).reshape(1000, -1)
  assert np.mean(np.abs(after - before)) > 0.1

  train_x, train_y = _split(config, "train")
  classifier = MLPClassifier((64,), max_iter=200, random_state=0).fit(train_x, train_y)
  test_x, test_y = _split(config, "test")
  assert classifier.score(test_x, test_y) > 0.9

  def features(x):
    return np.maximum(x @ classifier.coefs_[0] + classifier.intercepts_[0], 0.0)

  distance_before = frechet_distance(features(before), features(train_x))
  distance_after = frechet_distance(features(after), features(train_x))
  assert distance_after < 0.1 * distance_before, (distance_before, distance_after)
  # Samples spread over the classes rather than collapsing onto a few.
  assert np.bincount(classifier.predict(after), minlength=10).max() < 0.3 * 1000


def test_checkpoint_restores_the_whole_gan_state(run):
  config, workdir, _, _, final, _ = run
  _, restored, step = workdir_lib.restore(workdir, config, methods.make(config))
  assert step == STEPS
  assert jax.tree.structure(restored) == jax.tree.structure(final)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(final)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.leaves(restored.model_state["generator"])  # batch-norm statistics are kept
