"""Choosing components by name: built-ins, the user's own as 'module:function', and the errors."""

import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from genimg_jax import config as config_lib
from genimg_jax import methods
from genimg_jax.data import datasets
from genimg_jax.errors import ConfigError
from genimg_jax.losses import adversarial, likelihoods
from genimg_jax.losses import autoregressive as arl
from genimg_jax.methods import autoregressive_sampling, gan, vae
from genimg_jax.registry import Registry
from helpers import REPO

CONFIGS = os.path.join(REPO, "configs")
USER_MODULE = "my_registry_components"
USER_CODE = '''
import jax.numpy as jnp

from genimg_jax.data.datasets import CatalogEntry
from genimg_jax.losses import autoregressive, likelihoods

NOT_A_FUNCTION = 3
ENTRY = CatalogEntry("my_tfds_set", ("train", "test"), (20, 20), 3)


def least_squares(real, fake):
  """LSGAN (Mao et al. 2017)."""
  return jnp.mean((real - 1.0) ** 2) + jnp.mean(fake ** 2), jnp.mean((fake - 1.0) ** 2)


def no_penalty(discriminate, real, fake, rng):
  return jnp.zeros((), jnp.float32)


def nll_and_more(params, batch, rng, *, ctx):
  loss, metrics = autoregressive.nll_loss(params, batch, rng, ctx=ctx)
  return loss, dict(metrics, mine=loss)


def all_white(model, num, rng, options):
  """An autoregressive sampler that ignores the model: every token 255."""
  return jnp.full((num, model.num_tokens), 255, jnp.int32)


def fixed_scale_logistic(channels, options):
  """A discretised logistic per sub-pixel with the decoder giving only the means."""
  return likelihoods.Likelihood(
      num_params=channels,
      log_prob=lambda p, x: likelihoods.discretized_logistic_log_prob(x, p, -3.0).sum(-1),
      mean=lambda p: jnp.clip(p, -1.0, 1.0), sample=lambda p, rng: likelihoods.quantize(p))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  """The user's own components in a file of the working directory, as `python -m` would import them."""
  (tmp_path / f"{USER_MODULE}.py").write_text(textwrap.dedent(USER_CODE))
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  yield USER_MODULE
  sys.modules.pop(USER_MODULE, None)


def _load(name, **fields):
  return config_lib.load(os.path.join(CONFIGS, f"{name}.py"), [f"--config.{k}={v}" for k, v in fields.items()])


def test_a_users_gan_loss_and_penalty_are_selected_by_import_path(user_module):
  config = _load("dcgan_digits", **{"gan.loss": f"{user_module}:least_squares",
                                    "gan.penalty": f"{user_module}:no_penalty", "model.d_norm": "spectral"})
  parts = gan.make_parts(config)
  user = sys.modules[user_module]
  assert parts.loss is user.least_squares and parts.penalty is user.no_penalty


def test_a_users_autoregressive_loss_is_selected_by_import_path(user_module):
  method = methods.make(_load("igpt_digits", **{"loss.name": f"{user_module}:nll_and_more", "model.num_layers": 1,
                                                "model.width": 32, "model.num_heads": 2}))
  key = jax.random.PRNGKey(0)
  params = jax.eval_shape(method.init, key).params
  batch = {"image": jax.ShapeDtypeStruct((2,) + method.image_shape, jnp.float32),
           "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
  assert "mine" in jax.eval_shape(method.eval_step, params, batch, key)


def test_a_users_autoregressive_sampler_is_selected_by_import_path(user_module):
  method = methods.make(_load("igpt_digits", **{"sample.sampler": f"{user_module}:all_white"}))
  images = method.sample(None, jax.random.PRNGKey(0), 2)  # The sampler never reads the parameters.
  assert images.shape == (2,) + method.image_shape and bool(jnp.all(images == 1.0))


def test_a_users_vae_likelihood_is_selected_by_import_path(user_module):
  parts = vae.build(_load("vae_digits", **{"likelihood.name": f"{user_module}:fixed_scale_logistic"}))
  assert parts.likelihood.num_params == 1 and parts.model.out_ch == 1
  x = jnp.asarray(likelihoods.PIXEL_FLOATS)[:, None, None, None]  # the 256 values of one pixel
  total = jnp.exp(parts.likelihood.log_prob(jnp.full((256, 1, 1, 1), 0.3), x)).sum()
  assert abs(float(total) - 1.0) < 1e-5


def test_a_users_data_set_is_a_catalog_entry_by_import_path(user_module):
  data = _load("dcgan_digits").data.copy_and_resolve_references()
  data.name = f"{user_module}:ENTRY"
  assert datasets.catalog_entry(data) is sys.modules[user_module].ENTRY
  data.name = f"{user_module}:NOT_A_FUNCTION"
  with pytest.raises(ConfigError, match=r"is not a CatalogEntry \(type int\)") as e:
    datasets.catalog_entry(data)
  assert e.value.where == "config.data.name"


def test_an_import_path_to_something_not_callable_is_refused(user_module):
  with pytest.raises(ConfigError, match=f"'{user_module}:NOT_A_FUNCTION' is not a function") as e:
    gan.make_parts(_load("dcgan_digits", **{"gan.loss": f"{user_module}:NOT_A_FUNCTION"}))
  assert e.value.where == "config.gan.loss"


REGISTRIES = [
    (adversarial.LOSSES, "config.gan.loss", "GAN loss"),
    (adversarial.PENALTIES, "config.gan.penalty", "GAN penalty"),
    (gan.ARCHITECTURES, "config.model.arch", "GAN architecture"),
    (gan.SAMPLERS, "config.sample.sampler", "GAN sampler"),
    (arl.LOSSES, "config.loss.name", "autoregressive loss"),
    (autoregressive_sampling.SAMPLERS, "config.sample.sampler", "autoregressive sampler"),
    (likelihoods.LIKELIHOODS, "config.likelihood.name", "likelihood"),
    (methods.METHODS, "config.method", "method"),
    (datasets.CATALOG, "config.data.name", "data set"),
]


@pytest.mark.parametrize("registry,where,kind", REGISTRIES, ids=[kind for _, _, kind in REGISTRIES])
def test_an_unknown_name_names_the_field_and_lists_the_built_ins(registry, where, kind):
  with pytest.raises(ConfigError) as e:
    registry.resolve("nope")
  assert e.value.where == where
  assert str(e.value) == (f"{where}: unknown {kind} 'nope'; built-in: {', '.join(sorted(registry))}; "
                          "or give your own as 'module:attribute'")


def test_a_config_with_an_unknown_name_fails_at_make():
  with pytest.raises(ConfigError) as e:
    methods.make(_load("dcgan_digits", **{"gan.loss": "least_squares"}))
  assert str(e.value) == ("config.gan.loss: unknown GAN loss 'least_squares'; built-in: hinge, minimax, "
                          "non_saturating, wasserstein; or give your own as 'module:attribute'")


def test_a_name_registered_twice_is_refused():
  with pytest.raises(ValueError, match="GAN loss 'hinge' is registered twice"):
    adversarial.LOSSES.register("hinge")(adversarial.minimax)
  assert adversarial.LOSSES["hinge"] is adversarial.hinge


def test_components_owning_one_field_must_agree_on_its_default():
  architectures = Registry("model.arch", "toy architecture")
  architectures.register("small", fields={"width": 8, "depth": 2})(lambda: None)
  architectures.register("deep", fields={"depth": 2, "blocks": 3})(lambda: None)  # same default: shared
  with pytest.raises(ValueError, match="toy architecture 'wide': field 'width' defaults to 16, but 'small' owns "
                                       "it with 8"):
    architectures.register("wide", fields={"width": 16})(lambda: None)
  assert "wide" not in architectures
  assert architectures.config_fields() == {"width": 8, "depth": 2, "blocks": 3}


def test_default_sections_are_the_shared_fields_plus_those_the_components_own():
  """Saved runs and the configs in configs/ keep loading: the keys and defaults are those they were written with."""
  assert gan.default_config().model.to_dict() == {
      "arch": "dcgan", "z_dim": 100, "g_ch": 64, "d_ch": 64, "ch_mult": (1, 2, 4, 8), "g_norm": "batch",
      "d_norm": "batch", "num_classes": 0, "g_conditioning": "embedding", "bn_momentum": 0.9, "dtype": "float32"}
  assert gan.ARCHITECTURES.fields == {"dcgan": {"ch_mult": (1, 2, 4, 8)}, "resnet": {}}
  assert vae.default_config().likelihood.to_dict() == {"name": "logistic_mixture", "num_mixtures": 5}
