"""MaskGIT (Chang et al. 2022): a bidirectional Transformer over a trained tokenizer's tokens.

`tokenizer.workdir` names a discrete autoencoder run (method autoencoder, autoencoder.quantizer fsq or vq,
methods/autoencoder.py). As for latent diffusion (methods/latent.py), `genimg train` pins it into
WORKDIR/tokenizer and tokenizes the training split once into a cache (train/latent_cache.py, int32 tokens
[N, V, h, w]); resuming, sampling and evaluating read the pin.

Training (losses/maskgit.py): per image, mask ratio r = cos(pi/2 u), u ~ U(0, 1), at least one token masked,
masked positions replaced by [MASK]; the class label is replaced by the null class with probability
maskgit.label_dropout; cross-entropy on the masked positions only.

Sampling (methods/maskgit_sampling.py): sample.steps network passes of iterative parallel decoding in one
`lax.scan` (the NFE), Gumbel confidence with sample.temperature, classifier-free guidance sample.guidance
(logits (1 + w) cond - w uncond); the tokens are detokenized, so `sample` returns pixels in [-1, 1] and
`genimg sample` / `genimg eval` work unchanged. The held-out metric (eval.metrics bpd) is the masked
cross-entropy of the tokenized held-out images under a random mask, `masked_nll` in nats per masked token.

The train state: params and opt_state the Transformer's; ema_params {"transformer": its EMA, "tokenizer":
the frozen tokenizer}. Without a tokenizer (config show, shape checks) the model is built for the token count
and grid tokenizer.num_tokens x tokenizer.grid^2 the config is sized for; a named tokenizer's own count and
grid replace them.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax.config import require
from genimg_jax.losses import maskgit as losses
from genimg_jax.methods import autoregressive, latent, maskgit_sampling
from genimg_jax.methods.base import Method, TrainState, compute_dtype, default_labels, make_optimizer, optimizer_config
from genimg_jax.models.maskgit import MaskGITTransformer


def default_config() -> ml_collections.ConfigDict:
  """The sections the maskgit method reads (MaskGIT's sampling settings, a small Transformer)."""
  return ml_collections.ConfigDict({
      "model": {
          "num_layers": 4, "width": 256, "num_heads": 4, "mlp_ratio": 4, "dropout": 0.1,
          "num_classes": 0,  # 0: unconditional; else class-conditional with a null class for guidance
          "attention": "auto",  # auto | xla | cudnn (blocked means xla: the attention is not causal)
          "dtype": "float32",  # compute dtype; parameters stay float32, logits float32
      },
      "tokenizer": {
          "workdir": "",  # the tokenizer run (`genimg train` of an autoencoder with quantizer fsq or vq)
          "checkpoint": "latest",  # latest | best | a step
          "required": True,  # genimg train refuses to start without tokenizer.workdir
          "pinned_dir": "",  # set by genimg train: WORKDIR/tokenizer
          "num_tokens": 1000,  # the codebook size the config is sized for (used until a tokenizer is named)
          "grid": 4,  # the token grid's side the config is sized for (likewise)
      },
      "maskgit": {"label_dropout": 0.1},  # probability of training on the null class (classifier-free guidance)
      "optimizer": optimizer_config(),
      "ema": {"decay": 0.999},
      "sample": {
          "steps": 8,  # decoding iterations = network evaluations (NFE)
          "temperature": 4.5,  # scale of the Gumbel noise on the confidence (MaskGIT's choice temperature)
          "guidance": 0.0,  # classifier-free guidance weight w: logits (1 + w) cond - w uncond
      },
  })


def _validate(config) -> None:
  m, s = config.model, config.sample
  autoregressive.check_transformer_fields(m)
  require(0.0 <= config.maskgit.label_dropout < 1.0, "maskgit.label_dropout", "must be in [0, 1)")
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")
  require(s.steps >= 1, "sample.steps", "must be >= 1")
  require(s.temperature >= 0.0, "sample.temperature", "must be >= 0")
  require(s.guidance >= 0.0, "sample.guidance", "must be >= 0")
  require(s.guidance == 0.0 or m.num_classes > 0, "sample.guidance", "needs a class-conditional model "
          "(model.num_classes > 0)")
  require(config.tokenizer.num_tokens >= 2 and config.tokenizer.grid >= 1, "tokenizer.num_tokens",
          "tokenizer.num_tokens must be >= 2 and tokenizer.grid >= 1")


def _unnamed_stage(config) -> latent.FirstStage:
  """The stand-in of a config with no tokenizer yet: its sized-for token count and grid, decoding to zeros."""
  grid, pixels = config.tokenizer.grid, (config.data.image_size, config.data.image_size, config.data.channels)
  return latent.FirstStage(encode=lambda p, x: jnp.zeros((x.shape[0], grid, grid), jnp.int32),
                           decode=lambda p, t: jnp.zeros((t.shape[0],) + pixels, jnp.float32), params={},
                           latent_shape=(grid, grid), mean=np.zeros(0, np.float32), std=np.zeros(0, np.float32),
                           params_hash="0" * 64, description="no tokenizer", num_tokens=config.tokenizer.num_tokens)


def make(config: ml_collections.ConfigDict) -> Method:
  """The maskgit method of a config (validated on the way), on the tokenizer config.tokenizer names."""
  _validate(config)
  if config.tokenizer.pinned_dir or config.tokenizer.workdir:
    stage = latent.first_stage(config, "tokenizer")
    if jax.process_index() == 0:
      print(f"maskgit on {stage.latent_shape} grids of {stage.num_tokens} tokens of the {stage.description}",
            file=sys.stderr)
  else:
    stage = _unnamed_stage(config)
  return wrap(config, stage)


def wrap(config: ml_collections.ConfigDict, stage: latent.FirstStage) -> Method:
  """The maskgit method of `config` on the tokens of `stage` (a tokenizer's FirstStage)."""
  _validate(config)
  m, s = config.model, config.sample
  length = int(np.prod(stage.latent_shape))
  model = MaskGITTransformer(num_tokens=stage.num_tokens, seq_len=length, num_layers=m.num_layers, width=m.width,
                             num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
                             num_classes=m.num_classes, attention=m.attention, dtype=compute_dtype(m.dtype))
  tx, learning_rate = make_optimizer(config.optimizer)
  null = m.num_classes

  def class_labels(batch, rng, dropout: float):
    """The batch's labels (the null class for an unconditional model), dropped to null with prob. dropout."""
    labels = batch["label"].astype(jnp.int32) if m.num_classes else jnp.full(batch["label"].shape, null, jnp.int32)
    if m.num_classes and dropout:
      labels = jnp.where(jax.random.bernoulli(rng, dropout, labels.shape), null, labels)
    return labels

  def loss_fn(params, tokens, labels, rng, train: bool):
    mask_rng, dropout_rng = jax.random.split(rng)
    mask = losses.random_mask(mask_rng, tokens.shape[0], length)
    inputs = jnp.where(mask, model.mask_token, tokens)
    logits = model.apply({"params": params}, inputs, labels, train=train, rngs={"dropout": dropout_rng})
    loss = losses.masked_cross_entropy(logits, tokens, mask)
    return loss, {"masked_nll": loss, "mask_fraction": jnp.mean(mask.astype(jnp.float32))}

  def init(rng: jax.Array) -> TrainState:
    tokens = jnp.zeros((1, length), jnp.int32)
    return latent.token_state(model.init({"params": rng}, tokens, jnp.zeros((1,), jnp.int32))["params"], tx, stage)

  def train_step(state: TrainState, batch, rng: jax.Array):
    """batch["image"]: the cached tokens [B, h, w] int32 (see train_data); batch["label"] [B] int32."""
    label_rng, loss_rng = jax.random.split(rng)
    tokens = batch["image"].reshape(batch["image"].shape[0], length).astype(jnp.int32)
    labels = class_labels(batch, label_rng, config.maskgit.label_dropout)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, tokens, labels, loss_rng, True)
    return latent.token_gradient_step(state, grads, dict(metrics, loss=loss), tx, learning_rate, config.ema.decay)

  def eval_step(params, batch, rng: jax.Array):
    """The masked cross-entropy of the held-out images' tokens (batch["image"]: pixels) under a random mask."""
    tokens = stage.encode(params["tokenizer"], batch["image"]).reshape(batch["image"].shape[0], length)
    _, metrics = loss_fn(params["transformer"], tokens, class_labels(batch, rng, 0.0), rng, False)
    return {"masked_nll": metrics["masked_nll"]}

  def sample(params, rng: jax.Array, num: int, labels=None) -> jax.Array:
    if not m.num_classes:
      labels = jnp.full((num,), null, jnp.int32)
    elif labels is None:
      labels = default_labels(num, m.num_classes)
    network = lambda tokens, cls: model.apply({"params": params["transformer"]}, tokens, cls, train=False)
    logits_fn = maskgit_sampling.guided(network, labels, null, s.guidance)
    tokens = maskgit_sampling.decode(logits_fn, rng, num, length, stage.num_tokens, s.steps, s.temperature)
    return jnp.clip(stage.decode(params["tokenizer"], tokens.reshape((num,) + tuple(stage.latent_shape))), -1, 1)

  pixels = (config.data.image_size, config.data.image_size, config.data.channels)
  return Method(init=init, train_step=train_step, sample=sample, eval_step=eval_step, image_shape=pixels,
                num_classes=m.num_classes, sample_nfe=s.steps,
                count_network_passes=lambda: s.steps * (2 if s.guidance else 1),
                train_data=functools.partial(latent.train_data, stage))
