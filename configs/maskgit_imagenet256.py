r"""MaskGIT (Chang et al. 2022) on ImageNet 256x256, class-conditional, on 16x16 grids of a VQ tokenizer with
1024 codes (f16): the paper's setup, on paper.

Command: the tokenizer first (configs/tokenizer_digits.py's autoencoder as a VQGAN-style f16 VQ tokenizer with
the adversarial term, trained here, not the paper's VQGAN), then this:
  genimg data prepare --config configs/maskgit_imagenet256.py
  genimg train --config configs/tokenizer_digits.py --workdir runs/tokenizer_imagenet256 \
    --config.data.name=imagenet2012 --config.data.image_size=256 --config.data.channels=3 \
    --config.model.ch=128 --config.model.ch_mult="(1, 1, 2, 2, 4)" --config.model.num_res_blocks=2 \
    --config.model.norm_groups=32 --config.model.z_channels=32 --config.autoencoder.quantizer=vq \
    --config.autoencoder.codebook_size=1024 --config.autoencoder.disc_weight=0.1 \
    --config.autoencoder.disc_start=50000 --config.train.batch_size=256 --config.train.steps=500000
  genimg train --config configs/maskgit_imagenet256.py --workdir runs/maskgit_imagenet256 \
    --config.tokenizer.workdir=runs/tokenizer_imagenet256
  genimg eval --workdir runs/maskgit_imagenet256 --metrics fid,is,pr --num_samples 50000
Data: ImageNet-1k (tfds imagenet2012, 1.28M training images) needs the manual download (docs/data.md); images are
  center-cropped and resized to 256x256 and flipped at random (the first start caches the tokens of each image and
  of its mirror image: 1.28M x 2 x 16x16 int32, about 2.6 GB next to the data).
Hardware: sized for 8 or more 80 GB accelerators (batch 256 over all devices), bfloat16 compute.
Wall time: the paper's compute: 300 epochs at batch 256 (1.5M steps) of a 24-layer Transformer of width 768
  (about 174M parameters, about 90 GFLOPs per 257-token forward pass), which MaskGIT trained on TPUs (the paper
  reports 4x4 TPU v4 for its tokenizer and Transformer); sampling is 8 network passes per image (16 with
  guidance). Tokenizing the training set once (process 0, one device) adds about an hour. Not run here.
Expected result: not run. Published: MaskGIT reaches FID-50K 6.18 and IS 182.1 at 8 steps without guidance
  (Chang et al. 2022, table 1). Differences that will cost FID: the tokenizer is trained here (SSIM in place of
  the perceptual loss, l2-normalised VQ codes) rather than the paper's VQGAN, and the paper's sampling tricks
  beyond the cosine schedule and the choice temperature (4.5, linearly annealed) are not used.
Model: 24 layers, width 768, 16 heads, MLP ratio 4, dropout 0.1; 1024 codes on a 16x16 grid, a class token;
  labels dropped 10% of the time (null class, for optional guidance); AdamW (0.9, 0.96) 1e-4, weight decay 4.5e-2,
  5000 warm-up steps, label smoothing not used.
"""

from genimg_jax.config import base_config
from genimg_jax.methods import maskgit


def get_config():
  config = base_config()
  config.method = "maskgit"
  config.update(maskgit.default_config())
  config.data.name = "imagenet2012"
  config.data.image_size = 256
  config.data.channels = 3
  config.data.random_flip = True
  config.data.num_workers = 8

  config.model.num_layers = 24
  config.model.width = 768
  config.model.num_heads = 16
  config.model.mlp_ratio = 4
  config.model.dropout = 0.1
  config.model.num_classes = 1000
  config.model.dtype = "bfloat16"
  config.tokenizer.num_tokens = 1024
  config.tokenizer.grid = 16  # f16
  config.maskgit.label_dropout = 0.1

  config.optimizer.learning_rate = 1e-4
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.96
  config.optimizer.weight_decay = 4.5e-2
  config.optimizer.warmup_steps = 5000
  config.ema.decay = 0.9999
  config.sample.steps = 8
  config.sample.temperature = 4.5
  config.sample.guidance = 0.0

  config.train.steps = 1_500_000
  config.train.batch_size = 256
  config.train.log_every = 1000
  config.train.checkpoint_every = 10000
  config.train.sample_every = 50000
  config.eval.metrics = "fid,is"
  config.eval.num_samples = 50000
  return config
