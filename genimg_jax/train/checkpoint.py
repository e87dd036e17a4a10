"""Orbax checkpoints of the train state together with the data-iterator position."""

import os

import grain
import jax
import orbax.checkpoint as ocp

from genimg_jax.errors import CheckpointError


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `directory` (workdir/checkpoints).

  Each step holds two items: `state` (the TrainState pytree) and `data` (the grain
  iterator's state, one file per process). Saves are asynchronous; `close` waits.
  With create=False a missing directory is a CheckpointError (for reading a run).
  """

  def __init__(self, directory: str, keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(directory)
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(self.directory, "no checkpoint found (the directory does not exist)")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)))

  def restore(self, step: int, abstract_state, data_iterator=None):
    """The state at `step`, laid out as `abstract_state` (ShapeDtypeStructs with shardings).

    If `data_iterator` is given, its position is restored in place too.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise CheckpointError(f"{self.directory}/{step}",
                            f"cannot restore this checkpoint into the configured model: {e}") from None
    return restored["state"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_sharding(abstract_tree, sharding):
  """ShapeDtypeStructs of `abstract_tree` carrying `sharding` (restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract_tree)
