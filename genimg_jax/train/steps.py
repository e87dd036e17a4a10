"""The jitted train step: the method's update, skipped when it makes non-finite values."""

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from genimg_jax.methods.base import Method
from genimg_jax.parallel import distributed
from genimg_jax.parallel import mesh as mesh_lib
from genimg_jax.parallel.functions import on_mesh


def _all_finite(tree) -> jax.Array:
  arrays = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
  leaves = [jnp.all(jnp.isfinite(x)) for x in arrays if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def guarded_step(method: Method, inject_nan_at_steps: Sequence[int] = ()):
  """(state, batch, train key) -> (state, metrics), skipping updates with non-finite values.

  The step key is fold_in(train_key, state.step). If any metric or any entry of
  the updated state is NaN/Inf, the update is dropped (all but `step` keep their
  old values; `step` still advances) and metrics["nonfinite"] is 1.0, else 0.0.
  `inject_nan_at_steps` (a test hook) replaces the batch images with NaN at those steps.
  """
  poison_steps = jnp.asarray(tuple(inject_nan_at_steps), jnp.int32)

  def step(state, batch, train_key):
    if len(inject_nan_at_steps):
      poisoned = jnp.any(state.step == poison_steps)
      batch = dict(batch, image=jnp.where(poisoned, jnp.nan, batch["image"]))
    new_state, metrics = method.train_step(state, batch, jax.random.fold_in(train_key, state.step))
    finite = _all_finite(metrics) & _all_finite(new_state)
    # lax.cond, not an elementwise where over the state: XLA's CPU compile time explodes on that.
    kept = jax.lax.cond(finite, lambda: new_state, lambda: state)
    return kept.replace(step=new_state.step), dict(metrics, nonfinite=1.0 - finite.astype(jnp.float32))

  return step


def jit_train_step(method: Method, mesh: Mesh, state_sharding, inject_nan_at_steps: Sequence[int] = (),
                   donate: bool = True):
  """`guarded_step` jitted over `mesh`: batch sharded on `data`, the state donated (reused) by default."""
  return distributed.CompiledTogether(jax.jit(
      on_mesh(guarded_step(method, inject_nan_at_steps), mesh),
      in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)),
      out_shardings=(state_sharding, mesh_lib.replicated(mesh)), donate_argnums=0 if donate else ()), "train step")


def first_nan_op(method: Method, state, batch, train_key, inject_nan_at_steps: Sequence[int] = ()) -> str:
  """Re-runs one step op by op with jax_debug_nans on; returns JAX's message naming the first op
  that made a NaN. (JAX checks only the first call of a jitted function by itself.)"""
  with jax.disable_jit(), jax.debug_nans(True):
    try:
      guarded_step(method, inject_nan_at_steps)(state, batch, train_key)
    except FloatingPointError as e:
      return str(e).splitlines()[0]
  return "no NaN when re-run op by op (an Inf, or a NaN only the compiled program makes)"


