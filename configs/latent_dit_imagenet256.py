r"""DiT-XL/2 (Peebles & Xie 2023) on ImageNet 256x256, class-conditional latent diffusion on the 32x32x4 latents
of an f8 KL autoencoder, with classifier-free guidance: the DiT paper's setup, on paper.

Command: the autoencoder first (configs/autoencoder_cifar10.py's KL-f8 settings at 256x256 on ImageNet, trained
here, not Stable Diffusion's VAE, which DiT used), then this:
  genimg data prepare --config configs/latent_dit_imagenet256.py
  genimg train --config configs/autoencoder_cifar10.py --workdir runs/autoencoder_imagenet256 \
    --config.data.name=imagenet2012 --config.data.image_size=256 --config.autoencoder.disc_layers=3 \
    --config.train.steps=250000
  genimg train --config configs/latent_dit_imagenet256.py --workdir runs/latent_dit_imagenet256 \
    --config.autoencoder.workdir=runs/autoencoder_imagenet256
  genimg eval --workdir runs/latent_dit_imagenet256 --metrics fid,is,pr --num_samples 50000
Data: ImageNet-1k (tfds imagenet2012, 1.28M training images) needs the manual download (docs/data.md); images are
  center-cropped to the largest square and resized to 256x256, flipped at random (the first start caches the
  latents of each image and of its mirror image: 1.28M x 2 x 32x32x4 float32, about 42 GB next to the data).
Hardware: sized for 8 or more 80 GB accelerators (batch 256 over all devices), bfloat16 compute.
Wall time: the DiT paper's compute: 7M steps at batch 256 (DiT-XL/2: 119 GFLOPs per forward pass), which DiT
  ran at 5.7 steps/s on a TPU v3-256 pod (about two weeks). Encoding the training set once (process 0, one
  device) adds about an hour. Not run here.
Expected result: not run. Published: DiT-XL/2 at 7M steps reaches FID-50K 2.27 with classifier-free guidance
  scale 1.5 (w = 0.5 here: eps_u + 1.5 (eps_c - eps_u)) and 250 DDPM steps; SiT-XL/2 (the same network as a
  flow, SDE sampler) 2.06. Differences that will cost FID: this autoencoder is trained here with SSIM in place of
  LPIPS rather than Stable Diffusion's VAE (ft-EMA), the variance is fixed (DiT learns it) and sampling is
  DDIM-250 with eta 1, guidance applies to all four latent channels (DiT's code guides three).
Model: DiT-XL/2: patch 2, hidden 1152, depth 28, 16 heads, MLP ratio 4, adaLN-Zero (675M parameters); DDPM
  with the linear schedule (1e-4 to 0.02, T = 1000), eps prediction, labels dropped 10% of the time; AdamW 1e-4
  without weight decay or warm-up, EMA 0.9999.
"""

from genimg_jax.config import base_config
from genimg_jax.methods import diffusion


def get_config():
  config = base_config()
  config.method = "diffusion"
  config.update(diffusion.default_config())

  config.data.name = "imagenet2012"
  config.data.image_size = 256
  config.data.channels = 3
  config.data.train_split, config.data.eval_split = "train", "validation"
  config.data.random_flip = True
  config.data.num_workers = 8

  # The autoencoder run, given on the command line (--config.autoencoder.workdir=DIR): genimg train refuses to
  # start without it. Until it is set the config builds as pixel diffusion (config show, shape checks).
  config.autoencoder.workdir = ""
  config.autoencoder.required = True
  config.autoencoder.checkpoint = "latest"

  config.model.arch = "dit"
  config.model.patch_size = 2
  config.model.hidden_size = 1152
  config.model.depth = 28
  config.model.num_heads = 16
  config.model.mlp_ratio = 4.0
  config.model.dropout = 0.0
  config.model.num_classes = 1000
  config.model.dtype = "bfloat16"

  config.diffusion.process = "ddpm"
  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_schedule = "linear"
  config.diffusion.beta_start, config.diffusion.beta_end = 1e-4, 0.02
  config.diffusion.prediction = "eps"
  config.diffusion.label_dropout = 0.1

  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip = 0.0  # DiT does not clip
  config.ema.decay = 0.9999

  config.sample.sampler = "ddim"
  config.sample.steps = 250
  config.sample.eta = 1.0
  config.sample.clip_x0 = False  # latents are not bounded to [-1, 1]
  config.sample.guidance = 0.5  # DiT's cfg scale 1.5
  config.sample.preview_sampler = "ddim"
  config.sample.preview_steps = 50

  config.train.steps = 7_000_000
  config.train.batch_size = 256
  config.train.log_every = 1000
  config.train.checkpoint_every = 50_000
  config.train.sample_every = 50_000
  config.train.num_samples = 64

  config.eval.metrics = "fid,is,pr"
  config.eval.num_samples = 50_000
  config.eval.feature_net = "inception"
  config.eval.batch_size = 1000
  return config
