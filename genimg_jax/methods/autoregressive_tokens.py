"""The autoregressive Transformer over a trained tokenizer's tokens: MaskGIT's baseline (same tokenizer).

`tokenizer.workdir` names a discrete autoencoder run (method autoencoder, quantizer fsq or vq). As for MaskGIT
(methods/maskgit.py), `genimg train` pins it into WORKDIR/tokenizer and tokenizes the training split once into
a cache (int32 tokens [N, V, h, w]). The pixel Transformer (models/transformer.py's ImageTransformer) models
the h x w token grid as an image of shape (h, w, 1) whose values are the tokenizer's codes, in raster order:
exact likelihood by teacher forcing (nats per token), sampling token by token (h * w network passes: the
NFE), then the tokens are detokenized, so `sample` returns pixels in [-1, 1] and `genimg sample` /
`genimg eval` work unchanged. The held-out metric (eval.metrics bpd) is the nats and bits per token of the
tokenized held-out images.

The train state: params and opt_state the Transformer's; ema_params {"transformer": its EMA, "tokenizer":
the frozen tokenizer}.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax.config import require
from genimg_jax.losses import autoregressive as arl
from genimg_jax.losses import likelihoods
from genimg_jax.methods import autoregressive, autoregressive_sampling, latent
from genimg_jax.methods.base import Method, TrainState, make_optimizer


def make(config: ml_collections.ConfigDict) -> Method:
  """The autoregressive method on the tokens of the tokenizer config.tokenizer names (validated on the way)."""
  stage = latent.first_stage(config, "tokenizer")
  if jax.process_index() == 0:
    print(f"autoregressive Transformer on {stage.latent_shape} grids of {stage.num_tokens} tokens of the "
          f"{stage.description}", file=sys.stderr)
  return wrap(config, stage)


def wrap(config: ml_collections.ConfigDict, stage: latent.FirstStage) -> Method:
  """The autoregressive method of `config` on the tokens of `stage` (a tokenizer's FirstStage)."""
  autoregressive.validate(config, stage.num_tokens)
  require(config.loss.name == "nll", "loss.name", f"{config.loss.name!r}: a tokenizer's tokens train with the "
          "built-in nll only (a pixel loss reads images, not tokens)")
  grid = tuple(stage.latent_shape)
  model = autoregressive.make_model(config, image_shape=grid + (1,), vocab_size=stage.num_tokens)
  length = model.seq_len
  sampler = autoregressive_sampling.SAMPLERS.resolve(config.sample.sampler)
  require(callable(sampler), "sample.sampler", f"{config.sample.sampler!r} is not a function")
  tx, learning_rate = make_optimizer(config.optimizer)
  conditional = config.model.num_classes > 0

  def class_labels(batch):
    return batch["label"].astype(jnp.int32) if conditional else None

  def loss_fn(params, tokens, labels, rng, train: bool):
    """Teacher-forced nats per token of tokens [B, L] int32: (scalar, metrics)."""
    logits = model.apply({"params": params}, tokens, labels, train=train, rngs={"dropout": rng})
    nats = jnp.mean(arl.nats_per_dim(logits, tokens))
    return nats, {"nats_per_token": nats, "bits_per_token": likelihoods.bits_per_dim(nats)}

  def init(rng: jax.Array) -> TrainState:
    tokens = jnp.zeros((1, length), jnp.int32)
    params = model.init({"params": rng}, tokens, jnp.zeros((1,), jnp.int32) if conditional else None)["params"]
    return latent.token_state(params, tx, stage)

  def train_step(state: TrainState, batch, rng: jax.Array):
    """batch["image"]: the cached tokens [B, h, w] int32 (see train_data); batch["label"] [B] int32."""
    tokens = batch["image"].reshape(batch["image"].shape[0], length).astype(jnp.int32)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, tokens, class_labels(batch),
                                                                       rng, True)
    return latent.token_gradient_step(state, grads, dict(metrics, loss=loss), tx, learning_rate, config.ema.decay)

  def eval_step(params, batch, rng: jax.Array):
    """Nats and bits per token of the held-out images' tokens (batch["image"]: pixels)."""
    tokens = stage.encode(params["tokenizer"], batch["image"]).reshape(batch["image"].shape[0], length)
    _, metrics = loss_fn(params["transformer"], tokens.astype(jnp.int32), class_labels(batch), rng, False)
    return metrics

  def sample(params, rng: jax.Array, num: int, labels=None) -> jax.Array:
    if labels is None or not conditional:
      labels = autoregressive.sample_labels(num, config.model.num_classes)
    decoder = autoregressive.decoder(model, params["transformer"], labels)
    tokens = sampler(decoder, num, rng, config.sample).reshape((num,) + grid)
    return jnp.clip(stage.decode(params["tokenizer"], tokens), -1.0, 1.0)

  pixels = (config.data.image_size, config.data.image_size, config.data.channels)
  return Method(init=init, train_step=train_step, sample=sample, eval_step=eval_step, image_shape=pixels,
                num_classes=config.model.num_classes, sample_nfe=int(np.prod(grid)),
                train_data=functools.partial(latent.train_data, stage))
