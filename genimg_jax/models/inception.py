"""InceptionV3 as the FID network: pytorch-fid's port of the 2015-12-05 TensorFlow graph.

The layer names follow torchvision / pytorch-fid (`Mixed_5b/branch1x1/conv`, ...)
so that converted weights map one to one. The FID variant differs from
torchvision's InceptionV3 in its blocks: average pools that leave padding out of
the mean (Mixed_5b-d, 6b-e, 7b) and a max pool in the last block (Mixed_7c).
Convolutions and the classifier run at HIGHEST precision so that features do
not depend on a GPU's reduced-precision matmul modes.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
POOL_FEATURES = 2048
NUM_LOGITS = 1008
_PRECISION = jax.lax.Precision.HIGHEST


def _pair(value) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv(nn.Module):
  """Convolution without bias, batch norm (running statistics, eps 1e-3), ReLU.

  kernel, stride and padding are ints or (h, w) pairs; padding is symmetric zeros.
  """

  features: int
  kernel: int | Sequence[int]
  stride: int = 1
  padding: int | Sequence[int] = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel), strides=_pair(self.stride),
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=_PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average over the in-image pixels only (TensorFlow's padding rule)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((padding, padding), (padding, padding)))


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, 1, name="branch1x1")(x)
    b5 = BasicConv(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, 1, name="branch1x1")(x)
    b7 = BasicConv(c7, 1, name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """max_pool=False: FID's Mixed_7b (average pool); True: Mixed_7c (max pool)."""

  max_pool: bool

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, 1, name="branch1x1")(x)
    b3 = BasicConv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _max_pool_3x3(x, 1, padding=1) if self.max_pool else _avg_pool_3x3(x)
    bp = BasicConv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID InceptionV3.

  Input: float32 [N, 299, 299, 3] in [-1, 1] (see `preprocess`). Returns
  {'pool': [N, 2048] float32, the final average pool (FID's features),
   'logits': [N, 1008] float32, the classifier with its bias,
   'logits_unbiased': [N, 1008] float32, pool @ W without the bias (what the
   original Inception Score code takes the softmax of)}.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, 2)
    x = BasicConv(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_LOGITS, precision=_PRECISION, name="fc")
    logits = fc(pool)
    kernel = fc.variables["params"]["kernel"]
    return {"pool": pool, "logits": logits,
            "logits_unbiased": jnp.matmul(pool, kernel, precision=_PRECISION)}


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float64 weights of 1-D bilinear resampling, as PyTorch computes them.

  F.interpolate(mode='bilinear', align_corners=False, antialias=False): output i
  reads source position (i + 0.5) * in/out - 0.5 (in float32, as PyTorch does),
  clamped at 0, between its two neighbours (the upper one clamped at in_size - 1).
  No antialiasing filter, also when shrinking.
  """
  f32 = np.float32
  src = (np.arange(out_size, dtype=f32) + f32(0.5)) * (f32(in_size) / f32(out_size)) - f32(0.5)
  src = np.maximum(src, f32(0.0))
  low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = (src - low.astype(f32)).astype(np.float64)
  weights = np.zeros((out_size, in_size), np.float64)
  np.add.at(weights, (np.arange(out_size), low), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), high), frac)
  return weights


def resize_bilinear(images: jax.Array, size: int) -> jax.Array:
  """float [N, H, W, C] -> [N, size, size, C] by `bilinear_matrix` along H, then W."""
  rows = jnp.asarray(bilinear_matrix(images.shape[1], size), images.dtype)
  cols = jnp.asarray(bilinear_matrix(images.shape[2], size), images.dtype)
  out = jnp.einsum("oh,nhwc->nowc", rows, images, precision=_PRECISION)
  return jnp.einsum("pw,nowc->nopc", cols, out, precision=_PRECISION)


def preprocess(images_uint8: jax.Array) -> jax.Array:
  """pytorch-fid's input handling: uint8 [N, H, W, C] (C 1 or 3) -> float32 [N, 299, 299, 3] in [-1, 1].

  x / 255, bilinear resize to 299x299 without antialiasing, then 2x - 1; a gray
  image is repeated over the three channels.
  """
  x = images_uint8.astype(jnp.float32) / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return 2.0 * resize_bilinear(x, INPUT_SIZE) - 1.0
