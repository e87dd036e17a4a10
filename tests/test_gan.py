"""The GAN method: configs, validation, model shapes, and what each update may change."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import config as config_lib
from genimg_jax import methods
from genimg_jax.errors import ConfigError
from genimg_jax.methods import gan
from helpers import REPO

CONFIGS = os.path.join(REPO, "configs")
DIGITS_GAN = os.path.join(CONFIGS, "dcgan_digits.py")

# dcgan_digits shrunk: conditional (class-conditional BN, projection D), spectral norm and a
# lazy R1 penalty in D, two discriminator updates of 8 per step.
TINY = {
    "model.z_dim": 8, "model.g_ch": 8, "model.d_ch": 8, "model.num_classes": 10,
    "model.g_conditioning": "batch_norm", "model.d_norm": "spectral", "gan.loss": "hinge",
    "gan.n_critic": 2, "gan.penalty": "r1", "gan.penalty_weight": 1.0, "gan.penalty_every": 2,
    "train.batch_size": 16,
}


def _load(path, **fields):
  return config_lib.load(path, [f"--config.{k}={v}" for k, v in fields.items()])


def _num_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", ["dcgan_digits", "dcgan_digits_cond", "dcgan_mnist", "sngan_cifar10"])
def test_configs_load_and_validate(name):
  config = config_lib.load(os.path.join(CONFIGS, f"{name}.py"), [])
  config_lib.validate_common(config)
  method = methods.make(config)
  state = jax.eval_shape(method.init, jax.random.PRNGKey(0))
  samples = jax.eval_shape(functools.partial(method.sample, num=4), state.ema_params, jax.random.PRNGKey(0))
  assert samples.shape == (4,) + method.image_shape and samples.dtype == jnp.float32
  assert set(state.params) == set(state.opt_state) == set(state.model_state) == {"generator", "discriminator"}
  assert jax.tree.structure(state.ema_params["params"]) == jax.tree.structure(state.params["generator"])


def test_sngan_cifar10_is_the_published_setup():
  config = config_lib.load(os.path.join(CONFIGS, "sngan_cifar10.py"), [])
  assert (config.gan.loss, config.gan.n_critic, config.train.steps) == ("hinge", 5, 50000)
  assert config.train.batch_size // config.gan.n_critic == 64
  for opt in (config.g_optimizer, config.d_optimizer):
    assert (opt.learning_rate, opt.b1, opt.b2, opt.grad_clip) == (2e-4, 0.0, 0.9, 0.0)
  state = jax.eval_shape(methods.make(config).init, jax.random.PRNGKey(0))
  # Miyato et al. (2018), CIFAR-10 ResNet: G 4.3M and D 1.0M parameters.
  assert round(_num_params(state.params["generator"]) / 1e6, 1) == 4.3
  assert round(_num_params(state.params["discriminator"]) / 1e6, 1) == 1.1
  assert len(jax.tree.leaves(state.model_state["discriminator"]["spectral"])) == 2 * 11  # 10 convs, the head


@pytest.mark.parametrize("arch,size,ch_mult,channels", [
    ("dcgan", 28, (1, 2), 1), ("dcgan", 32, (1, 2, 4), 3), ("dcgan", 64, (1, 2, 4, 8), 3),
    ("resnet", 32, (1,), 3), ("resnet", 64, (1,), 3)])
def test_model_shapes(arch, size, ch_mult, channels):
  config = _load(DIGITS_GAN, **{"model.arch": arch, "data.image_size": size, "data.channels": channels,
                                "model.ch_mult": ch_mult, "model.d_norm": "spectral", "model.num_classes": 3,
                                "model.g_ch": 4, "model.d_ch": 4, "gan.loss": "wasserstein",
                                "gan.penalty": "gradient_penalty", "gan.penalty_weight": 10.0})
  parts = gan.make_parts(config)
  state = jax.eval_shape(functools.partial(gan.init, parts), jax.random.PRNGKey(0))
  samples = jax.eval_shape(functools.partial(gan.sample, parts, num=2), state.ema_params, jax.random.PRNGKey(0))
  assert samples.shape == (2, size, size, channels)
  batch = {"image": jax.ShapeDtypeStruct((4, size, size, channels), jnp.float32),
           "label": jax.ShapeDtypeStruct((4,), jnp.int32)}
  new_state, metrics = jax.eval_shape(functools.partial(gan.train_step, parts), state, batch, jax.random.PRNGKey(0))
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert {"loss", "d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm", "penalty"} <= set(metrics)


@pytest.mark.parametrize("field,value,where", [
    ("model.arch", "'stylegan'", "config.model.arch"),
    ("model.d_norm", "'layer'", "config.model.d_norm"),
    ("data.image_size", 18, "config.data.image_size"),  # not divisible by 2^len(model.ch_mult) = 4
    ("gan.loss", "'least_squares'", "config.gan.loss"),
    ("gan.penalty", "'r3'", "config.gan.penalty"),
    ("gan.penalty", "'r1'", "config.gan.penalty"),  # needs a discriminator without batch norm
    ("gan.n_critic", 3, "config.train.batch_size"),  # 64 is not divisible by 3
    ("gan.penalty_every", 0, "config.gan.penalty_every"),
    ("d_optimizer.b1", 1.0, "config.d_optimizer.b1"),
    ("g_optimizer.learning_rate", 0.0, "config.g_optimizer.learning_rate"),
    ("sample.sampler", "'ddim'", "config.sample.sampler"),
])
def test_validation_names_the_field(field, value, where):
  config = config_lib.load(DIGITS_GAN, [f"--config.{field}={str(value).strip(chr(39))}"])
  with pytest.raises(ConfigError) as e:
    methods.make(config)
  assert e.value.where == where


def test_resnet_needs_power_of_two_and_no_batch_norm_in_d():
  with pytest.raises(ConfigError, match="power of two"):
    methods.make(_load(DIGITS_GAN, **{"model.arch": "resnet", "data.image_size": 24, "model.d_norm": "none"}))
  with pytest.raises(ConfigError) as e:
    methods.make(_load(DIGITS_GAN, **{"model.arch": "resnet"}))
  assert e.value.where == "config.model.d_norm"


def test_user_loss_by_import_path(tmp_path, monkeypatch):
  """A relativistic average loss (Jolicoeur-Martineau 2018) from the user's own file."""
  (tmp_path / "my_gan_losses.py").write_text(
      "import jax\nimport jax.numpy as jnp\n\n\n"
      "def relativistic(real, fake):\n"
      "  d = jnp.mean(jax.nn.softplus(-(real - fake.mean()))) + jnp.mean(jax.nn.softplus(fake - real.mean()))\n"
      "  g = jnp.mean(jax.nn.softplus(-(fake - real.mean()))) + jnp.mean(jax.nn.softplus(real - fake.mean()))\n"
      "  return d, g\n")
  monkeypatch.chdir(tmp_path)
  config = _load(DIGITS_GAN, **dict(TINY, **{"gan.loss": "my_gan_losses:relativistic"}))
  parts = gan.make_parts(config)
  state = gan.init(parts, jax.random.PRNGKey(0))
  real = {"image": jnp.zeros((8, 16, 16, 1)), "label": jnp.arange(8) % 10}
  # The real logits reach the generator's loss: its gradient depends on the real images.
  update = jax.jit(functools.partial(gan.generator_update, parts))
  _, m1 = update(state, real, jax.random.PRNGKey(1))
  _, m2 = update(state, dict(real, image=real["image"] + 0.5), jax.random.PRNGKey(1))
  assert float(m1["g_grad_norm"]) != float(m2["g_grad_norm"])


@pytest.fixture(scope="module")
def tiny():
  """(parts, compiled functions, initial state, a batch of 16 noise images with labels)."""
  config = _load(DIGITS_GAN, **TINY)
  parts = gan.make_parts(config)
  state = jax.jit(functools.partial(gan.init, parts))(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(7)
  batch = {"image": jax.random.uniform(key, (16, 16, 16, 1), minval=-1, maxval=1),
           "label": jnp.arange(16, dtype=jnp.int32) % 10}
  fns = {name: jax.jit(functools.partial(fn, parts)) for name, fn in
         (("d", gan.discriminator_update), ("g", gan.generator_update), ("step", gan.train_step))}
  return parts, fns, state, batch


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _half(batch):
  return jax.tree.map(lambda x: x[:8], batch)


def test_discriminator_update_leaves_the_generator_alone(tiny):
  _, fns, state, batch = tiny
  new, metrics = fns["d"](state, _half(batch), jax.random.PRNGKey(1), jnp.int32(0))
  for part in ("params", "opt_state", "model_state"):
    assert _equal(getattr(new, part)["generator"], getattr(state, part)["generator"]), part
    assert not _equal(getattr(new, part)["discriminator"], getattr(state, part)["discriminator"]), part
  assert _equal(new.ema_params, state.ema_params) and int(new.step) == int(state.step)
  assert float(metrics["penalty"]) > 0  # index 0: the lazy R1 applies


def test_generator_update_leaves_the_discriminator_alone(tiny):
  _, fns, state, batch = tiny
  new, _ = fns["g"](state, _half(batch), jax.random.PRNGKey(1))
  for part in ("params", "opt_state", "model_state"):
    assert _equal(getattr(new, part)["discriminator"], getattr(state, part)["discriminator"]), part
    assert not _equal(getattr(new, part)["generator"], getattr(state, part)["generator"]), part
  # The EMA generator moved towards the new weights, and its batch statistics were re-estimated.
  assert not _equal(new.ema_params["params"], state.ema_params["params"])
  assert not _equal(new.ema_params["batch_stats"], state.ema_params["batch_stats"])


def test_lazy_penalty_only_every_kth_update(tiny):
  _, fns, state, batch = tiny
  _, skipped = fns["d"](state, _half(batch), jax.random.PRNGKey(1), jnp.int32(1))
  _, applied = fns["d"](state, _half(batch), jax.random.PRNGKey(1), jnp.int32(2))
  assert float(skipped["penalty"]) == 0.0 and float(applied["penalty"]) > 0.0
  assert float(skipped["d_loss"]) == float(applied["d_loss"])  # same data, same loss
  assert float(skipped["d_grad_norm"]) != float(applied["d_grad_norm"])  # the penalty's gradient


def test_train_step_is_deterministic_under_a_seed(tiny):
  _, fns, state, batch = tiny
  a, metrics_a = fns["step"](state, batch, jax.random.PRNGKey(5))
  b, metrics_b = fns["step"](state, batch, jax.random.PRNGKey(5))
  c, _ = fns["step"](state, batch, jax.random.PRNGKey(6))
  assert _equal(a, b) and _equal(metrics_a, metrics_b)
  assert not _equal(a.params, c.params)
  assert int(a.step) == 1
  assert all(np.isfinite(float(v)) for v in metrics_a.values())
  # Both players and the spectral-norm state moved.
  for part in ("generator", "discriminator"):
    assert not _equal(a.params[part], state.params[part])
  assert not _equal(a.model_state["discriminator"]["spectral"], state.model_state["discriminator"]["spectral"])


def test_train_step_runs_n_critic_discriminator_updates(tiny):
  """train_step == discriminator updates on slices 0 and 1 (examples i::2), then the generator update."""
  _, fns, state, batch = tiny
  rng = jax.random.PRNGKey(5)
  d_rng, g_rng = jax.random.split(rng)
  expected = state
  for i in range(2):
    expected, _ = fns["d"](expected, jax.tree.map(lambda x: x[i::2], batch), jax.random.fold_in(d_rng, i),
                           jnp.int32(i))
  expected, _ = fns["g"](expected, jax.tree.map(lambda x: x[1::2], batch), g_rng)
  got, _ = fns["step"](state, batch, rng)
  # Adam's first step is lr * g / (|g| + eps): gradient elements near eps turn the two programs' rounding
  # differences into parameter differences of ~1e-6; a wrong slice, key or order moves them by ~lr (2e-4).
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
               expected.replace(step=got.step), got)


def test_sampling_is_deterministic_and_in_range(tiny):
  parts, _, state, _ = tiny
  samples = jax.jit(functools.partial(gan.sample, parts, num=20))(state.ema_params, jax.random.PRNGKey(0))
  assert samples.shape == (20, 16, 16, 1)
  assert float(jnp.min(samples)) >= -1.0 and float(jnp.max(samples)) <= 1.0
  again = jax.jit(functools.partial(gan.sample, parts, num=20))(state.ema_params, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(samples), np.asarray(again))
