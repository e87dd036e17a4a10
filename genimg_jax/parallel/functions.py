"""A method's pure functions jitted over a device mesh, as training and evaluation both call them:
sampling in batches with per-image keys, the held-out eval step, the pictures of a fixed batch."""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from genimg_jax.data import pipeline
from genimg_jax.methods.base import Method
from genimg_jax.parallel import distributed
from genimg_jax.parallel import mesh as mesh_lib


def on_mesh(fn, mesh: Mesh):
  """fn traced with `mesh` as the abstract mesh, for methods.base.split_over_devices."""
  def traced(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)

  return traced


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
