"""The autoencoder family: its losses and metrics against float64 NumPy references, the encoder/decoder
shapes, LDM's adaptive adversarial weight against a direct computation, and a short training run."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import sklearn.datasets

from genimg_jax.config import base_config
from genimg_jax.errors import ConfigError
from genimg_jax.losses import reconstruction as rec
from genimg_jax.methods import autoencoder
from genimg_jax.models import autoencoder as model_lib


def small_config(**autoencoder_fields):
  config = base_config()
  config.method = "autoencoder"
  config.update(autoencoder.default_config())
  config.data.image_size, config.data.channels = 16, 1
  config.model.update(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4, z_channels=4)
  config.optimizer.learning_rate = 1e-3
  config.autoencoder.update(autoencoder_fields)
  return config


def digit_batch(n: int = 8) -> jax.Array:
  """n scikit-learn digits, 8x8 upsampled to 16x16, in [-1, 1]: [n, 16, 16, 1] float32."""
  images = sklearn.datasets.load_digits().images[:n] / 16.0
  images = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
  return jnp.asarray(images[..., None] * 2.0 - 1.0, jnp.float32)


# ---- Losses and metrics. ------------------------------------------------------------------------

def test_kl_per_image_matches_the_closed_form():
  rng = np.random.default_rng(0)
  mean, log_var = rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 4, 4, 2))
  expected = 0.5 * np.sum(mean**2 + np.exp(log_var) - 1.0 - log_var, axis=(1, 2, 3))
  got = rec.kl_per_image(jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32))
  chex.assert_shape(got, (3,))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert np.all(np.asarray(rec.kl_per_image(jnp.zeros((2, 3)), jnp.zeros((2, 3)))) == 0.0)


def numpy_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> np.ndarray:
  """Per-image SSIM in float64: scipy's Gaussian filter (sigma 1.5, radius 5 = an 11x11 window), the map
  cropped to where the window fits, averaged over positions and channels."""
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  blur = lambda a: scipy.ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]
  values = []
  for xi, yi in zip(x.astype(np.float64), y.astype(np.float64)):
    channel_means = []
    for c in range(xi.shape[-1]):
      a, b = xi[..., c], yi[..., c]
      mu_a, mu_b = blur(a), blur(b)
      var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
      s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
      channel_means.append(s.mean())
    values.append(np.mean(channel_means))
  return np.asarray(values)


def test_ssim_matches_a_float64_numpy_reference():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, size=(3, 20, 17, 3))
  y = np.clip(x + rng.normal(scale=[[[[0.05]]], [[[0.3]]], [[[1.0]]]], size=x.shape), -1, 1)
  got = rec.ssim(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  chex.assert_shape(got, (3,))
  expected = numpy_ssim(x, y)
  assert expected[0] > expected[1] > expected[2]  # More noise, less similar.
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_allclose(rec.ssim(jnp.asarray(x, jnp.float32), jnp.asarray(x, jnp.float32)), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="11x11 window"):
    rec.ssim(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)))


def test_gaussian_window_is_the_normalised_11x11_sigma_1_5_one():
  offsets = np.arange(11) - 5.0
  g = np.exp(-offsets**2 / (2 * 1.5**2))
  np.testing.assert_allclose(rec.gaussian_window(), np.outer(g, g) / np.outer(g, g).sum(), rtol=1e-5)


def test_psnr_and_l1_closed_forms():
  x = jnp.full((2, 4, 4, 1), -0.5)
  y = x + jnp.asarray([0.1, 0.4]).reshape(2, 1, 1, 1)  # [0, 1] scale differences 0.05 and 0.2
  np.testing.assert_allclose(rec.psnr(x, y), [-10 * np.log10(0.05**2), -10 * np.log10(0.2**2)], rtol=1e-5)
  np.testing.assert_allclose(rec.l1(x, y), [0.1, 0.4], rtol=1e-5)
  assert float(rec.psnr(x, x)[0]) == pytest.approx(100.0)  # Floored MSE, not inf.
  rng = np.random.default_rng(2)
  a, b = rng.uniform(-1, 1, (3, 5, 5, 3)), rng.uniform(-1, 1, (3, 5, 5, 3))
  mse = np.mean(((a - b) / 2) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(rec.psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)),
                             10 * np.log10(1 / mse), rtol=1e-5)


def test_adaptive_weight_is_the_clipped_norm_ratio():
  rec_grad = {"k": jnp.asarray([3.0, 4.0])}
  adv_grad = {"k": jnp.asarray([0.0, 0.5])}
  assert float(rec.adaptive_weight(rec_grad, adv_grad)) == pytest.approx(5.0 / (0.5 + 1e-4), rel=1e-6)
  assert float(rec.adaptive_weight(rec_grad, {"k": jnp.zeros(2)})) == pytest.approx(1e4)  # Clipped.
  grad = jax.grad(lambda s: rec.adaptive_weight({"k": s * rec_grad["k"]}, adv_grad))(1.0)
  assert float(grad) == 0.0  # A constant for differentiation.


# ---- The networks. ------------------------------------------------------------------------------

@pytest.mark.parametrize("ch_mult,factor", [((1, 2), 2), ((1, 2, 2), 4), ((1, 2, 2, 2), 8)])
def test_encoder_and_decoder_shapes(ch_mult, factor):
  config = small_config()
  config.model.ch_mult = ch_mult
  config.model.z_channels = 3
  config.data.channels = 3
  parts = autoencoder.build(config)
  assert parts.latent_shape == (16 // factor, 16 // factor, 3)
  state = jax.eval_shape(lambda: autoencoder.init(parts, jax.random.key(0)))
  x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  mean, log_var = jax.eval_shape(parts.encode, state.ema_params, x)
  chex.assert_shape([mean, log_var], (2, 16 // factor, 16 // factor, 3))
  assert mean.dtype == log_var.dtype == jnp.float32
  images = jax.eval_shape(parts.decode, state.ema_params, mean)
  assert images.shape == (2, 16, 16, 3) and images.dtype == jnp.float32
  assert model_lib.downsampling_factor(ch_mult) == factor


def test_config_errors_name_the_field():
  config = small_config()
  config.data.image_size = 8
  with pytest.raises(ConfigError, match=r"config\.data\.image_size: 8 is smaller than SSIM's 11x11 window"):
    autoencoder.build(config)
  config = small_config()
  config.data.image_size = 18
  with pytest.raises(ConfigError, match=r"config\.data\.image_size: 18 is not divisible by the encoder's "
                                        r"downsampling factor 4"):
    autoencoder.build(config)
  with pytest.raises(ConfigError, match=r"config\.autoencoder\.penalty"):
    autoencoder.build(small_config(disc_weight=0.5, penalty="r3"))


# ---- Training. ----------------------------------------------------------------------------------

def test_adversarial_step_uses_ldms_adaptive_weight():
  """The autoencoder's gradient is grad(rec + KL) + w grad(G), w = disc_weight ||grad_last rec|| /
  (||grad_last G|| + 1e-4) on the decoder's conv_out kernel, each gradient computed here on its own."""
  parts = autoencoder.build(small_config(disc_weight=0.5, disc_layers=2, disc_ch=8))
  state = autoencoder.init(parts, jax.random.key(0))
  x = digit_batch(4)
  noise = jax.random.normal(jax.random.key(1), (4,) + parts.latent_shape)
  loss, grads, _, metrics = jax.jit(lambda s: autoencoder._adversarial_gradients(parts, s, x, noise, 1.0))(state)

  main_loss, main_grads = jax.jit(jax.value_and_grad(lambda p: autoencoder._losses(parts, p, x, noise)[0]))(
      state.params["autoencoder"])

  def g_loss(p):
    recon = autoencoder._losses(parts, p, x, noise)[1][0]
    return -jnp.mean(parts.discriminate(state.params["discriminator"], recon))  # Hinge, generator side.

  adv_loss, adv_grads = jax.jit(jax.value_and_grad(g_loss))(state.params["autoencoder"])
  last = lambda g: np.asarray(g["decoder"]["conv_out"]["kernel"], np.float64)
  weight = 0.5 * np.linalg.norm(last(main_grads)) / (np.linalg.norm(last(adv_grads)) + 1e-4)
  assert float(metrics["adaptive_weight"]) == pytest.approx(weight, rel=1e-4)
  expected = jax.tree.map(lambda m, a: m + weight * a, main_grads, adv_grads)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)
  assert float(loss) == pytest.approx(float(main_loss + weight * adv_loss), rel=1e-4)


def test_discriminator_waits_for_disc_start():
  parts = autoencoder.build(small_config(disc_weight=0.5, disc_start=1, disc_layers=2, disc_ch=8, penalty="r1",
                                         penalty_weight=1.0))
  state = autoencoder.init(parts, jax.random.key(0))
  step = jax.jit(lambda s, b, k: autoencoder.train_step(parts, s, b, k))
  batch = {"image": digit_batch(4)}
  after_0, metrics_0 = step(state, batch, jax.random.key(1))
  unchanged = jax.tree.map(np.array_equal, state.params["discriminator"], after_0.params["discriminator"])
  assert all(jax.tree.leaves(unchanged))
  assert float(metrics_0["adaptive_weight"]) == 0.0 and float(metrics_0["disc_factor"]) == 0.0
  after_1, metrics_1 = step(after_0, batch, jax.random.key(2))
  changed = jax.tree.map(np.array_equal, after_0.params["discriminator"], after_1.params["discriminator"])
  assert not all(jax.tree.leaves(changed))
  assert float(metrics_1["adaptive_weight"]) > 0.0 and np.isfinite(float(metrics_1["loss"]))
  assert float(metrics_1["penalty"]) > 0.0


def test_a_short_run_learns_to_reconstruct():
  config = small_config()
  method = autoencoder.make(config)
  state = method.init(jax.random.key(0))
  batch = {"image": digit_batch(16)}
  step = jax.jit(method.train_step)
  losses = []
  for i in range(40):
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics["rec_loss"]))
  assert set(metrics) >= {"loss", "rec_loss", "l1", "ssim", "kl_nats", "psnr_db", "grad_norm", "learning_rate"}
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
  held = jax.jit(method.eval_step)(state.params["autoencoder"], batch, jax.random.key(0))
  assert set(held) == {"psnr_db", "ssim", "l1", "kl_nats"} and float(held["psnr_db"]) > 10.0
  recon, latents = jax.jit(method.reconstruct)(state.params["autoencoder"], batch["image"])
  chex.assert_shape(recon, (16, 16, 16, 1))
  chex.assert_shape(latents, (16, 4, 4, 4))
  assert float(jnp.max(jnp.abs(recon))) <= 1.0
  grids = jax.jit(method.image_grids)(state.ema_params, batch, jax.random.key(0))
  chex.assert_shape(grids["reconstructions"], (16, 16, 16, 1))  # m = 2: 8 originals, 8 reconstructions.
  np.testing.assert_array_equal(grids["reconstructions"][:4], batch["image"][:4])
  chex.assert_shape(jax.jit(method.sample, static_argnums=2)(state.ema_params, jax.random.key(0), 3), (3, 16, 16, 1))
