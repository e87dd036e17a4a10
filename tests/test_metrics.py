"""FID, KID, Inception Score and precision/recall against closed forms and independent references."""

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

from genimg_jax.evaluation import metrics


def _correlated(rng, n, d, shift=0.0):
  mixing = np.random.default_rng(123).normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ mixing + shift


def _gaussian_fid_closed_form(mu1, s1, mu2, s2) -> float:
  """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr((s1^1/2 s2 s1^1/2)^1/2), via symmetric eigendecompositions."""
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(w)) @ v.T
  inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.sum(np.sqrt(inner)))


def test_fid_of_a_feature_set_with_itself_is_zero():
  features = _correlated(np.random.default_rng(0), 600, 32)
  assert abs(metrics.fid(features, features)) < 1e-6


def test_fid_is_symmetric():
  rng = np.random.default_rng(1)
  a, b = _correlated(rng, 500, 16), _correlated(rng, 700, 16, shift=0.3) * 1.2
  forward, backward = metrics.fid(a, b), metrics.fid(b, a)
  assert forward > 0.5
  assert abs(forward - backward) < 1e-9 * forward


def test_frechet_distance_of_population_statistics_is_the_closed_form():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
  s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  expected = _gaussian_fid_closed_form(mu1, s1, mu2, s2)
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_fid_of_gaussian_samples_converges_to_the_closed_form():
  rng = np.random.default_rng(3)
  d = 4
  a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  s1, s2 = a @ a.T / d + 0.2 * np.eye(d), b @ b.T / d + 0.2 * np.eye(d)
  mu1, mu2 = np.zeros(d), np.full(d, 0.5)
  expected = _gaussian_fid_closed_form(mu1, s1, mu2, s2)
  errors = []
  for n in (300, 3000, 300000):
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n)
    errors.append(abs(metrics.fid(x, y) - expected))
  assert errors[-1] < 0.01 * expected, (errors, expected)
  assert errors[-1] < errors[0]


def test_frechet_distance_rejects_a_large_imaginary_part():
  with pytest.raises(ValueError, match="imaginary part"):
    metrics.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


def test_unbiased_mmd2_equals_the_double_sum_definition():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(6, 3)), rng.normal(size=(7, 3)) + 0.5
  k = lambda u, v: (u @ v / 3 + 1.0) ** 3
  within_x = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
  within_y = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
  across = sum(k(x[i], y[j]) for i in range(6) for j in range(7)) / (6 * 7)
  assert metrics.unbiased_mmd2(x, y) == pytest.approx(within_x + within_y - 2 * across, rel=1e-12)


def test_kid_is_unbiased_for_samples_of_one_distribution():
  rng = np.random.default_rng(5)
  # Independent pairs: the unbiased estimate averages to 0, the biased V-statistic does not.
  pairs = [(_correlated(rng, 40, 8), _correlated(rng, 40, 8)) for _ in range(400)]
  unbiased = np.array([metrics.unbiased_mmd2(x, y) for x, y in pairs])
  biased = np.array([metrics._polynomial_kernel(x, x).mean() + metrics._polynomial_kernel(y, y).mean()
                     - 2 * metrics._polynomial_kernel(x, y).mean() for x, y in pairs])
  standard_error = unbiased.std() / np.sqrt(len(pairs))
  assert abs(unbiased.mean()) < 3 * standard_error
  assert biased.mean() > 10 * standard_error
  # Subsets of two large samples of one distribution: the mean over subsets is ~0 ...
  a, b = _correlated(rng, 3000, 8), _correlated(rng, 3000, 8)
  same_mean, same_std = metrics.kid(a, b, subset_size=100, num_subsets=400, seed=0)
  assert abs(same_mean) < 4 * same_std / np.sqrt(400)
  # ... while a shifted distribution is far from 0, and the seed fixes the subsets.
  shifted_mean, _ = metrics.kid(a, b + 0.3, subset_size=100, num_subsets=400, seed=0)
  assert shifted_mean > 50 * same_std / np.sqrt(400)
  assert metrics.kid(a, b, subset_size=100, num_subsets=5, seed=1) == metrics.kid(a, b, subset_size=100,
                                                                                     num_subsets=5, seed=1)


def test_inception_score_of_uniform_predictions_is_one():
  mean, std = metrics.inception_score(np.full((100, 7), 1 / 7), splits=10)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_evenly_spread_one_hot_predictions_is_the_class_count():
  classes, splits = 13, 4
  probs = np.eye(classes)[np.tile(np.arange(classes), 3 * splits)]  # Each split holds each class 3 times.
  mean, std = metrics.inception_score(probs, splits=splits)
  assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_equals_an_entropy_reference():
  probs = metrics.softmax(np.random.default_rng(6).normal(size=(60, 5)) * 2)
  scores = [np.exp(np.mean([scipy.stats.entropy(p, part.mean(axis=0)) for p in part]))
            for part in np.split(probs, 3)]
  mean, std = metrics.inception_score(probs, splits=3)
  assert mean == pytest.approx(np.mean(scores), rel=1e-12) and std == pytest.approx(np.std(scores), rel=1e-9)


def test_precision_and_recall_of_a_set_with_itself_are_one():
  features = _correlated(np.random.default_rng(7), 300, 16)
  assert metrics.precision_recall(features, features, k=3, block_size=128) == (1.0, 1.0)


def _brute_force_precision_recall(real, fake, k):
  def coverage(query, centers):
    radii = np.sort(scipy.spatial.distance.cdist(centers, centers), axis=1)[:, k]
    return np.mean(np.any(scipy.spatial.distance.cdist(query, centers) <= radii[None, :], axis=1))
  return coverage(fake, real), coverage(real, fake)


def test_precision_and_recall_equal_a_float64_brute_force():
  rng = np.random.default_rng(8)
  real, fake = _correlated(rng, 257, 10), _correlated(rng, 190, 10, shift=0.4) * 0.7
  ours = metrics.precision_recall(real, fake, k=3, block_size=64)
  expected = _brute_force_precision_recall(real, fake, 3)
  assert ours == pytest.approx(expected, abs=1e-12)
  assert 0 < ours[1] < ours[0] < 1  # A case that tells precision and recall apart.
  far = fake + 100.0
  assert metrics.precision_recall(real, far, k=3) == (0.0, 0.0)
