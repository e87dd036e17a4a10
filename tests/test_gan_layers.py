"""The 4x4 stride-2 transposed convolution computed as a 3x3 convolution plus depth-to-space."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax.models.gan_layers import ConvTranspose4x4Stride2


@pytest.mark.parametrize("size,in_channels,features", [(4, 8, 6), (7, 5, 3), (1, 4, 2)])
def test_equals_flax_conv_transpose_in_values_and_gradients(size, in_channels, features):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, size, size, in_channels)), jnp.float32)
  ours = ConvTranspose4x4Stride2(features, kernel_init=nn.initializers.normal(1.0))
  reference = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")
  params = ours.init(jax.random.PRNGKey(0), x)
  params = jax.tree.map(lambda p: p + 0.5, params)  # a non-zero bias as well
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference.init(jax.random.PRNGKey(0), x))
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal((2, 2 * size, 2 * size, features)), jnp.float32)

  def loss(module):
    return jax.value_and_grad(lambda p, x: jnp.sum(module.apply(p, x) * cotangent), argnums=(0, 1))

  assert ours.apply(params, x).shape == (2, 2 * size, 2 * size, features)
  for a, b in zip(jax.tree.leaves(loss(ours)(params, x)), jax.tree.leaves(loss(reference)(params, x))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_bfloat16_compute_keeps_float32_parameters():
  x = jnp.ones((1, 4, 4, 3), jnp.float32)
  module = ConvTranspose4x4Stride2(2, use_bias=False, dtype=jnp.bfloat16)
  params = module.init(jax.random.PRNGKey(0), x)
  assert [p.dtype for p in jax.tree.leaves(params)] == [jnp.float32]
  assert module.apply(params, x).dtype == jnp.bfloat16
