"""PyTorch reference of the GAN method: the DCGAN and SNGAN ResNet networks and the adversarial train step.

Mirrors genimg_jax/models/dcgan.py, genimg_jax/models/sngan.py and
genimg_jax/models/gan_layers.py (unconditional), and the train step of
genimg_jax/methods/gan.py: the batch is split into n_critic slices (slice i holds
examples i, i + n_critic, ...); discriminator update i scores slice i and B fresh
fakes of the train-mode generator (whose running averages stay as they are), with
the loss of config.gan.loss (genimg_jax/losses/adversarial.py); then one generator
update on B fresh fakes, scored by the discriminator without a power-iteration
update; then the EMA generator: its weights move toward the generator's and a
train-mode pass on the same latents updates its own batch-norm running averages.
Each player has its own AdamW (config.g_optimizer, config.d_optimizer) with linear
warm-up over its own update count and global-norm clipping.

Spectral norm is torch.nn.utils.parametrizations.spectral_norm with one power
iteration per forward pass, as flax's nn.SpectralNorm; its vectors and the
batch-norm statistics are buffers, not parameters. Convolutions run channels_last:
the NHWC images enter as free permutes. Weights start as ours: SNGAN Glorot-uniform
(gain sqrt(2) in the residual convs), DCGAN N(0, 0.02), zero biases.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from benchmarks.torch_reference import Reference, autocast, make_ema, make_update, maybe_compile

BATCH_NORM_EPS = 1e-5  # flax.linen.BatchNorm's default
ARCHS = ("dcgan", "resnet")
G_NORMS = ("batch", "none")
D_NORMS = ("batch", "spectral", "none")


def _d_non_saturating(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
  return F.softplus(-real).mean() + F.softplus(fake).mean()


# config.gan.loss -> (discriminator loss(real_logits [B], fake_logits [B]), generator loss(fake_logits [B])),
# float32 scalars to be minimised; as genimg_jax/losses/adversarial.py.
LOSSES = {
    "non_saturating": (_d_non_saturating, lambda fake: F.softplus(-fake).mean()),
    "minimax": (_d_non_saturating, lambda fake: -F.softplus(fake).mean()),
    "hinge": (lambda real, fake: F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean(), lambda fake: -fake.mean()),
    "wasserstein": (lambda real, fake: fake.mean() - real.mean(), lambda fake: -fake.mean()),
}


def _init_(layer: nn.Module, scheme: str) -> None:
  """Kernel init as ours, zero bias (if any). scheme: "residual" (Glorot-uniform, gain sqrt(2)),
  "glorot" (Glorot-uniform) or "dcgan" (N(0, 0.02))."""
  if scheme == "dcgan":
    nn.init.normal_(layer.weight, std=0.02)
  else:
    # torch's fans of [out, in, kh, kw] (or ConvTranspose's [in, out, ...]) equal flax's of [kh, kw, in, out].
    nn.init.xavier_uniform_(layer.weight, gain=math.sqrt(2.0) if scheme == "residual" else 1.0)
  if layer.bias is not None:
    nn.init.zeros_(layer.bias)


def _spectral(layer: nn.Module, enabled: bool) -> nn.Module:
  """`layer` with its weight divided by its top singular value (one power iteration per forward) if enabled."""
  return parametrizations.spectral_norm(layer, n_power_iterations=1, eps=1e-12) if enabled else layer


def set_power_iteration(module: nn.Module, enabled: bool) -> None:
  """Whether the spectral-norm layers of `module` run (and store) a power iteration on each forward.

  Off, they divide by u^T W v of the stored vectors: ours, with update=False, runs one
  iteration without storing it; the two estimates differ by one matrix-vector step.
  """
  for layer in module.modules():
    if parametrize.is_parametrized(layer, "weight"):
      layer.parametrizations.weight.train(enabled)


class BatchNorm(nn.BatchNorm2d):
  """flax.linen.BatchNorm over x [B, C, H, W]: batch statistics in training mode, where
  update_stats says whether the running averages move; the running averages in eval mode."""

  def __init__(self, channels: int, momentum: float):
    # flax's momentum weighs the old average, torch's the new batch.
    super().__init__(channels, eps=BATCH_NORM_EPS, momentum=1.0 - momentum)

  def forward(self, x: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
    keep = not self.training or update_stats
    return F.batch_norm(x, self.running_mean if keep else None, self.running_var if keep else None, self.weight,
                        self.bias, self.training, self.momentum, self.eps)


def _generator_norm(kind: str, channels: int, momentum: float) -> nn.Module | None:
  return BatchNorm(channels, momentum) if kind == "batch" else None


def _norm_relu(norm: nn.Module | None, x: torch.Tensor, update_stats: bool) -> torch.Tensor:
  return F.relu(norm(x, update_stats) if norm is not None else x)


# ---- SNGAN ResNet (genimg_jax/models/sngan.py). ------------------------------------------------


class GeneratorBlock(nn.Module):
  """x [B, in_ch, H, W] -> [B, ch, 2H, 2W]: BN-ReLU-up-conv3-BN-ReLU-conv3, plus up-conv1 shortcut."""

  def __init__(self, in_ch: int, ch: int, norm: str, momentum: float):
    super().__init__()
    self.norm1 = _generator_norm(norm, in_ch, momentum)
    self.conv1 = nn.Conv2d(in_ch, ch, 3, padding=1)
    self.norm2 = _generator_norm(norm, ch, momentum)
    self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
    self.shortcut = nn.Conv2d(in_ch, ch, 1)
    for conv, scheme in ((self.conv1, "residual"), (self.conv2, "residual"), (self.shortcut, "glorot")):
      _init_(conv, scheme)

  def forward(self, x: torch.Tensor, update_stats: bool) -> torch.Tensor:
    h = self.conv1(F.interpolate(_norm_relu(self.norm1, x, update_stats), scale_factor=2, mode="nearest"))
    h = self.conv2(_norm_relu(self.norm2, h, update_stats))
    return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResNetGenerator(nn.Module):
  """z [B, Z] float32 -> images [B, C, H, W] float32 in (-1, 1) (channels_last memory).

  dense 4x4 x ch -> log2(H / 4) up-blocks -> BN, ReLU, conv3x3 -> tanh.
  """

  def __init__(self, image_shape: tuple[int, int, int], z_dim: int, ch: int, norm: str, momentum: float):
    super().__init__()
    height, _, channels = image_shape
    self.ch = ch
    self.dense = nn.Linear(z_dim, 4 * 4 * ch)
    _init_(self.dense, "glorot")
    self.blocks = nn.ModuleList(GeneratorBlock(ch, ch, norm, momentum)
                                for _ in range((height // 4).bit_length() - 1))
    self.norm = _generator_norm(norm, ch, momentum)
    self.conv = nn.Conv2d(ch, channels, 3, padding=1)
    _init_(self.conv, "glorot")

  def forward(self, z: torch.Tensor, update_stats: bool) -> torch.Tensor:
    # Ours reshapes to NHWC; the permute makes it an NCHW view of channels_last memory.
    h = self.dense(z).view(z.shape[0], 4, 4, self.ch).permute(0, 3, 1, 2)
    for block in self.blocks:
      h = block(h, update_stats)
    return torch.tanh(self.conv(_norm_relu(self.norm, h, update_stats)).float())


class DiscriminatorBlock(nn.Module):
  """x [B, in_ch, H, W] -> [B, ch, H', W'], H' = H / 2 if down else H.

  first (the optimized block): conv3-ReLU-conv3-pool, shortcut pool-conv1.
  Otherwise: ReLU-conv3-ReLU-conv3-[pool], shortcut conv1-[pool] when the shape
  changes, else the identity.
  """

  def __init__(self, in_ch: int, ch: int, down: bool, first: bool, spectral: bool):
    super().__init__()
    self.down, self.first = down, first

    def conv(cin: int, kernel: int, scheme: str) -> nn.Module:
      layer = nn.Conv2d(cin, ch, kernel, padding=kernel // 2)
      _init_(layer, scheme)
      return _spectral(layer, spectral)

    self.conv1 = conv(in_ch, 3, "residual")
    self.conv2 = conv(ch, 3, "residual")
    self.shortcut = conv(in_ch, 1, "glorot") if first or down or in_ch != ch else None

  def _pool(self, x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2) if self.down else x

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.first:
      h = self.conv2(F.relu(self.conv1(x)))
      return self._pool(h) + self.shortcut(self._pool(x))
    h = self._pool(self.conv2(F.relu(self.conv1(F.relu(x)))))
    if self.shortcut is not None:
      x = self._pool(self.shortcut(x))
    return h + x


class ResNetDiscriminator(nn.Module):
  """images [B, C, H, W] -> logits [B] float32: an optimized down-block, down-blocks to 8x8,
  two plain blocks, ReLU, global sum pooling, a linear head."""

  def __init__(self, image_shape: tuple[int, int, int], ch: int, norm: str):
    super().__init__()
    height, _, channels = image_shape
    spectral = norm == "spectral"
    num_down = (height // 8).bit_length() - 1
    blocks = [DiscriminatorBlock(channels, ch, down=True, first=True, spectral=spectral)]
    blocks += [DiscriminatorBlock(ch, ch, down=True, first=False, spectral=spectral) for _ in range(num_down - 1)]
    blocks += [DiscriminatorBlock(ch, ch, down=False, first=False, spectral=spectral) for _ in range(2)]
    self.blocks = nn.Sequential(*blocks)
    head = nn.Linear(ch, 1)
    _init_(head, "glorot")
    self.head = _spectral(head, spectral)

  def forward(self, x: torch.Tensor, update_stats: bool) -> torch.Tensor:
    del update_stats  # no batch norm; the power iteration is set by set_power_iteration
    h = F.relu(self.blocks(x)).sum(dim=(2, 3))
    return self.head(h)[:, 0].float()


# ---- DCGAN (genimg_jax/models/dcgan.py). --------------------------------------------------------


class DCGANGenerator(nn.Module):
  """z [B, Z] float32 -> images [B, C, H, W] float32 in (-1, 1) (channels_last memory).

  dense to (H / 2^L) x (W / 2^L) x ch * m_L, then 4x4 stride-2 transposed convs to
  ch * m_{L-1}, ..., ch * m_1 and the image's channels; batch norm and ReLU after
  every layer but the last.
  """

  def __init__(self, image_shape: tuple[int, int, int], z_dim: int, ch: int, ch_mult: tuple[int, ...], norm: str,
               momentum: float):
    super().__init__()
    height, width, channels = image_shape
    levels = len(ch_mult)
    self.base = (height >> levels, width >> levels, ch * ch_mult[-1])
    normed = norm == "batch"  # No bias before batch norm, as ours.
    self.dense = nn.Linear(z_dim, math.prod(self.base), bias=not normed)
    widths = [ch * mult for mult in reversed(ch_mult)] + [channels]
    last = len(widths) - 2
    self.convs = nn.ModuleList(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=not normed or i == last)
                               for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])))
    # One norm per hidden layer: the dense one and every transposed conv but the last.
    self.norms = (nn.ModuleList(BatchNorm(width, momentum) for width in widths[:-1]) if norm == "batch"
                  else [None] * levels)
    for layer in [self.dense, *self.convs]:
      _init_(layer, "dcgan")

  def forward(self, z: torch.Tensor, update_stats: bool) -> torch.Tensor:
    h = self.dense(z).view(z.shape[0], *self.base).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
    h = _norm_relu(self.norms[0], h, update_stats)
    for conv, norm in zip(self.convs[:-1], self.norms[1:]):
      h = _norm_relu(norm, conv(h), update_stats)
    return torch.tanh(self.convs[-1](h).float())


class DCGANDiscriminator(nn.Module):
  """images [B, C, H, W] -> logits [B] float32: 4x4 stride-2 convs to ch * m_1, ..., ch * m_L, each
  followed by LeakyReLU(0.2) (batch norm before it on all but the first, for norm "batch"),
  then a linear head on the flattened features."""

  def __init__(self, image_shape: tuple[int, int, int], ch: int, ch_mult: tuple[int, ...], norm: str,
               momentum: float):
    super().__init__()
    height, width, channels = image_shape
    spectral = norm == "spectral"
    widths = [channels] + [ch * mult for mult in ch_mult]
    self.convs = nn.ModuleList()
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
      conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=not (norm == "batch" and i > 0))
      _init_(conv, "dcgan")
      self.convs.append(_spectral(conv, spectral))
    # Batch norm after every conv but the first; ours never uses its running averages.
    self.norms = nn.ModuleList(BatchNorm(width, momentum) for width in widths[2:]) if norm == "batch" else None
    levels = len(ch_mult)
    head = nn.Linear((height >> levels) * (width >> levels) * widths[-1], 1)
    _init_(head, "dcgan")
    self.head = _spectral(head, spectral)

  def forward(self, x: torch.Tensor, update_stats: bool) -> torch.Tensor:
    h = x
    for i, conv in enumerate(self.convs):
      h = conv(h)
      if self.norms is not None and i > 0:
        h = self.norms[i - 1](h, update_stats)
      h = F.leaky_relu(h, 0.2)
    # Flattened in ours' NHWC order: a free view of channels_last memory.
    return self.head(h.permute(0, 2, 3, 1).flatten(1))[:, 0].float()


# ---- The train step (genimg_jax/methods/gan.py). ------------------------------------------------


class DiscriminatorObjective(nn.Module):
  """real [B, H, W, C] float32, z [B, Z] -> the discriminator's loss (0-d float32); gradients
  reach only the discriminator (the fakes come from the generator without a graph)."""

  def __init__(self, generator: nn.Module, discriminator: nn.Module, loss: str):
    super().__init__()
    self.generator, self.discriminator = generator, discriminator
    self.loss = LOSSES[loss][0]

  def forward(self, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
      # The generator's running averages change only in its own update.
      fake = self.generator(z, update_stats=False)
    # Two passes, as ours: separate batch statistics and one power iteration each.
    real_logits = self.discriminator(real.permute(0, 3, 1, 2), update_stats=True)
    fake_logits = self.discriminator(fake, update_stats=True)
    return self.loss(real_logits, fake_logits)


class GeneratorObjective(nn.Module):
  """z [B, Z] -> the generator's loss (0-d float32); the discriminator keeps its state."""

  def __init__(self, generator: nn.Module, discriminator: nn.Module, loss: str):
    super().__init__()
    self.generator, self.discriminator = generator, discriminator
    self.loss = LOSSES[loss][1]

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    fake = self.generator(z, update_stats=True)
    return self.loss(self.discriminator(fake, update_stats=False))


def _validate(config) -> None:
  m, g = config.model, config.gan
  if m.arch not in ARCHS:
    raise ValueError(f"model.arch must be one of {ARCHS}, got {m.arch!r}")
  if m.g_norm not in G_NORMS or m.d_norm not in D_NORMS:
    raise ValueError(f"model.g_norm must be one of {G_NORMS} and model.d_norm one of {D_NORMS}")
  if m.arch == "resnet" and m.d_norm == "batch":
    raise ValueError("the resnet discriminator takes model.d_norm 'spectral' or 'none'")
  if m.num_classes:
    raise ValueError("the torch GAN reference is unconditional; set model.num_classes=0")
  if g.loss not in LOSSES:
    raise ValueError(f"the torch GAN reference has no gan.loss {g.loss!r}; choose one of {tuple(LOSSES)}")
  if g.penalty != "none":
    raise ValueError(f"the torch GAN reference has no discriminator penalties; got gan.penalty={g.penalty!r}")
  if config.train.batch_size % g.n_critic:
    raise ValueError(f"train.batch_size {config.train.batch_size} is not divisible by gan.n_critic {g.n_critic}")
  if m.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"model.dtype must be float32 or bfloat16, got {m.dtype!r}")


def _networks(config) -> tuple[nn.Module, nn.Module]:
  m = config.model
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  if m.arch == "dcgan":
    generator = DCGANGenerator(image_shape, m.z_dim, m.g_ch, tuple(m.ch_mult), m.g_norm, m.bn_momentum)
    discriminator = DCGANDiscriminator(image_shape, m.d_ch, tuple(m.ch_mult), m.d_norm, m.bn_momentum)
  else:
    generator = ResNetGenerator(image_shape, m.z_dim, m.g_ch, m.g_norm, m.bn_momentum)
    discriminator = ResNetDiscriminator(image_shape, m.d_ch, m.d_norm)
  return generator, discriminator


def build(config, device: torch.device, *, compile: bool) -> Reference:
  """The GAN of `config` on `device` with its n_critic discriminator updates, generator update and EMA."""
  _validate(config)
  m, g = config.model, config.gan
  generator, discriminator = _networks(config)
  generator = generator.to(device, memory_format=torch.channels_last).train()
  discriminator = discriminator.to(device, memory_format=torch.channels_last).train()
  # The sampling generator: the EMA of the weights, with batch-norm averages of its own.
  ema_generator = copy.deepcopy(generator).requires_grad_(False)
  d_loss_fn = maybe_compile(DiscriminatorObjective(generator, discriminator, g.loss), compile)
  g_loss_fn = maybe_compile(GeneratorObjective(generator, discriminator, g.loss), compile)
  ema_pass = maybe_compile(ema_generator, compile)
  g_params = [p for p in generator.parameters() if p.requires_grad]
  d_params = [p for p in discriminator.parameters() if p.requires_grad]
  g_update = make_update(g_params, config.g_optimizer, device)
  d_update = make_update(d_params, config.d_optimizer, device)
  ema_update = make_ema(g_params, config.ema.decay, ema=list(ema_generator.parameters()))
  n_critic = g.n_critic

  def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """images [n_critic * B, H, W, C] -> the mean discriminator loss over the n_critic updates."""
    del labels  # unconditional
    batch = images.shape[0] // n_critic
    d_losses = []
    set_power_iteration(discriminator, True)
    for i in range(n_critic):
      z = torch.randn(batch, m.z_dim, device=device)
      with autocast(config, device):
        d_loss = d_loss_fn(images[i::n_critic], z)
      d_loss.backward()
      d_update()
      d_losses.append(d_loss.detach())

    z = torch.randn(batch, m.z_dim, device=device)
    set_power_iteration(discriminator, False)
    discriminator.requires_grad_(False)  # no weight gradients for the discriminator here, as ours
    with autocast(config, device):
      g_loss = g_loss_fn(z)
    g_loss.backward()
    g_update()
    discriminator.requires_grad_(True)

    ema_update()
    with torch.no_grad(), autocast(config, device):
      ema_pass(z, update_stats=True)
    return torch.stack(d_losses).mean()

  return Reference(modules={"generator": generator, "discriminator": discriminator}, train_step=train_step)
