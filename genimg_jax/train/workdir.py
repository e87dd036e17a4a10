"""A run's directory: the resolved config, checkpoints, and restoring the latest state."""

import os

import jax
import ml_collections

from genimg_jax import config as config_lib
from genimg_jax import methods
from genimg_jax.errors import CheckpointError
from genimg_jax.train import checkpoint as ckpt_lib
from genimg_jax.train import mesh as mesh_lib
from genimg_jax.train import steps


def config_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Saves the resolved config as workdir/config.json (process 0 only)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(config_path(workdir), "w") as f:
      f.write(config_lib.to_json(config))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a training run saved in workdir; CheckpointError if there is none."""
  path = config_path(workdir)
  if not os.path.isfile(path):
    raise CheckpointError(workdir, f"no {os.path.basename(path)} here: is this a `genimg train` workdir?")
  with open(path) as f:
    return config_lib.from_json(f.read())


def abstract_state(method, mesh):
  """The method's TrainState as ShapeDtypeStructs, replicated over `mesh`."""
  abstract = jax.eval_shape(method.init, steps.root_keys(0)["init"])
  return ckpt_lib.abstract_with_sharding(abstract, mesh_lib.replicated(mesh))


def restore_latest(workdir: str, config: ml_collections.ConfigDict):
  """(method, mesh, state, step) from the newest checkpoint of a run; for sampling and eval."""
  method = methods.make(config)
  mesh = mesh_lib.make_mesh()
  checkpointer = ckpt_lib.Checkpointer(checkpoint_dir(workdir), config.train.keep_checkpoints, create=False)
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise CheckpointError(checkpoint_dir(workdir), "no checkpoint found")
    state = checkpointer.restore(step, abstract_state(method, mesh))
  finally:
    checkpointer.close()
  return method, mesh, state, step
