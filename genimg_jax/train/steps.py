"""Seeds and the jitted, sharded functions built around a method's pure functions."""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from genimg_jax.data import pipeline
from genimg_jax.methods.base import Method
from genimg_jax.train import distributed
from genimg_jax.train import mesh as mesh_lib


def root_keys(seed: int) -> dict[str, jax.Array]:
  """Independent keys for init, train, sample and eval: fold_in(PRNGKey(seed), 0..3)."""
  root = jax.random.PRNGKey(seed)
  return {name: jax.random.fold_in(root, i) for i, name in enumerate(("init", "train", "sample", "eval"))}


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


def on_mesh(fn, mesh: Mesh):
  """fn traced with `mesh` as the abstract mesh, for methods.base.split_over_devices."""
  def traced(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)

  return traced


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


def jit_eval_step(method: Method, mesh: Mesh):
  """(params, global batch, key) -> metrics averaged over the batch; params keep their sharding."""
  return distributed.CompiledTogether(jax.jit(
      method.eval_step, in_shardings=(None, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)),
      out_shardings=mesh_lib.replicated(mesh)), "eval step")


def sampler(method: Method, mesh: Mesh, batch_size: int, classes: Sequence[int] | None = None,
            sample_fn=None):
  """Returns f(params, key, start) -> numpy [batch_size, H, W, C] float32 in [-1, 1], on every process:
  images start, ..., start + batch_size - 1 of the stream that `key` defines.

  Image j is drawn on its own with key fold_in(key, j) (`sample_fn`, default
  method.sample, vmapped over per-image keys), so it is the same whatever the batch
  size or the device count, up to float rounding. A class-conditional method asks image
  j for class classes[j % len(classes)]; by default classes are 0, ..., num_classes - 1.
  The batch is split over the devices when batch_size divides evenly, else replicated.
  """
  sample_fn = sample_fn or method.sample
  classes = np.arange(method.num_classes) if classes is None else np.asarray(classes)
  sharded = batch_size % mesh.devices.size == 0
  out = mesh_lib.batch_sharding(mesh) if sharded else mesh_lib.replicated(mesh)

  def draw(params, key, start):
    index = start + jnp.arange(batch_size, dtype=jnp.int32)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    if sharded:
      keys = jax.lax.with_sharding_constraint(keys, out)
    if not method.num_classes:
      return jax.vmap(lambda k: sample_fn(params, k, 1)[0])(keys)
    labels = jnp.asarray(classes, jnp.int32)[index % len(classes)]
    return jax.vmap(lambda k, label: sample_fn(params, k, 1, label[None])[0])(keys, labels)

  fn = distributed.CompiledTogether(jax.jit(on_mesh(draw, mesh), out_shardings=out), "sampler")

  def run(params, key, start: int = 0) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(fn(params, key, jnp.int32(start)), tiled=True))

  return run


def image_grids(method: Method, mesh: Mesh, source, data, num: int):
  """Returns f(params, key) -> {name: numpy [N, H, W, C] float32 in [-1, 1]}, on every process:
  `method.image_grids` of the first min(num, len(source)) examples of `source` (preprocessed as config.data says).

  Every process reads the same examples; the batch and the result are replicated.
  """
  first = pipeline.eval_dataset(source, data, local_batch_size=min(num, len(source)), process_index=0,
                                process_count=1)[0]
  replicated = mesh_lib.replicated(mesh)
  batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(replicated, x), first)
  fn = distributed.CompiledTogether(jax.jit(method.image_grids, out_shardings=replicated), "image grids")

  def run(params, key) -> dict[str, np.ndarray]:
    return {name: np.asarray(grid.addressable_data(0)) for name, grid in fn(params, batch, key).items()}

  return run
