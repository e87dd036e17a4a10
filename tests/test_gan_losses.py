"""Adversarial losses, discriminator penalties and spectral norm against hand values,
finite differences and numpy's SVD."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax.losses import adversarial
from genimg_jax.models import gan_layers
from genimg_jax.models.dcgan import DCGANDiscriminator
from genimg_jax.models.sngan import ResNetDiscriminator

REAL = [2.0, 0.5, -1.0]
FAKE = [-3.0, 0.2, 1.0]


def _softplus(x):
  return np.log1p(np.exp(x))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x)))


# (name, discriminator loss, generator loss) on REAL and FAKE, worked out by hand.
HAND_VALUES = [
    ("non_saturating",
     -np.mean(np.log(_sigmoid(REAL))) - np.mean(np.log(1 - _sigmoid(FAKE))),
     -np.mean(np.log(_sigmoid(FAKE)))),
    ("minimax",
     -np.mean(np.log(_sigmoid(REAL))) - np.mean(np.log(1 - _sigmoid(FAKE))),
     np.mean(np.log(1 - _sigmoid(FAKE)))),
    # relu(1 - r) = (0, 0.5, 2), relu(1 + f) = (0, 1.2, 2): (2.5 + 3.2) / 3; -mean(f) = 0.6.
    ("hinge", 1.9, 0.6),
    # mean(f) - mean(r) = -0.6 - 0.5.
    ("wasserstein", -1.1, 0.6),
]


@pytest.mark.parametrize("name,d_expected,g_expected", HAND_VALUES)
def test_loss_values(name, d_expected, g_expected):
  d_loss, g_loss = adversarial.LOSSES[name](jnp.asarray(REAL), jnp.asarray(FAKE))
  np.testing.assert_allclose(float(d_loss), d_expected, rtol=1e-6)
  np.testing.assert_allclose(float(g_loss), g_expected, rtol=1e-6)


def test_non_saturating_matches_softplus_form():
  d_loss, g_loss = adversarial.non_saturating(jnp.asarray(REAL), jnp.asarray(FAKE))
  np.testing.assert_allclose(float(d_loss), np.mean(_softplus(-np.asarray(REAL))) + np.mean(_softplus(FAKE)),
                             rtol=1e-6)
  np.testing.assert_allclose(float(g_loss), np.mean(_softplus(-np.asarray(FAKE))), rtol=1e-6)


def _central_differences(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[i] = h
    grad[i] = (f(x + step) - f(x - step)) / (2 * h)
  return grad


@pytest.mark.parametrize("name", sorted(adversarial.LOSSES))
def test_loss_gradients_match_finite_differences(name):
  loss = adversarial.LOSSES[name]
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=5) * 2, rng.normal(size=5) * 2  # away from the hinge kinks
  with jax.enable_x64():
    for player in (0, 1):
      for which in (0, 1):
        def f(x, player=player, which=which):
          args = [jnp.asarray(real), jnp.asarray(fake)]
          args[which] = jnp.asarray(x)
          return float(loss(*args)[player])

        def jax_f(x, player=player, which=which):
          args = [jnp.asarray(real), jnp.asarray(fake)]
          args[which] = x
          return loss(*args)[player]

        x = (real, fake)[which]
        np.testing.assert_allclose(np.asarray(jax.grad(jax_f)(jnp.asarray(x))), _central_differences(f, x),
                                   rtol=1e-6, atol=1e-9)


# ---- Penalties: a tiny two-layer discriminator with a per-class offset, in float64. -----------

def _tiny_discriminator(weights, images, labels):
  """logits [B] = v . tanh(W flatten(x) + b) + c[label]."""
  w, b, v, c = weights
  hidden = jnp.tanh(images.reshape(images.shape[0], -1) @ w + b)
  return hidden @ v + c[labels]


def _tiny_setup():
  rng = np.random.default_rng(1)
  weights = (rng.normal(size=(12, 5)) * 0.5, rng.normal(size=5) * 0.1, rng.normal(size=5), rng.normal(size=3))
  real = {"image": rng.uniform(-1, 1, size=(4, 2, 2, 3)), "label": np.array([0, 2, 1, 2])}
  fake = {"image": rng.uniform(-1, 1, size=(4, 2, 2, 3)), "label": np.array([1, 1, 0, 2])}
  return weights, real, fake


def _fd_input_gradients(weights, images, labels) -> np.ndarray:
  """d D(x_i) / d x_i per example, by central differences in numpy float64."""
  def logit(i, x):
    return float(_tiny_discriminator(weights, jnp.asarray(x[None]), jnp.asarray(labels[i:i + 1]))[0])

  return np.stack([_central_differences(functools.partial(logit, i), images[i]) for i in range(len(images))])


@pytest.mark.parametrize("name", sorted(adversarial.PENALTIES))
def test_penalty_values_match_finite_difference_gradients(name):
  weights, real, fake = _tiny_setup()
  key = jax.random.PRNGKey(3)
  with jax.enable_x64():
    jweights = tuple(jnp.asarray(w) for w in weights)
    disc = functools.partial(_tiny_discriminator, jweights)
    jreal = {k: jnp.asarray(v) for k, v in real.items()}
    jfake = {k: jnp.asarray(v) for k, v in fake.items()}
    got = float(adversarial.PENALTIES[name](disc, jreal, jfake, key))
    if name == "gradient_penalty":
      e = np.asarray(jax.random.uniform(key, (4, 1, 1, 1), jnp.float64))
      mixed = e * real["image"] + (1 - e) * fake["image"]
      norms = np.linalg.norm(_fd_input_gradients(jweights, mixed, real["label"]).reshape(4, -1), axis=1)
      expected = np.mean((norms - 1.0) ** 2)
    else:
      batch = real if name == "r1" else fake
      grads = _fd_input_gradients(jweights, batch["image"], batch["label"])
      expected = np.mean(np.sum(grads.reshape(4, -1) ** 2, axis=1))
  assert expected > 1e-3  # not trivially zero
  np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(adversarial.PENALTIES))
def test_penalty_parameter_gradients_match_finite_differences(name):
  """The discriminator is trained on the penalty: its gradient w.r.t. D's weights (double backprop)."""
  weights, real, fake = _tiny_setup()
  key = jax.random.PRNGKey(4)
  with jax.enable_x64():
    jreal = {k: jnp.asarray(v) for k, v in real.items()}
    jfake = {k: jnp.asarray(v) for k, v in fake.items()}

    def penalty_of_first_layer(w):
      jweights = (jnp.asarray(w),) + tuple(jnp.asarray(x) for x in weights[1:])
      return adversarial.PENALTIES[name](functools.partial(_tiny_discriminator, jweights), jreal, jfake, key)

    got = np.asarray(jax.grad(penalty_of_first_layer)(jnp.asarray(weights[0])))
    expected = _central_differences(lambda w: float(penalty_of_first_layer(w)), weights[0])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)


# ---- Spectral norm. ------------------------------------------------------------------------

def _normalised_kernels(params, spectral) -> dict[str, np.ndarray]:
  """{layer/kernel: kernel / stored sigma, as a matrix [prod(shape[:-1]), out]} of each SN layer."""
  flat_params = {"/".join(str(k.key) for k in path): np.asarray(x)
                 for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  out = {}
  for path, sigma in jax.tree_util.tree_flatten_with_path(spectral)[0]:
    name = "/".join(str(k.key) for k in path)
    if not name.endswith("/sigma"):
      continue
    # Stored as <parent path>/SpectralNorm_i/<layer>/<variable>/sigma; the layer's params sit in the parent.
    parts = name.split("/")
    parent, layer_var = parts[:-4], parts[-3:-1]
    weight = flat_params["/".join(parent + layer_var)]
    out[name] = weight.reshape(-1, weight.shape[-1]) / float(sigma)
  return out


@pytest.mark.parametrize("model", [
    DCGANDiscriminator(ch=4, ch_mult=(1, 2), norm="spectral", num_classes=3),
    ResNetDiscriminator(ch=4, norm="spectral", num_classes=3),
], ids=["dcgan", "resnet"])
def test_spectral_norm_top_singular_value_is_one(model):
  """After enough power iterations (one per train-time pass) every normalised weight matrix
  (kernels, the linear head, the class embedding) has top singular value 1 +- 1e-3."""
  images, labels = jnp.zeros((2, 16, 16, 1)), jnp.array([0, 2])
  variables = model.init(jax.random.PRNGKey(0), images, labels, update=False)
  params, spectral = variables["params"], variables[gan_layers.SPECTRAL]

  @jax.jit
  def iterate(spectral):
    def body(_, s):
      _, new = model.apply({"params": params, gan_layers.SPECTRAL: s}, images, labels, update=True,
                           mutable=[gan_layers.SPECTRAL])
      return new[gan_layers.SPECTRAL]
    return jax.lax.fori_loop(0, 300, body, spectral)

  before = _normalised_kernels(params, spectral)
  after = _normalised_kernels(params, iterate(spectral))
  assert len(after) == (4 if isinstance(model, DCGANDiscriminator) else 9)  # every conv, linear, embed
  for name, matrix in after.items():
    top = np.linalg.svd(matrix, compute_uv=False)[0]
    assert abs(top - 1.0) < 1e-3, (name, top)
  # The initial sigma (1.0) is not the answer: the stored state is what converged.
  assert any(abs(np.linalg.svd(m, compute_uv=False)[0] - 1.0) > 0.1 for m in before.values())


def test_spectral_norm_without_update_keeps_the_state():
  model = DCGANDiscriminator(ch=4, ch_mult=(1, 2), norm="spectral")
  images, labels = jnp.ones((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), images, labels, update=False)
  _, same = model.apply(variables, images, labels, update=False, mutable=[gan_layers.SPECTRAL])
  _, moved = model.apply(variables, images, labels, update=True, mutable=[gan_layers.SPECTRAL])
  stored = variables[gan_layers.SPECTRAL]
  jax.tree.map(np.testing.assert_array_equal, same[gan_layers.SPECTRAL], stored)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(stored)))
