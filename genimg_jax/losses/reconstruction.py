"""Reconstruction losses and metrics of an autoencoder, and LDM's adaptive adversarial weight.

Images are float32 [B, H, W, C] in [-1, 1] (data range 2). Per-image values are [B] float32.
"""

import jax
import jax.numpy as jnp
import optax

from genimg_jax.losses import gaussian

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
DATA_RANGE = 2.0  # Of [-1, 1] images.
# The smallest mean squared error PSNR sees ([0, 1] scale): identical images score 100 dB, not inf.
PSNR_MIN_MSE = 1e-10


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute difference per image: [B, H, W, C] x2 -> [B]."""
  return jnp.mean(jnp.abs(x - y).reshape(x.shape[0], -1), axis=-1)


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image, of the images scaled to [0, 1]: -10 log10(MSE).

  x, y: [B, H, W, C] in [-1, 1] -> [B]; MSE is floored at PSNR_MIN_MSE.
  """
  mse = jnp.mean(jnp.square((x - y) / DATA_RANGE).reshape(x.shape[0], -1), axis=-1)
  return -10.0 * jnp.log10(jnp.maximum(mse, PSNR_MIN_MSE))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> jax.Array:
  """The normalised 2-D Gaussian window [size, size] float32 (outer product of 1-D ones)."""
  offsets = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  g = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  g = g / jnp.sum(g)
  return jnp.outer(g, g)


def _local_mean(x: jax.Array, window: jax.Array) -> jax.Array:
  """Each channel filtered by `window` over the valid positions: [B, H, W, C] -> [B, H-k+1, W-k+1, C]."""
  channels = x.shape[-1]
  kernel = jnp.tile(window[:, :, None, None], (1, 1, 1, channels))  # HWIO, one filter per channel.
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=channels, precision=jax.lax.Precision.HIGHEST)


def ssim(x: jax.Array, y: jax.Array, data_range: float = DATA_RANGE) -> jax.Array:
  """Structural similarity (Wang et al. 2004) per image: [B, H, W, C] x2 -> [B] float32.

  An 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population (co)variances, the SSIM map
  over the positions where the window fits (H, W >= 11), averaged over positions and channels. For
  [-1, 1] images data_range is 2 (the same value as [0, 1] images with range 1).
  """
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  if min(x.shape[1:3]) < SSIM_WINDOW:
    raise ValueError(f"SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window needs images of at least that size, "
                     f"got {x.shape[1:3]}")
  window = gaussian_window()
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  mu_x, mu_y = _local_mean(x, window), _local_mean(y, window)
  var_x = _local_mean(x * x, window) - mu_x * mu_x
  var_y = _local_mean(y * y, window) - mu_y * mu_y
  cov = _local_mean(x * y, window) - mu_x * mu_y
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
  return jnp.mean(ssim_map.reshape(x.shape[0], -1), axis=-1)


def kl_per_image(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mean, e^log_var) || N(0, I)) summed over each image's latent: [B, ...] x2 -> [B] nats."""
  return jnp.sum(gaussian.kl(mean, log_var).reshape(mean.shape[0], -1), axis=-1)


def adaptive_weight(rec_grad: jax.Array, adv_grad: jax.Array, max_weight: float = 1e4,
                    eps: float = 1e-4) -> jax.Array:
  """LDM's weight of the generator's adversarial loss: ||rec_grad|| / (||adv_grad|| + eps) clipped to
  [0, max_weight], a constant for differentiation (float32 scalar).

  rec_grad, adv_grad: the gradients (any pytrees of one structure) of the reconstruction loss and of the
  adversarial loss with respect to the decoder's last layer, so the adversarial term pushes as hard as the
  reconstruction does there (Esser et al. 2021, eq. 7).
  """
  weight = optax.tree.norm(rec_grad) / (optax.tree.norm(adv_grad) + eps)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))
