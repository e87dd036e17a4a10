"""A run's directory: the resolved config, checkpoints, and restoring the latest state."""

import os

import jax
import ml_collections

from genimg_jax import config as config_lib
from genimg_jax import seeds
from genimg_jax.errors import CheckpointError, ConfigError
from genimg_jax.files import atomic_open
from genimg_jax.methods.base import Method
from genimg_jax.parallel import mesh as mesh_lib
from genimg_jax.train import checkpoint as ckpt_lib


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
    for path in (config_path(workdir), os.path.join(workdir, "config_history", f"step_{start_step:07d}.json")):
      with atomic_open(path) as f:
        f.write(text)


TRUST_FLAG = "--trust_workdir_code"


def read_config(workdir: str, trust_code: bool = False) -> ml_collections.ConfigDict:
  """The resolved config a training run saved in workdir; CheckpointError if missing or malformed.

  A workdir may come from anyone, so its config names no code to import (`module:attribute`) unless
  trust_code: otherwise a ConfigError names the first such field, before anything is imported.
  """
  path = config_path(workdir)
  if not os.path.isfile(path):
    raise CheckpointError(workdir, f"no {os.path.basename(path)} here: is this a `genimg train` workdir?")
  try:
    with open(path) as f:
      config = config_lib.from_json(f.read())
  except (ValueError, TypeError) as e:
    raise CheckpointError(path, f"not a valid resolved config ({e})") from None
  imports = config_lib.import_paths(config)
  if imports and not trust_code:
    field, value = imports[0]
    raise ConfigError(f"config.{field}", f"{value!r} in {path} names code to import, which a workdir's config "
                      f"may not do; pass {TRUST_FLAG} to run it if you trust this workdir")
  return config


def abstract_state(method, mesh, fsdp_min_size: int):
  """The method's TrainState as ShapeDtypeStructs carrying their shardings on `mesh` (mesh_lib rules)."""
  abstract = jax.eval_shape(method.init, seeds.root_keys(0)["init"])
  shardings = mesh_lib.state_sharding(abstract, mesh, fsdp_min_size)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def parse_checkpoint(text: str, field: str = "--checkpoint") -> str | int:
  """'latest' | 'best' | a step number (int >= 0); ConfigError naming `field` otherwise."""
  if text in ("latest", "best"):
    return text
  if text.isdigit():
    return int(text)
  raise ConfigError(field, f"{text!r} is not latest, best or a step number")


def restore(workdir: str, config: ml_collections.ConfigDict, method: Method, checkpoint: str | int = "latest"):
  """(mesh, state, step) of a run's checkpoint of `method` (methods.make(config)), for sampling and eval.

  checkpoint: 'latest' (the newest readable one in checkpoints/), 'best' (checkpoints_best/,
  kept with config.eval.best_metric) or a step number in checkpoints/. A CheckpointError names
  the directory when there is none.
  """
  # The run's fsdp size where this machine's devices allow it, else replicated parameters.
  fsdp = config.mesh.fsdp if jax.device_count() % config.mesh.fsdp == 0 else 1
  mesh = mesh_lib.make_mesh(fsdp)
  abstract = abstract_state(method, mesh, config.mesh.fsdp_min_size)
  directory = best_checkpoint_dir(workdir) if checkpoint == "best" else checkpoint_dir(workdir)
  if checkpoint == "best" and not os.path.isdir(directory):
    raise CheckpointError(directory, "no best checkpoint: it is kept by a run trained with "
                          "--config.eval.every=N --config.eval.best_metric=NAME")
  checkpointer = ckpt_lib.Checkpointer(directory, config.train.keep_checkpoints, create=False)
  try:
    if checkpoint == "latest":
      restored = checkpointer.restore_latest(abstract)
    elif checkpoint == "best":
      saved = checkpointer.steps()
      restored = checkpointer.restore_step(saved[-1], abstract) if saved else None
    else:
      restored = checkpointer.restore_step(checkpoint, abstract)
  finally:
    checkpointer.close()
  if restored is None:
    raise CheckpointError(directory, "no checkpoint found")
  return mesh, restored.state, restored.step
