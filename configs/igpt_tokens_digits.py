r"""The autoregressive Transformer over the 4x4 token grids of configs/tokenizer_digits.py (16x16x1 digits, FSQ,
1000 codes): MaskGIT's baseline on the same tokens (configs/maskgit_digits.py), with the same Transformer size,
batch, optimizer and steps; 16 tokens in raster order, sampled one by one (NFE 16).

Command: train the tokenizer first, then this (`genimg sample` and `genimg eval` decode to pixels):
  genimg train --config configs/tokenizer_digits.py --workdir runs/tokenizer_digits
  genimg train --config configs/igpt_tokens_digits.py --workdir runs/igpt_tokens_digits \
    --config.tokenizer.workdir=runs/tokenizer_digits
  genimg eval --workdir runs/igpt_tokens_digits --metrics fid,acc --num_samples 1000
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: not yet measured.
Expected result: not yet measured.
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "igpt_digits.py"))
  # The tokenizer run, given on the command line (--config.tokenizer.workdir=DIR): genimg train refuses to start
  # without it. Until it is set the config builds as the pixel Transformer (config show, shape checks).
  config.tokenizer.workdir = ""
  config.tokenizer.required = True

  # configs/maskgit_digits.py's Transformer, optimizer, batch and steps.
  config.model.num_layers = 4
  config.model.width = 128
  config.model.num_heads = 4
  config.model.dropout = 0.1
  config.model.num_classes = 10
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.weight_decay = 0.01
  config.ema.decay = 0.999

  config.train.steps = 2000
  config.train.batch_size = 64
  config.train.log_every = 100
  config.train.checkpoint_every = 500
  config.train.sample_every = 1000
  config.eval.metrics = "fid,acc"
  return config
