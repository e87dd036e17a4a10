"""VAE method: negative ELBO with the reparameterization trick, ELBO and IWAE bits/dim, prior samples.

The decoder parameterises a likelihood over 8-bit pixels (`losses/likelihoods.py`),
so the ELBO and the importance-weighted bound are bounds on the log-likelihood of
the 8-bit data and bits/dim compare with other likelihood models. With the
Bernoulli likelihood the images are binarised first (a pixel is 255 if its value is
above 127.5, i.e. x > 0, else 0) and bits/dim are of the binarised data.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from genimg_jax.config import require
from genimg_jax.losses import elbo as elbo_lib
from genimg_jax.losses import likelihoods
from genimg_jax.methods.base import (Method, compute_dtype, gradient_step, initial_state, make_optimizer,
                                     optimizer_config)
from genimg_jax.models.vae import LATENT_TYPES, VAE, latent_shape

SAMPLE_MODES = ("mean", "sample")


def default_config() -> ml_collections.ConfigDict:
  """The sections the VAE method reads, with defaults."""
  return ml_collections.ConfigDict({
      "model": {
          "ch": 64, "ch_mult": (1, 2, 2), "num_res_blocks": 1, "norm_groups": 8,
          "latent_type": "vector",  # vector: [latent_dim]; spatial: [H/f, W/f, latent_dim]
          "latent_dim": 32,
          "dtype": "float32",  # compute dtype; parameters stay float32
      },
      # name: bernoulli | logistic | logistic_mixture | categorical | your own constructor as 'module:function';
      # then the fields the likelihoods own (logistic_mixture: num_mixtures).
      "likelihood": {"name": "logistic_mixture", **likelihoods.LIKELIHOODS.config_fields()},
      "kl": {
          "beta": 1.0,  # weight of the KL term in training (eval always uses the true ELBO)
          "warmup_steps": 0,  # the weight rises linearly from 0 to beta over these steps
          "free_bits": 0.0,  # nats per latent dimension (batch-averaged) not penalised; 0: off
      },
      "optimizer": optimizer_config(),
      "ema": {"decay": 0.999},
      "sample": {"mode": "mean"},  # decode to the likelihood's mean, or to a draw of it
      "eval": {
          "iwae_samples": 1000,  # K of the importance-weighted bound
          "iwae_chunk_size": 50,  # samples decoded at once (memory ~ chunk * batch); divides K
      },
      "grids": {"interpolation_steps": 8},  # the interpolation grid is steps x steps images
  })


def _validate(config) -> None:
  m, kl, ev = config.model, config.kl, config.eval
  require(m.ch > 0, "model.ch", "must be > 0")
  require(len(m.ch_mult) > 0 and all(k > 0 for k in m.ch_mult), "model.ch_mult",
          "must be a non-empty tuple of positive ints")
  require(m.num_res_blocks > 0, "model.num_res_blocks", "must be > 0")
  require(m.norm_groups > 0 and all((m.ch * k) % m.norm_groups == 0 for k in m.ch_mult), "model.norm_groups",
          f"must divide every level's width (ch * ch_mult = {[m.ch * k for k in m.ch_mult]})")
  require(m.latent_type in LATENT_TYPES, "model.latent_type", f"must be one of {LATENT_TYPES}")
  require(m.latent_dim > 0, "model.latent_dim", "must be > 0")
  compute_dtype(m.dtype)
  down = 2 ** (len(m.ch_mult) - 1)
  require(config.data.image_size % down == 0, "data.image_size",
          f"{config.data.image_size} is not divisible by the encoder's downsampling factor {down}")
  require(kl.beta >= 0, "kl.beta", "must be >= 0")
  require(kl.warmup_steps >= 0, "kl.warmup_steps", "must be >= 0")
  require(kl.free_bits >= 0, "kl.free_bits", "must be >= 0")
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")
  require(config.sample.mode in SAMPLE_MODES, "sample.mode", f"must be one of {SAMPLE_MODES}")
  require(ev.iwae_samples > 0, "eval.iwae_samples", "must be > 0")
  require(ev.iwae_chunk_size > 0 and ev.iwae_samples % ev.iwae_chunk_size == 0, "eval.iwae_chunk_size",
          f"must be > 0 and divide eval.iwae_samples={ev.iwae_samples}")
  require(config.grids.interpolation_steps >= 2, "grids.interpolation_steps", "must be >= 2")


@dataclasses.dataclass(frozen=True)
class VAEParts:
  """The model and likelihood a VAE method is built from, as pure functions of params.

  image_shape: (H, W, C); latent_shape: one example's latent shape.
  """

  model: VAE
  likelihood: likelihoods.Likelihood
  image_shape: tuple[int, int, int]
  latent_shape: tuple[int, ...]
  sample_mode: str

  @property
  def num_dims(self) -> int:
    return math.prod(self.image_shape)

  def targets(self, images: jax.Array) -> jax.Array:
    """The images the likelihood models: binarised at x > 0 for Bernoulli, else unchanged."""
    return jnp.where(images > 0, 1.0, -1.0) if self.likelihood.binary else images

  def encode(self, params, x: jax.Array):
    """x [B, H, W, C] -> (mean, log_var) of q(z|x), each [B, *latent_shape] float32."""
    return self.model.apply({"params": params}, x, method=VAE.encode)

  def decode(self, params, z: jax.Array) -> jax.Array:
    """z [N, *latent_shape] -> likelihood parameters [N, H, W, num_params] float32."""
    return self.model.apply({"params": params}, z, method=VAE.decode)

  def log_likelihood_fn(self, params, x: jax.Array):
    """z [s * B, ...] -> log p(x|z) [s * B] in nats, x [B, H, W, C] repeated s times (sample-major)."""

    def log_likelihood(z):
      repeated = jnp.tile(x, (z.shape[0] // x.shape[0], 1, 1, 1))
      log_p = self.likelihood.log_prob(self.decode(params, z), repeated)
      return log_p.reshape(z.shape[0], -1).sum(-1)

    return log_likelihood

  def to_images(self, likelihood_params: jax.Array, rng: jax.Array) -> jax.Array:
    """Likelihood parameters -> images [N, H, W, C] in [-1, 1]: its mean or one draw (sample_mode)."""
    if self.sample_mode == "mean":
      return self.likelihood.mean(likelihood_params)
    return self.likelihood.sample(likelihood_params, rng)


def build(config: ml_collections.ConfigDict) -> VAEParts:
  """The VAEParts of a config (validated on the way)."""
  _validate(config)
  m = config.model
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  likelihood = likelihoods.make(channels=image_shape[-1], **config.likelihood)
  model = VAE(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks, norm_groups=m.norm_groups,
              latent_type=m.latent_type, latent_dim=m.latent_dim, image_size=image_shape[:2],
              out_ch=likelihood.num_params, dtype=compute_dtype(m.dtype))
  return VAEParts(model=model, likelihood=likelihood, image_shape=image_shape,
                  latent_shape=latent_shape(m.latent_type, m.latent_dim, image_shape[:2], m.ch_mult),
                  sample_mode=config.sample.mode)


def _reconstruction_grid(parts: VAEParts, params, x: jax.Array, rng: jax.Array) -> jax.Array:
  """2m^2 images and their reconstructions (decoded posterior means) in alternating rows of 2m.

  m = floor(sqrt(B / 2)), at least 1 (images repeat if B < 2). Returns [4m^2, H, W, C].
  """
  m = max(1, math.isqrt(x.shape[0] // 2))
  originals = x[jnp.arange(2 * m * m) % x.shape[0]]
  mean, _ = parts.encode(params, originals)
  reconstructions = parts.to_images(parts.decode(params, mean), rng)
  rows = jnp.stack([originals.reshape((m, 2 * m) + x.shape[1:]),
                    reconstructions.reshape((m, 2 * m) + x.shape[1:])], axis=1)
  return rows.reshape((4 * m * m,) + x.shape[1:])


def _interpolation_grid(parts: VAEParts, params, x: jax.Array, rng: jax.Array, steps: int) -> jax.Array:
  """`steps` rows, each decoding `steps` evenly spaced points on the line between the posterior
  means of images 2i and 2i + 1 (indices modulo B). Returns [steps^2, H, W, C]."""
  pairs = jnp.arange(2 * steps) % x.shape[0]
  mean, _ = parts.encode(params, x[pairs])
  start, end = mean[0::2], mean[1::2]  # [steps, *latent]
  t = jnp.linspace(0.0, 1.0, steps).reshape((1, steps) + (1,) * len(parts.latent_shape))
  z = (1.0 - t) * start[:, None] + t * end[:, None]  # [steps (rows), steps (columns), *latent]
  return parts.to_images(parts.decode(params, z.reshape((steps * steps,) + parts.latent_shape)), rng)


def make(config: ml_collections.ConfigDict) -> Method:
  """Builds the VAE method's pure functions from a validated config."""
  parts = build(config)
  tx, learning_rate = make_optimizer(config.optimizer)
  kl_cfg, eval_cfg = config.kl, config.eval
  ema_decay = config.ema.decay
  interpolation_steps = config.grids.interpolation_steps
  to_bpd = lambda nats: likelihoods.bits_per_dim(nats, parts.num_dims)

  def init(rng):
    x = jnp.zeros((1,) + parts.image_shape, jnp.float32)
    noise = jnp.zeros((1,) + parts.latent_shape, jnp.float32)
    params = parts.model.init({"params": rng}, x, noise)["params"]
    return initial_state(params, tx)

  def loss_fn(params, x, rng, step):
    """Training objective in nats per dimension: (-log p(x|z) + beta * KL) / (H W C)."""
    mean, log_var = parts.encode(params, x)
    noise = jax.random.normal(rng, mean.shape)
    elbo, log_likelihood, kl = elbo_lib.single_sample_elbo(
        parts.log_likelihood_fn(params, x), mean, log_var, noise)
    beta = elbo_lib.kl_weight(step, kl_cfg.beta, kl_cfg.warmup_steps)
    kl_term = elbo_lib.free_bits_kl(kl, kl_cfg.free_bits)
    loss = (-jnp.mean(log_likelihood) + beta * kl_term) / parts.num_dims
    return loss, {"elbo_bpd": to_bpd(-jnp.mean(elbo)), "recon_bpd": to_bpd(-jnp.mean(log_likelihood)),
                  "kl_nats": jnp.sum(kl) / x.shape[0], "kl_weight": beta}

  def train_step(state, batch, rng):
    x = parts.targets(batch["image"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, x, rng, state.step)
    return gradient_step(state, grads, dict(metrics, loss=loss), tx, learning_rate, ema_decay)

  def eval_step(params, batch, rng):
    """The ELBO (analytic KL, one sample) and the IWAE bound, in nats per image and bits/dim."""
    x = parts.targets(batch["image"])
    elbo_rng, iwae_rng = jax.random.split(rng)
    mean, log_var = parts.encode(params, x)
    log_likelihood_fn = parts.log_likelihood_fn(params, x)
    elbo, log_likelihood, kl = elbo_lib.single_sample_elbo(
        log_likelihood_fn, mean, log_var, jax.random.normal(elbo_rng, mean.shape))
    iwae = elbo_lib.importance_weighted_bound(log_likelihood_fn, mean, log_var, iwae_rng,
                                              eval_cfg.iwae_samples, eval_cfg.iwae_chunk_size)
    return {"neg_elbo_nats": -jnp.mean(elbo), "elbo_bpd": to_bpd(-jnp.mean(elbo)),
            "recon_nats": -jnp.mean(log_likelihood), "kl_nats": jnp.sum(kl) / x.shape[0],
            "iwae_nll_nats": -jnp.mean(iwae), "iwae_bpd": to_bpd(-jnp.mean(iwae))}

  def sample(params, rng, num, labels=None):
    del labels  # Unconditional.
    latent_rng, pixel_rng = jax.random.split(rng)
    z = jax.random.normal(latent_rng, (num,) + parts.latent_shape)
    return parts.to_images(parts.decode(params, z), pixel_rng)

  def image_grids(params, batch, rng):
    x = parts.targets(batch["image"])
    recon_rng, interp_rng = jax.random.split(rng)
    return {"reconstructions": _reconstruction_grid(parts, params, x, recon_rng),
            "interpolations": _interpolation_grid(parts, params, x, interp_rng, interpolation_steps)}

  return Method(init=init, train_step=train_step, sample=sample, eval_step=eval_step,
                image_shape=parts.image_shape, image_grids=image_grids)
