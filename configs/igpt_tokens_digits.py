r"""The autoregressive Transformer over the 4x4 token grids of configs/tokenizer_digits.py (16x16x1 digits, FSQ,
1000 codes): MaskGIT's baseline on the same tokens (configs/maskgit_digits.py), with the same Transformer size,
batch, optimizer and steps; 16 tokens in raster order, sampled one by one (NFE 16).

Command: train the tokenizer first, then this (`genimg sample` and `genimg eval` decode to pixels):
  genimg train --config configs/tokenizer_digits.py --workdir runs/tokenizer_digits
  genimg train --config configs/igpt_tokens_digits.py --workdir runs/igpt_tokens_digits \
    --config.tokenizer.workdir=runs/tokenizer_digits
  genimg eval --workdir runs/igpt_tokens_digits --metrics fid,acc --num_samples 1000
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: 4 min 52 s measured (the tokens cached by maskgit_digits' start; 2000 steps at batch 64 at 6.1-6.7
  steps/s, 16-token grids at steps 1000 and 2000; a 2-core CPU shared with other jobs, load average 3.8-4.6,
  2026-12-07), after configs/tokenizer_digits.py's 2 min 44 s.
Expected result: measured on that run (`genimg eval --metrics fid,acc,pr,bpd --num_samples 1000 --feature_net
  classifier --seed 0`, cached decoder, temperature 1, EMA parameters): FID 12.0, precision 0.80, recall 0.85,
  the digit classifier agrees with the requested class on 92.4% of the samples; held-out 5.32 nats (7.67 bits)
  per token against 1.28 nats on the training batches at step 2000: it memorises the 1497 training images'
  tokens (85 epochs). The table with MaskGIT at 4, 8 and 12 steps and 10000 samples:
  benchmarks/results/diffusion_quality_latent.md.
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "igpt_digits.py"))
  # The tokenizer run, given on the command line (--config.tokenizer.workdir=DIR): genimg train refuses to start
  # without it. Until it is set the config builds as the pixel Transformer (config show, shape checks).
  config.tokenizer.workdir = ""
  config.tokenizer.required = True

  # configs/maskgit_digits.py's Transformer size, optimizer, EMA, batch, steps and metrics, read from it so the
  # two stay comparable side by side.
  maskgit = load_file(os.path.join(os.path.dirname(__file__), "maskgit_digits.py"))
  for field in ("num_layers", "width", "num_heads", "mlp_ratio", "dropout", "num_classes", "attention", "dtype"):
    config.model[field] = maskgit.model[field]
  config.optimizer = maskgit.optimizer
  config.ema = maskgit.ema
  for field in ("steps", "batch_size", "log_every", "checkpoint_every", "sample_every"):
    config.train[field] = maskgit.train[field]
  config.eval.metrics = maskgit.eval.metrics
  return config
