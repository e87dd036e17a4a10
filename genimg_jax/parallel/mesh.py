"""The device mesh (`data` x `fsdp`) and the shardings of states and batches.

Batches are split over both axes (every device gets batch / device_count
examples). A state's arrays are sharded over `fsdp` by one rule: an array with
at least `min_size` elements is split along its largest dimension that the
`fsdp` size divides (the last such one on ties); other arrays are replicated.
Adam's moments have their parameter's shape, so they follow their parameter.
With fsdp = 1 every array is replicated: pure data parallelism.
"""

import math

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from genimg_jax.errors import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def make_mesh(fsdp: int = 1, field: str = "config.mesh.fsdp") -> Mesh:
  """A (device_count / fsdp) x fsdp mesh over every device of every process, axes (`data`, `fsdp`)."""
  count = jax.device_count()
  if fsdp < 1 or count % fsdp:
    raise ConfigError(field, f"{fsdp} must be >= 1 and divide the number of devices ({count})")
  return jax.make_mesh((count // fsdp, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data` and `fsdp`, other axes whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  """The PartitionSpec the module docstring's rule gives an array of `shape`."""
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  divisible = [i for i, n in enumerate(shape) if n % fsdp == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda i: (shape[i], i))
  return P(*(FSDP_AXIS if i == axis else None for i in range(len(shape))))


def state_sharding(abstract_state, mesh: Mesh, min_size: int):
  """A pytree of NamedShardings for `abstract_state` (arrays or ShapeDtypeStructs) on `mesh`."""
  fsdp = mesh.shape[FSDP_AXIS]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp, min_size)), abstract_state)


def local_batch_size(global_batch_size: int, mesh: Mesh, field: str = "config.train.batch_size") -> int:
  """This process's share of a global batch; raises ConfigError if it does not split evenly."""
  devices, processes = mesh.devices.size, jax.process_count()
  if global_batch_size % devices:
    raise ConfigError(field, f"{global_batch_size} is not divisible by the number of devices "
                      f"({devices}, over {processes} process(es)); choose a multiple of {devices}")
  return global_batch_size // processes


def to_global(local_batch, mesh: Mesh):
  """Per-process numpy batch (leading axis = local batch) -> global jax arrays split over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)

