"""MaskGIT (methods/maskgit.py): the cosine masking schedule by Monte Carlo, the loss on masked positions only,
parallel decoding of a model whose logits are a known distribution (and guidance), the NFE counted at run time,
and the chain tokenizer -> maskgit and the autoregressive baseline on the same tokens through the real `genimg`
command."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import config as config_lib
from genimg_jax.losses import maskgit as losses
from genimg_jax.methods import maskgit, maskgit_sampling
from genimg_jax.models.maskgit import MaskGITTransformer
from helpers import REPO
from test_latent import genimg, train

CONFIG = os.path.join(REPO, "configs", "maskgit_digits.py")
SMALL = {"model.num_layers": 1, "model.width": 16, "model.num_heads": 2, "train.batch_size": 16, "sample.steps": 3}


def test_masked_fraction_is_2_over_pi():
  u = jax.random.uniform(jax.random.key(0), (200_000,))
  ratios = np.asarray(losses.mask_ratio(u), np.float64)
  assert abs(ratios.mean() - 2 / np.pi) < 4 * ratios.std() / np.sqrt(ratios.size)
  mask = np.asarray(losses.random_mask(jax.random.key(1), 4000, 1024))
  fractions = mask.mean(axis=1)
  # floor(r L) / L lies within 1/L below r; at least one token per row.
  assert abs(fractions.mean() - 2 / np.pi) < 4 * fractions.std() / np.sqrt(4000) + 1 / 1024
  assert np.asarray(losses.random_mask(jax.random.key(2), 5000, 4)).sum(axis=1).min() >= 1


def test_loss_is_the_cross_entropy_of_masked_positions_only():
  rng = np.random.default_rng(0)
  logits, targets = rng.normal(size=(3, 6, 5)), rng.integers(0, 5, size=(3, 6))
  mask = rng.random((3, 6)) < 0.5
  mask[0, 0] = True
  got = losses.masked_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(mask))
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
  assert float(got) == pytest.approx(nll[mask].mean(), rel=1e-5)
  perturbed = np.where(mask[..., None], logits, logits + rng.normal(scale=10.0, size=logits.shape))
  again = losses.masked_cross_entropy(jnp.asarray(perturbed, jnp.float32), jnp.asarray(targets), jnp.asarray(mask))
  assert float(again) == float(got)


MARGINALS = np.asarray([[0.7, 0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25],
                        [0.05, 0.15, 0.3, 0.5], [0.4, 0.0, 0.6, 0.0], [0.5, 0.3, 0.1, 0.1]])


def fixed_logits(tokens):
  """Independent tokens with MARGINALS per position, whatever the input: [B, 6] -> [B, 6, 4]."""
  return jnp.broadcast_to(jnp.log(jnp.asarray(MARGINALS, jnp.float32)), tokens.shape + (4,))


def draw(logits_fn, steps: int, temperature: float, n: int = 6000) -> np.ndarray:
  fn = jax.jit(lambda key: maskgit_sampling.decode(logits_fn, key, n, 6, 4, steps, temperature))
  return np.asarray(fn(jax.random.key(3)))


def assert_frequencies(tokens: np.ndarray, probs: np.ndarray):
  freq = np.stack([(tokens == k).mean(axis=0) for k in range(4)], axis=-1)
  sigma = np.sqrt(probs * (1 - probs) / len(tokens)) + 1e-9
  assert np.all(np.abs(freq - probs) <= 5 * sigma + 1e-12), (freq, probs)
  values = np.arange(4)
  mean, var = probs @ values, probs @ values**2 - (probs @ values) ** 2  # First two moments of each position.
  np.testing.assert_allclose(tokens.mean(axis=0), mean, atol=5 * np.sqrt(var.max() / len(tokens)) + 1e-9)


def test_decoding_recovers_independent_marginals():
  for steps in (1, 4):
    # Confidence noise that dominates the log-probs re-masks positions at random, so every kept token is an
    # unbiased draw: the marginals come back exactly (in expectation).
    tokens = draw(fixed_logits, steps, temperature=1e4)
    assert tokens.min() >= 0 and tokens.max() < 4
    assert_frequencies(tokens, MARGINALS)
  # Without noise the most likely draws are kept first: the modes come out more often than their probability.
  greedy = draw(fixed_logits, 4, temperature=0.0)
  assert (greedy[:, 0] == 0).mean() > 0.7 + 0.03 and (greedy[:, 1] == 3).mean() > 0.7 + 0.03


def test_guidance_mixes_conditional_and_unconditional_logits():
  cond = np.log(MARGINALS + 1e-3)
  uncond = np.log(MARGINALS[::-1] + 1e-3)

  def logits_fn(tokens, labels):
    table = jnp.where((labels == 1)[:, None, None], jnp.asarray(cond, jnp.float32), jnp.asarray(uncond, jnp.float32))
    return jnp.broadcast_to(table, tokens.shape + (4,))

  w = 1.5
  fn = maskgit_sampling.guided(logits_fn, jnp.ones((6000,), jnp.int32), 0, w)
  guided = (1 + w) * cond - w * uncond
  probs = np.exp(guided - guided.max(-1, keepdims=True))
  assert_frequencies(draw(fn, 1, 0.0), probs / probs.sum(-1, keepdims=True))  # One step: exact draws.


CALLS: list[int] = []


class CountingTransformer(MaskGITTransformer):
  """MaskGIT's Transformer appending its batch size to CALLS whenever it runs."""

  @nn.compact
  def __call__(self, tokens, labels=None, *, train=False):
    jax.debug.callback(lambda n: CALLS.append(int(n)), jnp.asarray(tokens.shape[0]))
    return super().__call__(tokens, labels, train=train)


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_nfe_is_the_number_of_steps(monkeypatch, guidance):
  monkeypatch.setattr(maskgit, "MaskGITTransformer", CountingTransformer)
  config = config_lib.load(CONFIG, [f"--config.{k}={v}" for k, v in dict(SMALL, **{
      "sample.steps": 5, "sample.guidance": guidance, "tokenizer.num_tokens": 7}).items()])
  method = maskgit.make(config)
  params = jax.jit(method.init)(jax.random.key(0)).ema_params
  CALLS.clear()
  images = jax.jit(method.sample, static_argnums=2)(params, jax.random.key(1), 3)
  jax.effects_barrier()
  assert images.shape == (3, 16, 16, 1)
  assert method.sample_nfe == len(CALLS) == 5
  assert set(CALLS) == {6 if guidance else 3}  # The guided pass runs cond and uncond as one doubled batch.
  assert method.sample_network_passes == (10 if guidance else 5)


def test_a_train_step_is_the_masked_cross_entropy():
  config = config_lib.load(CONFIG, [f"--config.{k}={v}" for k, v in dict(SMALL, **{
      "tokenizer.num_tokens": 7, "model.dropout": 0.0, "maskgit.label_dropout": 0.0}).items()])
  method = maskgit.make(config)
  state = method.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (16, 4, 4), 0, 7)
  batch = {"image": tokens, "label": jnp.arange(16, dtype=jnp.int32) % 10}
  new_state, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(2))
  # The head starts at zero: uniform logits, log 7 nats on every masked token.
  assert float(metrics["loss"]) == pytest.approx(np.log(7), rel=1e-5)
  assert 0 < float(metrics["mask_fraction"]) <= 1
  assert int(new_state.step) == 1 and set(new_state.ema_params) == {"transformer", "tokenizer"}


# ---- The chain through the real command line. ---------------------------------------------------------------

TOKENIZER_ARGS = {"model.ch": 8, "model.ch_mult": (1, 2), "model.norm_groups": 4, "train.batch_size": 16,
                  "autoencoder.levels": (5, 4), "train.eval_batches": 1}
MASKGIT_ARGS = dict(SMALL, **{"train.eval_batches": 1, "train.sample_every": 0, "tokenizer.workdir": "tok"})
AR_ARGS = {"model.num_layers": 1, "model.width": 16, "model.num_heads": 2, "train.batch_size": 16,
           "train.eval_batches": 1, "train.sample_every": 0, "tokenizer.workdir": "tok"}


@pytest.mark.slow
def test_maskgit_through_the_command_line(data_dir, tmp_path):
  train(tmp_path, "tokenizer_digits.py", "tok", 2, data_dir, TOKENIZER_ARGS)
  first = train(tmp_path, "maskgit_digits.py", "mg", 2, data_dir, MASKGIT_ARGS)
  assert "encoding digits train" in first.stderr and os.path.isfile(tmp_path / "mg" / "tokenizer" / "pin.json")
  cache = [line for line in first.stderr.splitlines() if "encoding digits train" in line][0].split("-> ")[-1]
  cached = np.load(os.path.join(cache, "latents.npy"), allow_pickle=False)
  assert cached.dtype == np.int32 and cached.shape[2:] == (8, 8) and 0 <= cached.min() and cached.max() < 20
  second = train(tmp_path, "maskgit_digits.py", "mg", 4, data_dir, MASKGIT_ARGS)
  assert "resuming from step 2" in second.stdout and "encoding" not in second.stderr
  genimg(tmp_path, "sample", "--workdir", "mg", "--out", "x.npz", "--num", 6)
  samples = np.load(tmp_path / "x.npz", allow_pickle=False)["arr_0"]
  assert samples.shape == (6, 16, 16, 1) and samples.dtype == np.uint8
  report = genimg(tmp_path, "eval", "--workdir", "mg", "--metrics", "fid,bpd", "--num_samples", 20,
                  "--batch_size", 10).stdout
  assert "| fid |" in report and "masked_nll" in report

  # The autoregressive baseline on the same tokens: the cache is shared, every command decodes to pixels.
  first = train(tmp_path, "igpt_tokens_digits.py", "ar", 2, data_dir, AR_ARGS)
  assert "encoding" not in first.stderr and "64 tokens" not in first.stderr
  assert "(8, 8) grids of 20 tokens" in first.stderr
  second = train(tmp_path, "igpt_tokens_digits.py", "ar", 4, data_dir, AR_ARGS)
  assert "resuming from step 2" in second.stdout
  genimg(tmp_path, "sample", "--workdir", "ar", "--out", "y.npz", "--num", 4)
  samples = np.load(tmp_path / "y.npz", allow_pickle=False)["arr_0"]
  assert samples.shape == (4, 16, 16, 1) and samples.dtype == np.uint8
  report = genimg(tmp_path, "eval", "--workdir", "ar", "--metrics", "fid,bpd", "--num_samples", 20,
                  "--batch_size", 10).stdout
  assert "| fid |" in report and "nats_per_token" in report
  with open(tmp_path / "ar" / "eval" / "eval_0000004.json") as f:
    assert json.load(f)["metrics"]["fid"]["sampler"]["nfe"] == 64  # One pass per token of the 8x8 grid.
