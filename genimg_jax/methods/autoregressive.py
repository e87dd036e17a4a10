"""Autoregressive Transformer method (ImageGPT-style): exact pixel likelihood, token-by-token sampling."""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from genimg_jax.config import require
from genimg_jax.losses import autoregressive as arl
from genimg_jax.methods import autoregressive_sampling as sampling
from genimg_jax.methods.base import (Method, compute_dtype, default_labels, initial_state, loss_train_step,
                                     make_optimizer, optimizer_config)
from genimg_jax.models import transformer


def default_config() -> ml_collections.ConfigDict:
  """The sections the autoregressive method reads, with small ImageGPT-like defaults."""
  return ml_collections.ConfigDict({
      "model": {
          "num_layers": 8, "width": 512, "num_heads": 8, "mlp_ratio": 4, "dropout": 0.0,
          "position_embedding": "factorized",  # factorized (row + column + channel) | learned
          "num_classes": 0,  # 0: unconditional; else the start token is a learned vector per class
          "attention": "auto",  # auto (cuDNN on a GPU in bfloat16, blocked on a CPU, else XLA) | xla | cudnn | blocked
          "dtype": "float32",  # compute dtype; parameters stay float32, logits float32
      },
      # A built-in loss name or your own pure function as 'module:function'.
      "loss": {"name": "nll"},
      "optimizer": optimizer_config(),
      "ema": {"decay": 0.999},
      "sample": {
          # cached (key/value cache) | uncached (full forward pass per token) | your own as 'module:function'
          "sampler": "cached",
          "temperature": 1.0,  # 0: greedy
          "top_k": 0,  # 0: all 256 values (all the tokenizer's codes on its tokens)
      },
      # An autoregressive baseline over a tokenizer's tokens (methods/autoregressive_tokens.py): a `genimg train`
      # workdir of an autoencoder with quantizer fsq or vq; "" models pixels.
      "tokenizer": {
          "workdir": "",
          "checkpoint": "latest",  # latest | best | a step
          "pinned_dir": "",  # set by genimg train, sample and eval: the copy of it in this run's workdir
          "required": False,  # genimg train refuses an empty workdir (a config over tokens; it builds on pixels)
      },
  })


def check_transformer_fields(m: ml_collections.ConfigDict) -> None:
  """The model section's Transformer fields (models/transformer.py's Block stack), each named when wrong:
  sizes, heads dividing the width, dropout, classes, attention and dtype. Shared by MaskGIT's bidirectional
  Transformer."""
  for field in ("num_layers", "width", "num_heads", "mlp_ratio"):
    require(m[field] > 0, f"model.{field}", f"must be > 0, got {m[field]}")
  require(m.width % m.num_heads == 0, "model.num_heads", f"must divide model.width={m.width}")
  require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
  require(m.num_classes >= 0, "model.num_classes", "must be >= 0 (0: unconditional)")
  require(m.attention in transformer.ATTENTION_IMPLEMENTATIONS, "model.attention",
          f"must be one of {transformer.ATTENTION_IMPLEMENTATIONS}")
  compute_dtype(m.dtype)


def validate(config, vocab_size: int = transformer.NUM_TOKENS) -> None:
  """The method's fields, each named when wrong; sample.top_k is bounded by the token values, vocab_size."""
  m, s = config.model, config.sample
  check_transformer_fields(m)
  require(m.position_embedding in transformer.POSITION_EMBEDDINGS, "model.position_embedding",
          f"must be one of {transformer.POSITION_EMBEDDINGS}")
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")
  require(s.temperature >= 0.0, "sample.temperature", "must be >= 0 (0: greedy)")
  require(0 <= s.top_k <= vocab_size, "sample.top_k", f"must be in [0, {vocab_size}] (0: no restriction)")


def make_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int] | None = None,
               vocab_size: int = transformer.NUM_TOKENS) -> transformer.ImageTransformer:
  """The Transformer a (validated) config describes, over image_shape (default: the data's) and vocab_size
  token values (default: 256 8-bit values)."""
  m = config.model
  return transformer.ImageTransformer(
      image_shape=image_shape or (config.data.image_size, config.data.image_size, config.data.channels),
      num_layers=m.num_layers, width=m.width, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      dropout=m.dropout, num_classes=m.num_classes, position_embedding=m.position_embedding,
      attention=m.attention, dtype=compute_dtype(m.dtype), vocab_size=vocab_size)


def decoder(model: transformer.ImageTransformer, params, labels: jax.Array | None) -> sampling.Decoder:
  """The samplers' view of `model` with `params` (its parameter tree), conditioned on labels [num] int32 (None:
  unconditional): full forward passes over tokens [B, L] int32, cached one-token steps, and the cache."""
  return sampling.Decoder(
      forward=lambda tokens: model.apply({"params": params}, tokens, labels, train=False),
      decode_step=lambda previous, position, cache: model.apply(
          {"params": params}, previous, labels, position, cache, method=transformer.ImageTransformer.decode_step),
      init_cache=lambda batch: transformer.init_cache(model, batch), num_tokens=model.seq_len)


def sample_labels(num: int, num_classes: int) -> jax.Array | None:
  """The classes sample() conditions on: 0, 1, ..., num_classes - 1, 0, 1, ... ([num] int32); None if 0."""
  return default_labels(num, num_classes) if num_classes else None


def make(config: ml_collections.ConfigDict) -> Method:
  """Builds the autoregressive method's pure functions from a validated config.

  sample(params, rng, num, labels=None) draws with config.sample (sampler, temperature, top_k);
  a class-conditional model gets `labels` [num] int32, by default those of `sample_labels`
  (classes in turn).
  """
  validate(config)
  model = make_model(config)
  image_shape = model.image_shape
  loss_fn = arl.LOSSES.resolve(config.loss.name)
  require(callable(loss_fn), "loss.name", f"{config.loss.name!r} is not a function")
  sampler = sampling.SAMPLERS.resolve(config.sample.sampler)
  require(callable(sampler), "sample.sampler", f"{config.sample.sampler!r} is not a function")
  tx, learning_rate = make_optimizer(config.optimizer)
  ema_decay = config.ema.decay
  conditional = config.model.num_classes > 0

  def logits_train(params, tokens, labels, rng):
    return model.apply({"params": params}, tokens, labels if conditional else None, train=True,
                       rngs={"dropout": rng})

  def logits_eval(params, tokens, labels, rng):
    del rng  # No dropout in eval mode.
    return model.apply({"params": params}, tokens, labels if conditional else None, train=False)

  train_ctx = arl.ModelContext(logits_train)
  eval_ctx = arl.ModelContext(logits_eval)

  def init(rng):
    tokens = jnp.zeros((1, model.seq_len), jnp.int32)
    params = model.init({"params": rng}, tokens, jnp.zeros((1,), jnp.int32) if conditional else None)["params"]
    return initial_state(params, tx)

  train_step = loss_train_step(functools.partial(loss_fn, ctx=train_ctx), tx, learning_rate, ema_decay)

  def eval_step(params, batch, rng):
    _, metrics = loss_fn(params, batch, rng, ctx=eval_ctx)
    return metrics

  def sample(params, rng, num, labels=None):
    if labels is None or not conditional:
      labels = sample_labels(num, config.model.num_classes)
    return arl.tokens_to_image(sampler(decoder(model, params, labels), num, rng, config.sample), image_shape)

  return Method(init=init, train_step=train_step, sample=sample, eval_step=eval_step,
                image_shape=image_shape, num_classes=config.model.num_classes, sample_nfe=model.seq_len)
