"""Diffusion method: the assembly of a registered process (`diffusion.process`: ddpm, edm, flow; see
genimg_jax/diffusion/) and a registered denoiser architecture (`model.arch`: unet, dit) into a `Method`:
its objective with EMA, the held-out metrics, and sampling by one of the process's samplers.

An architecture is a function build(config, image_shape, dtype) -> flax module applied as
module.apply(variables, x [B, H, W, C], noise_label [B], labels [B] int32 or None, train=...), which
checks its own config fields, registered with them: `@DENOISERS.register(name, fields={...})`. A process
whose network takes more than one time (`build.time_inputs = 2`: MeanFlow's (t, t - r), a shortcut model's
(t, d)) gets a network with noise_label [B, 2]; the method tells the architecture in config.model.time_inputs. With
model.num_classes > 0 the model is class-conditional: trained with label dropout (diffusion.label_dropout)
and sampled with classifier-free guidance (sample.guidance, inside sample.guidance_interval), see
diffusion/guidance.py.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from genimg_jax.config import require
from genimg_jax.diffusion import (  # noqa: F401 (the process modules register their processes)
    consistency, ddpm, edm, flow, guidance, meanflow, shortcut)
from genimg_jax.diffusion.process import PROCESSES
from genimg_jax.diffusion.samplers import Sampler
from genimg_jax.methods.base import (Method, compute_dtype, default_labels, initial_state, loss_train_step,
                                     make_optimizer, optimizer_config)
from genimg_jax.models.dit import DiT
from genimg_jax.models.unet import UNet
from genimg_jax.registry import Registry

DENOISERS = Registry("model.arch", "denoiser architecture")


@DENOISERS.register("unet", fields={"ch": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 2,
                                      "attn_resolutions": (16,), "norm_groups": 32})
def unet(config: ml_collections.ConfigDict, image_shape, dtype) -> nn.Module:
  """The DDPM UNet (Ho et al. 2020): model.ch, ch_mult, num_res_blocks, attn_resolutions, dropout,
  num_heads, norm_groups."""
  m = config.model
  require(m.ch > 0, "model.ch", "must be > 0")
  require(len(m.ch_mult) > 0 and all(k > 0 for k in m.ch_mult), "model.ch_mult",
          "must be a non-empty tuple of positive ints")
  require(m.num_res_blocks > 0, "model.num_res_blocks", "must be > 0")
  require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
  require(all((m.ch * k) % m.norm_groups == 0 for k in m.ch_mult), "model.norm_groups",
          f"must divide every level's width (ch * ch_mult = {[m.ch * k for k in m.ch_mult]})")
  down = 2 ** (len(m.ch_mult) - 1)
  require(image_shape[0] % down == 0, "data.image_size",
          f"{image_shape[0]} is not divisible by the UNet's downsampling factor {down}")
  return UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, out_ch=image_shape[-1],
              num_heads=m.num_heads, norm_groups=m.norm_groups, num_classes=m.num_classes, time_inputs=m.time_inputs,
              dtype=dtype)


@DENOISERS.register("dit", fields={"patch_size": 2, "hidden_size": 384, "depth": 12,  # DiT-S/2's widths
                                     "mlp_ratio": 4.0})
def dit(config: ml_collections.ConfigDict, image_shape, dtype) -> nn.Module:
  """The Diffusion Transformer (Peebles & Xie 2023): patchify by model.patch_size, model.depth adaLN-Zero
  blocks of width model.hidden_size with model.num_heads heads and MLP ratio model.mlp_ratio, conditioned
  on the noise label and the class; model.dropout on the residual branches."""
  m = config.model
  require(m.patch_size > 0 and image_shape[0] % m.patch_size == 0, "model.patch_size",
          f"must be > 0 and divide the image size {image_shape[0]}")
  require(m.hidden_size > 0 and m.hidden_size % 4 == 0, "model.hidden_size", "must be a positive multiple of 4")
  require(m.num_heads > 0 and m.hidden_size % m.num_heads == 0, "model.num_heads",
          f"must divide model.hidden_size={m.hidden_size}")
  require(m.depth > 0, "model.depth", "must be > 0")
  require(m.mlp_ratio > 0, "model.mlp_ratio", "must be > 0")
  require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
  return DiT(patch_size=m.patch_size, hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads,
             out_ch=image_shape[-1], mlp_ratio=m.mlp_ratio, num_classes=m.num_classes, dropout=m.dropout,
             time_inputs=m.time_inputs,
             dtype=dtype)


def default_config() -> ml_collections.ConfigDict:
  """The sections the diffusion method reads, with DDPM defaults."""
  return ml_collections.ConfigDict({
      "model": {
          "arch": "unet",  # a name in DENOISERS (unet | dit) or 'module:function'
          # every architecture: dropout, attention heads, classes
          "dropout": 0.1, "num_heads": 1,
          "num_classes": 0,  # > 0: class-conditional (labels from the data's "label")
          "dtype": "float32",  # compute dtype; parameters stay float32
          # the fields each architecture owns (registered with it)
          **DENOISERS.config_fields(),
      },
      "diffusion": {
          "process": "ddpm",  # a name in PROCESSES (ddpm | edm | flow) or 'module:function'
          # ddpm (Ho et al. 2020): discrete time, what the network outputs.
          "num_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
          "prediction": "eps",  # eps, v or x0
          # edm (Karras et al. 2022): preconditioning, training noise levels, sampling range.
          "sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0,
          # flow (rectified flow): the training times, uniform | logit_normal.
          "time_schedule": "uniform",
          # Class-conditional models: the probability a training label is replaced by the null label.
          "label_dropout": 0.1,
          # the fields each other process owns (registered with it)
          **PROCESSES.config_fields(),
          # edm, flow: the held-out bits/dim of the probability-flow ODE (dopri5, rtol = atol = 1e-5) takes
          # the divergence as Hutchinson's estimate (one Rademacher probe per image) or exactly (D
          # Jacobian-vector products per evaluation: small images only).
          "likelihood_trace": "hutchinson",
      },
      # A built-in loss name ("simple": the process's own objective) or your own pure function as 'module:function'.
      "loss": {"name": "simple"},
      "optimizer": optimizer_config(),
      "ema": {"decay": 0.9999},
      "sample": {
          # one of the process's samplers (ddpm: ddpm | ddim; edm: heun; flow: euler | heun | euler_maruyama)
          # or 'module:sampler' (a diffusion.samplers.Sampler)
          "sampler": "ddpm",
          "steps": 1000,  # DDIM, Heun or Euler steps (DDPM always takes num_timesteps)
          "eta": 0.0,  # DDIM noise scale
          "ddpm_variance": "beta_tilde",  # beta_tilde (fixedsmall) | beta (fixedlarge)
          "clip_x0": True,  # ddpm: clip the x0 estimate to [-1, 1] at every step
          # edm: stochastic churn (Algorithm 2); 0 is the deterministic ODE.
          "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0,
          "sde_noise": 1.0,  # flow euler_maruyama: a in g(t)^2 = 2 a t (0 is the Euler ODE)
          # Class-conditional models: out_c + w (out_c - out_u) with w = guidance (0: the conditional
          # model), applied where the noise level sigma (EDM's units: noise / signal) lies in the interval.
          "guidance": 0.0, "guidance_interval": (0.0, float("inf")),
          # The grids written while training (train.sample_every): "" uses `sampler` and `steps`.
          "preview_sampler": "",  # "" or a sampler as `sampler`
          "preview_steps": 50,  # steps of the preview
      },
      # Latent diffusion (methods/latent.py): a trained autoencoder run whose latents the network models;
      # "" trains on pixels.
      "autoencoder": {
          "workdir": "",  # a `genimg train` workdir of method autoencoder
          "checkpoint": "latest",  # its checkpoint: latest | best | a step number
          "pinned_dir": "",  # set by genimg train, sample and eval: the copy of it in this run's workdir
          "required": False,  # genimg train refuses an empty workdir (a latent config; it builds on pixels)
      },
  })


def _with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose model, diffusion and sample sections are completed from default_config()
  (a run saved before a field existed gets its default)."""
  merged = ml_collections.ConfigDict(config.to_dict())
  for name, section in default_config().items():
    if name in ("model", "diffusion", "sample"):
      section.update(merged[name].to_dict())
      merged[name] = section
  return merged


def _check_conditioning(config: ml_collections.ConfigDict) -> None:
  m, s = config.model, config.sample
  require(m.num_classes >= 0, "model.num_classes", "must be >= 0 (0: unconditional)")
  require(0.0 <= config.diffusion.label_dropout < 1.0, "diffusion.label_dropout", "must be in [0, 1)")
  require(len(s.guidance_interval) == 2 and 0.0 <= s.guidance_interval[0] <= s.guidance_interval[1],
          "sample.guidance_interval", "must be (low, high) with 0 <= low <= high")
  require(s.guidance == 0.0 or m.num_classes > 0, "sample.guidance",
          "classifier-free guidance needs a class-conditional model (model.num_classes > 0)")
  require(s.guidance == 0.0 or config.diffusion.label_dropout > 0, "sample.guidance",
          "needs an unconditional model trained alongside: diffusion.label_dropout > 0")


def _sampler(process, name: str, field: str) -> Sampler:
  """The process's sampler `name` (or the user's `module:sampler`), checked to be a Sampler record."""
  chosen = process.samplers.resolve(name, field)
  require(isinstance(chosen, Sampler), field, f"{name!r} is a {type(chosen).__name__}, not a Sampler: decorate "
          "its draw function with @genimg_jax.diffusion.samplers.sampler(nfe=...)")
  return chosen


def make(config: ml_collections.ConfigDict, latent_shape: tuple[int, int, int] | None = None) -> Method:
  """Builds the diffusion method's pure functions from a config (validated on the way).

  latent_shape: (h, w, c) of the normalised latents the network works on in place of the config's images
  (a latent run, methods/latent.py); then samples are latents, not clipped to [-1, 1], and the held-out
  metrics leave out bits/dim.
  """
  config = _with_defaults(config)
  m, s = config.model, config.sample
  model_builder = DENOISERS.resolve(m.arch)
  process_builder = PROCESSES.resolve(config.diffusion.process)
  m.time_inputs = time_inputs = getattr(process_builder, "time_inputs", 1)
  dtype = compute_dtype(m.dtype)
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")
  _check_conditioning(config)
  require(not (latent_shape and s.clip_x0 and config.diffusion.process == "ddpm"), "sample.clip_x0",
          "clips the x0 estimate to the pixel range [-1, 1]; a latent run's latents are not bounded: set it False")
  num_classes = m.num_classes
  image_shape = latent_shape or (config.data.image_size, config.data.image_size, config.data.channels)
  low, high = (-jnp.inf, jnp.inf) if latent_shape else (-1.0, 1.0)
  model = model_builder(config, image_shape, dtype)

  def network(params, x, noise_label, rng, train: bool, labels=None):
    rngs = {"dropout": rng} if train else {}
    return model.apply({"params": params}, x, noise_label, labels, train=train, rngs=rngs)

  process = process_builder(config, network, image_shape)
  sampler = _sampler(process, s.sampler, "sample.sampler")
  preview_sampler = _sampler(process, s.preview_sampler, "sample.preview_sampler") if s.preview_sampler else None
  loss_fn = process.losses.resolve(config.loss.name)
  require(callable(loss_fn), "loss.name", f"{config.loss.name!r} is not a function")
  tx, learning_rate = make_optimizer(config.optimizer)

  def init(rng):
    x = jnp.zeros((1,) + image_shape, jnp.float32)
    noise_label = jnp.zeros((1,) if time_inputs == 1 else (1, time_inputs), jnp.float32)
    params = model.init({"params": rng}, x, noise_label, train=False)["params"]
    return initial_state(params, tx)

  def train_loss(params, batch, rng, step):
    """The objective at optimizer step `step` (given to the loss when the process's losses take it); a
    class-conditional model sees the null label in place of a dropped one."""
    kwargs = dict(ctx=process.train_ctx, **({"step": step} if process.loss_takes_step else {}))
    if not num_classes:
      return loss_fn(params, batch, rng, **kwargs)
    drop_rng, rng = jax.random.split(rng)
    labels = guidance.drop_labels(batch["label"], drop_rng, config.diffusion.label_dropout, num_classes)
    return loss_fn(params, dict(batch, label=labels), rng, **kwargs)

  def eval_step(params, batch, rng):
    """The loss on held-out images, and the process's held-out metrics (ddpm: the bound in bits/dim)."""
    loss_rng, bound_rng = jax.random.split(rng)
    _, metrics = loss_fn(params, batch, loss_rng, ctx=process.eval_ctx)
    if not process.held_out or latent_shape:
      return metrics
    return dict(metrics, **process.held_out(params, batch, bound_rng))

  def sampling_network(params, labels, options):
    """net(x, noise_label) in eval mode: unconditional, or guided towards `labels` [B] int32."""
    net = lambda x, noise_label, labels: network(params, x, noise_label, None, False, labels)
    if not num_classes:
      return lambda x, noise_label: net(x, noise_label, None)
    return guidance.guided(net, labels, num_classes, options.guidance, tuple(options.guidance_interval),
                           process.sigma_of)

  def make_sample(chosen, num_steps: int):
    """sample(params, rng, num, labels=None) with the Sampler `chosen` over `num_steps` steps."""
    options = ml_collections.ConfigDict(dict(s.to_dict(), steps=num_steps))

    def sample(params, rng, num, labels=None):
      if labels is None:
        labels = default_labels(num, num_classes)
      net = sampling_network(params, labels, options)
      return jnp.clip(chosen.draw(process, net, rng, (num,) + image_shape, options), low, high)

    return sample

  def count_network_passes():
    draw = lambda net: sampler.draw(process, net, jax.random.PRNGKey(0), (1,) + image_shape, s)
    return guidance.network_passes(draw, num_classes, s.guidance, tuple(s.guidance_interval), process.sigma_of)

  preview = make_sample(preview_sampler, s.preview_steps) if preview_sampler else None
  return Method(init=init, train_step=loss_train_step(train_loss, tx, learning_rate, config.ema.decay, with_step=True),
                sample=make_sample(sampler, s.steps), eval_step=eval_step, image_shape=image_shape,
                preview_sample=preview, num_classes=num_classes, sample_nfe=sampler.nfe(process, s),
                count_network_passes=count_network_passes if num_classes and s.guidance != 0.0 else None)
