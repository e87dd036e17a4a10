r"""A discrete tokenizer on the offline digits: the autoencoder of configs/autoencoder_digits.py with an FSQ
bottleneck, 16x16x1 images to 4x4 grids of tokens from a 1000-code implicit codebook (levels 8, 5, 5, 5,
Mentzer et al. 2023). The first stage of configs/maskgit_digits.py.

Command:
  genimg train --config configs/tokenizer_digits.py --workdir runs/tokenizer_digits
  genimg eval --workdir runs/tokenizer_digits
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: about 4.5 minutes, estimated from the step time (not run to the end): 1200 steps at batch 32 at 4.5
  steps/s (steps 10 to 40 of a 40-step run on a 2-core CPU shared with other jobs, 2026-12).
Expected result: not measured (not run to the end). In that 40-step run the training loss (L1 + 1 - SSIM) fell
  from 1.56 (mean of steps 1-10) to 0.77 (steps 31-40), the PSNR rose from 9.0 to 15.7 dB and the batch's
  codebook usage from 10% to 15% of the 1000 codes (perplexity 59 to 95).
  `genimg eval` reports the held-out PSNR, SSIM and L1, the codebook usage and perplexity of the test split's
  tokens, and the rFID of its reconstructions (classifier features). samples/step_*.png decodes uniformly
  drawn tokens (a sanity picture); samples/reconstructions_*.png is what to look at. Use
  --config.autoencoder.quantizer=vq for the l2-normalised VQ variant (autoencoder.codebook_size codes of
  model.z_channels dimensions).
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "autoencoder_digits.py"))
  config.autoencoder.quantizer = "fsq"
  config.autoencoder.levels = (8, 5, 5, 5)  # 1000 tokens; the encoder outputs 4 channels
  config.autoencoder.codebook_size = 256  # vq only
  config.autoencoder.kl_weight = 0.0  # no KL term in a discrete autoencoder
  return config
