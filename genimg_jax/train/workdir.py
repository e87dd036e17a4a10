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


def best_checkpoint_dir(workdir: str) -> str:
  """The checkpoint at the best value of config.eval.best_metric (see checkpoint.BestCheckpoint)."""
  return os.path.join(workdir, "checkpoints_best")


def write_config(workdir: str, config: ml_collections.ConfigDict, start_step: int) -> None:
  """Saves the resolved config as workdir/config.json, and as
  workdir/config_history/step_<start_step>.json for this run segment (process 0 only)."""
  if jax.process_index() == 0:
    text = config_lib.to_json(config)
    os.makedirs(os.path.join(workdir, "config_history"), exist_ok=True)
    for path in (config_path(workdir), os.path.join(workdir, "config_history", f"step_{start_step:07d}.json")):
      with open(path, "w") as f:
        f.write(text)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a training run saved in workdir; CheckpointError if missing or malformed."""
  path = config_path(workdir)
  if not os.path.isfile(path):
    raise CheckpointError(workdir, f"no {os.path.basename(path)} here: is this a `genimg train` workdir?")
  try:
    with open(path) as f:
      return config_lib.from_json(f.read())
  except (ValueError, TypeError) as e:
    raise CheckpointError(path, f"not a valid resolved config ({e})") from None


def abstract_state(method, mesh, fsdp_min_size: int):
  """The method's TrainState as ShapeDtypeStructs carrying their shardings on `mesh` (mesh_lib rules)."""
  abstract = jax.eval_shape(method.init, steps.root_keys(0)["init"])
  shardings = mesh_lib.state_sharding(abstract, mesh, fsdp_min_size)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def restore_latest(workdir: str, config: ml_collections.ConfigDict):
  """(method, mesh, state, step) from the newest checkpoint of a run; for sampling and eval."""
  method = methods.make(config)
  # The run's fsdp size where this machine's devices allow it, else replicated parameters.
  fsdp = config.mesh.fsdp if jax.device_count() % config.mesh.fsdp == 0 else 1
  mesh = mesh_lib.make_mesh(fsdp)
  checkpointer = ckpt_lib.Checkpointer(checkpoint_dir(workdir), config.train.keep_checkpoints, create=False)
  try:
    restored = checkpointer.restore_latest(abstract_state(method, mesh, config.mesh.fsdp_min_size))
  finally:
    checkpointer.close()
  if restored is None:
    raise CheckpointError(checkpoint_dir(workdir), "no checkpoint found")
  return method, mesh, restored.state, restored.step
