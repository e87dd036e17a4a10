"""Sample-quality metrics as pure functions of feature arrays.

FID, KID and the Inception Score work in float64 NumPy/SciPy; precision and
recall compare pairwise distances on the device in float32 (as the reference
implementation does), in blocks so that 50k x 50k distances fit in memory.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) of features [N, D], float64, covariance with N - 1 (as pytorch-fid)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"need features [N >= 2, D], got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, max_imaginary: float = 1e-3) -> float:
  """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), in float64.

  The square root is SciPy's Schur-based sqrtm, as pytorch-fid computes it. When
  the product is singular and the root is not finite, eps * I is added to both
  covariances. Round-off can leave a small imaginary part; a diagonal imaginary
  part larger than `max_imaginary` means the covariances are not valid (for
  example from too few samples) and raises ValueError.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
  with warnings.catch_warnings():  # A singular product is expected with fewer samples than dimensions.
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    imaginary = np.max(np.abs(np.diagonal(covmean).imag))
    if imaginary > max_imaginary:
      raise ValueError(f"the matrix square root has an imaginary part of {imaginary:.3g} on its diagonal "
                       "(covariances not positive semi-definite: too few samples for the feature size?)")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to features [N_a, D] and [N_b, D]."""
  return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """(x . y / D + 1)^3 for all pairs: [m, D], [n, D] -> [m, n] float64."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """The unbiased estimate of MMD^2 with the cubic polynomial kernel; x [m, D], y [n, D], m, n >= 2.

  Within-set sums leave out the diagonal (i == j), so its expectation is the
  population MMD^2, which is 0 when x and y come from one distribution.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, n = x.shape[0], y.shape[0]
  kxx, kyy = _polynomial_kernel(x, x), _polynomial_kernel(y, y)
  within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
  within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
  return float(within_x + within_y - 2.0 * _polynomial_kernel(x, y).mean())


def kid(features_a: np.ndarray, features_b: np.ndarray, *, subset_size: int = 1000, num_subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance (Binkowski et al. 2018): (mean, std) of unbiased MMD^2 over subsets.

  Each of `num_subsets` draws takes min(subset_size, N_a, N_b) rows of each set
  without replacement, from np.random.default_rng(seed). Features [N, D].
  """
  features_a, features_b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  m = min(subset_size, features_a.shape[0], features_b.shape[0])
  if m < 2:
    raise ValueError(f"KID needs at least 2 features per set, got {features_a.shape[0]} and {features_b.shape[0]}")
  rng = np.random.default_rng(seed)
  values = [unbiased_mmd2(features_a[rng.choice(features_a.shape[0], m, replace=False)],
                          features_b[rng.choice(features_b.shape[0], m, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))


def softmax(logits: np.ndarray) -> np.ndarray:
  """Class probabilities [N, C] float64 from logits [N, C]."""
  return scipy.special.softmax(np.asarray(logits, np.float64), axis=-1)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """Inception Score (Salimans et al. 2016): (mean, std) over `splits` consecutive chunks.

  probs: [N, C] class probabilities p(y|x). Per chunk: exp(mean_x KL(p(y|x) || p(y)))
  with p(y) the chunk's mean; 0 log 0 counts as 0. Computed in float64.
  """
  probs = np.asarray(probs, np.float64)
  if probs.shape[0] < splits:
    raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples, got {probs.shape[0]}")
  scores = []
  for part in np.array_split(probs, splits):
    marginal = part.mean(axis=0, keepdims=True)
    kl = scipy.special.xlogy(part, part) - scipy.special.xlogy(part, marginal)
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


@jax.jit
def _squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """[m, D], [n, D] -> [m, n] float32 squared Euclidean distances, clipped at 0."""
  highest = jax.lax.Precision.HIGHEST
  sq = (jnp.sum(x * x, axis=1)[:, None] + jnp.sum(y * y, axis=1)[None, :]
        - 2.0 * jnp.matmul(x, y.T, precision=highest))
  return jnp.maximum(sq, 0.0)


@functools.partial(jax.jit, static_argnums=2)
def _kth_smallest(x: jax.Array, y: jax.Array, k: int) -> jax.Array:
  """For each row of x, the k-th smallest squared distance to the rows of y (k = 1: nearest)."""
  return -jax.lax.top_k(-_squared_distances(x, y), k)[0][:, -1]


@jax.jit
def _covered(query: jax.Array, centers: jax.Array, radii_sq: jax.Array) -> jax.Array:
  """[m] bool: whether each query lies in at least one ball (center [n, D], squared radius [n])."""
  return jnp.any(_squared_distances(query, centers) <= radii_sq[None, :], axis=1)


def _blocks(x: np.ndarray, block_size: int):
  return (x[i:i + block_size] for i in range(0, x.shape[0], block_size))


def knn_radii_squared(features: np.ndarray, k: int, block_size: int = 1024) -> np.ndarray:
  """[N] squared distance of each row of features [N, D] to its k-th nearest other row."""
  features = jnp.asarray(features, jnp.float32)
  return np.concatenate([np.asarray(_kth_smallest(block, features, k + 1))  # +1: the row itself.
                         for block in _blocks(features, block_size)])


def manifold_coverage(query: np.ndarray, centers: np.ndarray, k: int, block_size: int = 1024) -> float:
  """Share of query rows [M, D] inside the k-NN manifold of centers [N, D] (balls to each k-th neighbour)."""
  centers = jnp.asarray(centers, jnp.float32)
  radii = jnp.asarray(knn_radii_squared(centers, k, block_size))
  covered = [np.asarray(_covered(block, centers, radii)) for block in _blocks(jnp.asarray(query, jnp.float32),
                                                                               block_size)]
  return float(np.mean(np.concatenate(covered)))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, block_size: int = 1024) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) of features real [N, D] and fake [M, D].

  precision: share of fake rows inside the real manifold; recall: share of real
  rows inside the fake manifold; a manifold is the union of balls reaching each
  point's k-th nearest neighbour in its own set.
  """
  if min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(f"precision/recall with k={k} needs more than {k} features per set, "
                     f"got {real.shape[0]} and {fake.shape[0]}")
  return (manifold_coverage(fake, real, k, block_size), manifold_coverage(real, fake, k, block_size))
