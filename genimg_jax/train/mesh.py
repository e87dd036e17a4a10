"""The device mesh and the shardings of states and batches."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genimg_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis `data`."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh, field: str = "config.train.batch_size") -> int:
  """This process's share of a global batch; raises ConfigError if it does not split evenly."""
  devices, processes = mesh.devices.size, jax.process_count()
  if global_batch_size % devices:
    raise ConfigError(field, f"{global_batch_size} is not divisible by the number of devices "
                      f"({devices}, over {processes} process(es)); choose a multiple of {devices}")
  return global_batch_size // processes


def to_global(local_batch, mesh: Mesh):
  """Per-process numpy batch (leading axis = local batch) -> global jax arrays sharded on `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
