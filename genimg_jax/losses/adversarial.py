"""Adversarial losses and discriminator penalties for GANs, as pure functions.

A loss maps the discriminator's logits on a real and a fake batch to both players'
objectives, each to be minimised:

  loss(real_logits [B], fake_logits [B]) -> (discriminator loss, generator loss)

with float32 scalars. The discriminator is trained on the first, the generator on
the second (real logits enter the generator loss as constants, so relativistic
losses fit the same signature). A penalty regularises the discriminator:

  penalty(discriminate, real, fake, rng) -> float32 scalar

where `discriminate(images [B, H, W, C], labels [B]) -> logits [B]` and `real`,
`fake` are batches {"image": [B, H, W, C] float32, "label": [B] int32}. Penalties
take per-example input gradients, so the discriminator must not mix examples
(no batch norm). Config selects them by name, `gan.loss` and `gan.penalty`, from LOSSES and
PENALTIES or as the user's own `module:function`.
"""

import jax
import jax.numpy as jnp

from genimg_jax.registry import Registry

LOSSES = Registry("gan.loss", "GAN loss")
PENALTIES = Registry("gan.penalty", "GAN penalty")

# Keeps the norm's gradient finite where the input gradient is exactly zero.
_NORM_EPS = 1e-12


@LOSSES.register("non_saturating")
def non_saturating(real_logits: jax.Array, fake_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Goodfellow et al. (2014) with the non-saturating generator loss.

  D: -log s(r) - log(1 - s(f)) = softplus(-r) + softplus(f), s the sigmoid.
  G: -log s(f) = softplus(-f). Each averaged over the batch.
  """
  d_loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
  return d_loss, jnp.mean(jax.nn.softplus(-fake_logits))


@LOSSES.register("minimax")
def minimax(real_logits: jax.Array, fake_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Goodfellow et al. (2014), the original zero-sum game.

  D: as `non_saturating`. G: log(1 - s(f)) = -softplus(f), the negated second D term.
  """
  d_loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
  return d_loss, -jnp.mean(jax.nn.softplus(fake_logits))


@LOSSES.register("hinge")
def hinge(real_logits: jax.Array, fake_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Hinge loss (Lim & Ye 2017; Miyato et al. 2018). D: relu(1 - r) + relu(1 + f). G: -f."""
  d_loss = jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
  return d_loss, -jnp.mean(fake_logits)


@LOSSES.register("wasserstein")
def wasserstein(real_logits: jax.Array, fake_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Wasserstein GAN (Arjovsky et al. 2017): D (the critic): f - r. G: -f.

  The critic must be kept Lipschitz, e.g. by `gradient_penalty` or spectral norm.
  """
  return jnp.mean(fake_logits) - jnp.mean(real_logits), -jnp.mean(fake_logits)


def input_gradients(discriminate, images: jax.Array, labels: jax.Array) -> jax.Array:
  """d logits_i / d images_i for each example i: [B, H, W, C] float32.

  The gradient of the summed logits; it is per example as long as the
  discriminator does not mix examples.
  """
  return jax.grad(lambda x: jnp.sum(discriminate(x, labels)))(images)


def _squared_norms(gradients: jax.Array) -> jax.Array:
  return jnp.sum(jnp.square(gradients.reshape(gradients.shape[0], -1)), axis=-1)


@PENALTIES.register("gradient_penalty")
def gradient_penalty(discriminate, real: dict, fake: dict, rng: jax.Array) -> jax.Array:
  """WGAN-GP (Gulrajani et al. 2017): mean_i (||grad D(x_i)||_2 - 1)^2.

  x_i = e_i real_i + (1 - e_i) fake_i with e_i ~ U[0, 1] per example from `rng`;
  a conditional discriminator sees the real labels at the interpolates.
  """
  shape = (real["image"].shape[0],) + (1,) * (real["image"].ndim - 1)
  e = jax.random.uniform(rng, shape, real["image"].dtype)
  mixed = e * real["image"] + (1.0 - e) * fake["image"]
  norms = jnp.sqrt(_squared_norms(input_gradients(discriminate, mixed, real["label"])) + _NORM_EPS)
  return jnp.mean(jnp.square(norms - 1.0))


@PENALTIES.register("r1")
def r1(discriminate, real: dict, fake: dict, rng: jax.Array) -> jax.Array:
  """R1 (Mescheder et al. 2018): mean_i ||grad D(real_i)||^2. The usual gamma / 2 is the weight."""
  del fake, rng
  return jnp.mean(_squared_norms(input_gradients(discriminate, real["image"], real["label"])))


@PENALTIES.register("r2")
def r2(discriminate, real: dict, fake: dict, rng: jax.Array) -> jax.Array:
  """R2 (Mescheder et al. 2018): mean_i ||grad D(fake_i)||^2, R1 on the fake batch."""
  del real, rng
  return jnp.mean(_squared_norms(input_gradients(discriminate, fake["image"], fake["label"])))
