"""Building blocks of the GAN models: spectral norm, generator batch norm, the projection head,
the 4x4 stride-2 transposed convolution.

NHWC; parameters float32, compute in `dtype`. Non-trainable variables live in two
collections: `batch_stats` (batch-norm running averages) and `spectral`
(spectral-norm power-iteration vectors `u` and the last estimate `sigma`).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
SPECTRAL = "spectral"  # the collection of the spectral-norm power-iteration state


def maybe_spectral(layer: nn.Module, enabled: bool, update: bool):
  """`layer`, or `layer` with its kernel divided by its top singular value (Miyato et al. 2018).

  The singular value comes from one power iteration per call, started from the
  stored vector u; update=True stores the new u and sigma (train-time forward
  passes), update=False leaves them as they are. Kernels are treated as matrices
  [prod(kernel.shape[:-1]), out_features]; biases are left alone.
  """
  if not enabled:
    return layer
  return functools.partial(nn.SpectralNorm(layer, collection_name=SPECTRAL), update_stats=update)


class GeneratorNorm(nn.Module):
  """The generator's normalisation of x [B, H, W, C] -> same shape.

  kind "batch": batch norm (batch statistics when train, running averages otherwise);
  with num_classes > 0 it is class-conditional batch norm (de Vries et al. 2017;
  Miyato & Koyama 2018): the gain and bias are looked up per label [B] int32.
  kind "none": the identity.
  """

  kind: str
  num_classes: int
  momentum: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, labels, *, train: bool):
    if self.kind == "none":
      return x
    conditional = self.num_classes > 0
    y = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, use_scale=not conditional,
                     use_bias=not conditional, dtype=self.dtype)(x)
    if not conditional:
      return y
    channels = x.shape[-1]
    gain = nn.Embed(self.num_classes, channels, embedding_init=nn.initializers.ones, name="class_gain")(labels)
    bias = nn.Embed(self.num_classes, channels, embedding_init=nn.initializers.zeros, name="class_bias")(labels)
    return y * gain[:, None, None, :].astype(y.dtype) + bias[:, None, None, :].astype(y.dtype)


class ProjectionHead(nn.Module):
  """Features h [B, F] -> logits [B] float32: a linear layer, plus with num_classes > 0 the
  projection term <embed(label), h> (Miyato & Koyama 2018)."""

  num_classes: int
  spectral: bool
  kernel_init: Any = nn.initializers.xavier_uniform()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, labels, *, update: bool):
    logits = maybe_spectral(nn.Dense(1, kernel_init=self.kernel_init, dtype=self.dtype, name="linear"),
                            self.spectral, update)(h)[:, 0]
    if self.num_classes:
      embed = nn.Embed(self.num_classes, h.shape[-1], embedding_init=self.kernel_init, name="class_embed")
      logits = logits + jnp.sum(maybe_spectral(embed, self.spectral, update)(labels) * h, axis=-1)
    return logits.astype(jnp.float32)


def upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling: [B, H, W, C] -> [B, 2H, 2W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2: [B, H, W, C] -> [B, H/2, W/2, C]."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


# _PHASE_TAPS[p, t, k] = 1: output phase p (even/odd position 2i + p) takes kernel row k at
# input position i - 1 + t. A 4x4 stride-2 "SAME" transposed convolution reads inputs i - 1
# and i with kernel rows 0 and 2 at even outputs, inputs i and i + 1 with rows 1 and 3 at odd ones.
_PHASE_TAPS = np.zeros((2, 3, 4), np.float32)
_PHASE_TAPS[0, 0, 0] = _PHASE_TAPS[0, 1, 2] = _PHASE_TAPS[1, 1, 1] = _PHASE_TAPS[1, 2, 3] = 1.0
_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_transpose(x, kernel):
  return jax.lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=_NHWC)


def _conv_transpose_by_phases(x, kernel):
  """The same function as one stride-1 3x3 convolution with a group of outputs per phase, then depth-to-space."""
  in_channels, features = kernel.shape[2:]
  phases = jnp.einsum("pak,qbl,klio->abipqo", _PHASE_TAPS, _PHASE_TAPS, kernel).astype(kernel.dtype)
  y = jax.lax.conv_general_dilated(x, phases.reshape(3, 3, in_channels, 4 * features), (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=_NHWC)
  b, h, w, _ = y.shape
  return y.reshape(b, h, w, 2, 2, features).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, features)


@jax.custom_vjp
def conv_transpose_4x4_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [B, H, W, C], kernel [4, 4, C, F] -> [B, 2H, 2W, F]: lax.conv_transpose with strides 2 and "SAME" padding.

  The kernel's gradient is taken through the equivalent 3x3 convolution by phases: XLA
  lowers a transposed convolution's kernel gradient to a dilated convolution, which
  XLA:CPU runs on a slow generic path (28 of 44 ms of a DCGAN step), while the forward
  pass and the input's gradient are fast as they are.
  """
  return _conv_transpose(x, kernel)


def _conv_transpose_forward(x, kernel):
  return _conv_transpose(x, kernel), (x, kernel)


def _conv_transpose_backward(residuals, d_out):
  x, kernel = residuals
  d_x = jax.vjp(lambda x: _conv_transpose(x, kernel), x)[1](d_out)[0]
  d_kernel = jax.vjp(lambda k: _conv_transpose_by_phases(x, k), kernel)[1](d_out)[0]
  return d_x, d_kernel


conv_transpose_4x4_stride2.defvjp(_conv_transpose_forward, _conv_transpose_backward)


class ConvTranspose4x4Stride2(nn.Module):
  """nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME"): [B, H, W, C] -> [B, 2H, 2W, features].

  The same parameters (kernel [4, 4, C, features], bias [features]) and function,
  through `conv_transpose_4x4_stride2`.
  """

  features: int
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features), jnp.float32)
    y = conv_transpose_4x4_stride2(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y
