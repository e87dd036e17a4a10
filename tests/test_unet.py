"""The UNet and its layers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax.models import layers
from genimg_jax.models.unet import UNet


def _tiny_unet(out_ch):
  return UNet(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
              out_ch=out_ch, num_heads=2, norm_groups=4)


@pytest.mark.parametrize("size,channels", [(8, 1), (16, 3), (32, 3), (12, 2)])
def test_output_shape_equals_input_shape(size, channels):
  model = _tiny_unet(channels)
  x = jnp.ones((2, size, size, channels))
  t = jnp.array([0, 999])
  params = model.init({"params": jax.random.PRNGKey(0)}, x, t, train=False)
  y = model.apply(params, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  chex.assert_shape(y, x.shape)
  chex.assert_type(y, jnp.float32)
  chex.assert_tree_all_finite(y)


def test_cifar10_ddpm_parameter_count():
  """Ho et al. (2020) report 35.7M parameters for the CIFAR-10 model."""
  model = UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
               out_ch=3)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 32, 32, 3)),
                                             jnp.zeros((1,), jnp.int32), train=False))
  count = sum(x.size for x in jax.tree.leaves(shapes))
  assert abs(count - 35.7e6) <= 0.2e6, count


def test_timestep_embedding_matches_numpy():
  t = np.array([0.0, 1.0, 17.0, 999.0])
  dim = 8
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 3)
  expected = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
  np.testing.assert_allclose(layers.timestep_embedding(jnp.asarray(t), dim), expected, rtol=1e-5, atol=2e-4)


def test_bfloat16_compute_keeps_float32_params():
  model = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, out_ch=1,
               norm_groups=4, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  t = jnp.array([3, 50])
  variables = model.init({"params": jax.random.PRNGKey(0)}, x, t, train=False)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  y16 = model.apply(variables, x, t, train=False)
  y32 = model.clone(dtype=jnp.float32).apply(variables, x, t, train=False)
  chex.assert_type(y16, jnp.float32)
  # Zero-initialised output conv: perturb it so the comparison is not trivially 0 == 0.
  variables = jax.tree.map(lambda a: a + 0.05, variables)
  y16 = model.apply(variables, x, t, train=False)
  y32 = model.clone(dtype=jnp.float32).apply(variables, x, t, train=False)
  np.testing.assert_allclose(y16, y32, rtol=0.1, atol=0.1 * float(jnp.abs(y32).max()))


def test_split_times_refuses_a_noise_label_of_the_wrong_shape():
  assert [a.shape for a in layers.split_times(jnp.zeros((3, 2)), 2)] == [(3,), (3,)]
  with pytest.raises(ValueError, match=r"takes one time per image, \[B\]; got shape \(3, 2\)"):
    layers.split_times(jnp.zeros((3, 2)), 1)
  with pytest.raises(ValueError, match=r"takes 2 times per image, \[B, 2\]; got \(3,\)"):
    layers.split_times(jnp.zeros((3,)), 2)
