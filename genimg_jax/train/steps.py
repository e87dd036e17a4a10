"""Seeds and the jitted, sharded functions built around a method's pure functions."""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from genimg_jax.methods.base import Method
from genimg_jax.train import mesh as mesh_lib


def root_keys(seed: int) -> dict[str, jax.Array]:
  """Independent keys for init, train, sample and eval: fold_in(PRNGKey(seed), 0..3)."""
  root = jax.random.PRNGKey(seed)
  return {name: jax.random.fold_in(root, i) for i, name in enumerate(("init", "train", "sample", "eval"))}


def jit_train_step(method: Method, mesh: Mesh, state_sharding):
  """(state, global batch, train key) -> (state, metrics); the step key is fold_in(key, state.step).

  The state is donated: its buffers are reused for the new state.
  """

  def step(state, batch, train_key):
    return method.train_step(state, batch, jax.random.fold_in(train_key, state.step))

  return jax.jit(step, in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)),
                 out_shardings=(state_sharding, mesh_lib.replicated(mesh)), donate_argnums=0)


def jit_eval_step(method: Method, mesh: Mesh):
  """(params, global batch, key) -> metrics averaged over the batch."""
  return jax.jit(method.eval_step, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh),
                                                 mesh_lib.replicated(mesh)),
                 out_shardings=mesh_lib.replicated(mesh))


def sampler(method: Method, mesh: Mesh, num: int):
  """Returns f(params, key) -> numpy [num, H, W, C] float32 in [-1, 1], on every process.

  Sampling is split over the devices when `num` divides evenly, else replicated.
  """
  out = mesh_lib.batch_sharding(mesh) if num % mesh.devices.size == 0 else mesh_lib.replicated(mesh)
  fn = jax.jit(lambda params, key: method.sample(params, key, num), out_shardings=out)

  def run(params, key) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(fn(params, key), tiled=True))

  return run
