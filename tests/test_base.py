"""methods/base.py: the EMA, one gradient step, the optimizer and its schedule under skipped updates."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from genimg_jax.methods.base import (Method, TrainState, compute_dtype, ema_update, gradient_step, make_optimizer,
                                     optimizer_config)
from genimg_jax.errors import ConfigError
from genimg_jax.train import steps


@pytest.mark.parametrize("step,decay,expected_d", [(0, 0.999, 0.1), (90, 0.999, 91 / 100), (10_000, 0.999, 0.999)])
def test_ema_update_is_the_warmed_up_average(step, decay, expected_d):
  ema, params = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([3.0, 4.0])}
  got = ema_update(ema, params, decay, jnp.int32(step))
  np.testing.assert_allclose(got["w"], expected_d * np.array([1.0, -2.0]) + (1 - expected_d) * np.array([3.0, 4.0]),
                             rtol=1e-6)


def _config(**fields) -> ml_collections.ConfigDict:
  opt = optimizer_config()
  opt.update(fields)
  return opt


def test_make_optimizer_is_clipped_adamw_with_linear_warm_up():
  tx, learning_rate = make_optimizer(_config(learning_rate=0.1, warmup_steps=4, grad_clip=1.0, weight_decay=0.01))
  reference = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(optax.linear_schedule(0.0, 0.1, 4), weight_decay=0.01))
  params, grads = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -4.0])}
  state, expected = tx.init(params), reference.init(params)
  for count in range(6):
    assert float(learning_rate(state)) == pytest.approx(min(count / 4, 1.0) * 0.1)
    update, state = tx.update(grads, state, params)
    want, expected = reference.update(grads, expected, params)
    np.testing.assert_allclose(update["w"], want["w"], rtol=1e-6)
  with pytest.raises(ConfigError, match="config.d_optimizer.learning_rate: must be > 0"):
    make_optimizer(_config(learning_rate=0.0), "d_optimizer")


def _linear_method(tx, learning_rate) -> Method:
  """y = w x fitted by mean squared error, one gradient_step per batch."""
  def init(rng):
    params = {"w": jax.random.normal(rng, (2,))}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=params)

  def train_step(state, batch, rng):
    loss_fn = lambda p: jnp.mean(jnp.square(batch["image"] @ p["w"] - batch["label"]))
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return gradient_step(state, grads, {"loss": loss}, tx, learning_rate, ema_decay=0.9)

  return Method(init=init, train_step=train_step, sample=None, eval_step=None, image_shape=(1, 1, 2))


def test_gradient_step_reports_the_applied_rate_and_a_skipped_update_pauses_the_schedule():
  tx, learning_rate = make_optimizer(_config(learning_rate=0.1, warmup_steps=10, grad_clip=0.0))
  method = _linear_method(tx, learning_rate)
  step = jax.jit(steps.guarded_step(method))
  batch = {"image": jnp.array([[1.0, 2.0], [3.0, -1.0]]), "label": jnp.array([1.0, 0.5])}
  bad = dict(batch, image=batch["image"].at[0, 0].set(jnp.nan))
  state = method.init(jax.random.PRNGKey(0))
  rates, norms = [], []
  for b in (batch, batch, bad, batch):
    before = state
    state, metrics = step(state, b, jax.random.PRNGKey(1))
    rates.append(float(metrics["learning_rate"]))
    if b is bad:
      assert float(metrics["nonfinite"]) == 1.0
      assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before.opt_state),
                                                      jax.tree.leaves(state.opt_state)))
    else:
      grads = jax.grad(lambda p: jnp.mean(jnp.square(b["image"] @ p["w"] - b["label"])))(before.params)
      norms.append((float(metrics["grad_norm"]), float(optax.tree.norm(grads))))
  # The optimizer's own count, not the step counter: the skipped update leaves the rate where it was.
  assert rates[:2] + rates[3:] == pytest.approx([0.0, 0.01, 0.02]) and int(state.step) == 4
  assert all(got == pytest.approx(want, rel=1e-6) for got, want in norms)


def test_compute_dtype_names_the_field():
  assert compute_dtype("bfloat16") == jnp.bfloat16
  with pytest.raises(ConfigError, match="config.model.dtype: must be one of"):
    compute_dtype("float16")
