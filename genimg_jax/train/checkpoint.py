"""Orbax checkpoints of the train state together with the data-iterator position.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a crash mid-write leaves the previous checkpoints untouched. A
checkpoint that is complete but unreadable (truncated or corrupted files) is
skipped with a warning, and the next older one is used; training also moves it
aside as `<step>.corrupt`, reading a run (sample, eval) changes nothing.
"""

import json
import os
import re
from typing import Any, NamedTuple

import grain
import jax
import orbax.checkpoint as ocp

from genimg_jax.errors import CheckpointError, warn
from genimg_jax.files import atomic_open
from genimg_jax.parallel import distributed


def _path_str(path) -> str:
  """A pytree path as 'a/b/0', the same for dataclass fields, dict keys and list indices."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def _shapes(tree) -> dict[str, tuple]:
  """{path: shape} of every array-like leaf with a shape."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {_path_str(p): tuple(leaf.shape) for p, leaf in leaves if hasattr(leaf, "shape")}


def describe_mismatch(saved: dict[str, tuple], expected: dict[str, tuple], limit: int = 5) -> str | None:
  """The first differing paths between two {path: shape} maps (`params/...` first), or None."""
  order = lambda paths: sorted(paths, key=lambda p: (not p.startswith("params/"), p))
  problems = [f"{p}: checkpoint has {saved[p]}, config gives {expected[p]}"
              for p in order(saved.keys() & expected.keys()) if saved[p] != expected[p]]
  problems += [f"{p}: only in the checkpoint" for p in order(saved.keys() - expected.keys())]
  problems += [f"{p}: not in the checkpoint" for p in order(expected.keys() - saved.keys())]
  if not problems:
    return None
  more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
  return "; ".join(problems[:limit]) + more


_STATUS_WORDS = {"DATA_LOSS": "damaged data", "OUT_OF_RANGE": "a truncated file", "NOT_FOUND": "a missing file",
                 "INVALID_ARGUMENT": "malformed data", "FAILED_PRECONDITION": "malformed data"}


def describe_error(error: Exception) -> str:
  """Why a checkpoint could not be read, in plain words: for a TensorStore error the array, the kind of damage
  and the file, without the spec it appends; else 'Type: the first line of the message'. At most 300 characters."""
  text = re.sub(r"\s*\[tensorstore_spec=.*\]\s*$", "", str(error), flags=re.S)
  status = re.match(r"([A-Z_]+): ", text)
  array = re.search(r'Error reading "([^"]+?)/?\.z(?:array|attrs|group)"', text)
  files = re.findall(r'local file "([^"]+)"', text)
  if status and (array or files):
    words = _STATUS_WORDS.get(status.group(1), status.group(1).lower().replace("_", " "))
    described = (f"array {array.group(1)}: " if array else "") + words + (f" in {files[-1]}" if files else "")
  else:
    described = f"{type(error).__name__}: {(text.splitlines() or [''])[0]}"
  return described[:300]


class Restored(NamedTuple):
  """A restored checkpoint: the state, its step, and whether the data iterator's position was restored."""

  state: Any
  step: int
  data_restored: bool


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `directory` (workdir/checkpoints).

  Each step holds two items: `state` (the TrainState pytree) and `data` (the grain
  iterator's state, one file per process). Saves are asynchronous; `close` waits.
  With create=False the checkpoints are only read (sample, eval): nothing under the
  directory is written, moved or deleted, and a missing directory is a CheckpointError.
  """

  def __init__(self, directory: str, keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(directory)
    self.read_only = not create
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(self.directory, "no checkpoint found (the directory does not exist)")
    distributed.barrier(f"checkpointer {self.directory}")  # Orbax's own syncs are gloo collectives.
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
      registry.add("state", args, ocp.StandardCheckpointHandler)
    for args in (grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointRestore):
      registry.add("data", args, grain.checkpoint.CheckpointHandler)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=create, read_only=not create,
            enable_async_checkpointing=True),
        handler_registry=registry)

  def save(self, step: int, state, data_iterator) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)))

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def saved_shapes(self, step: int) -> dict[str, tuple]:
    """{path ('params/...', 'opt_state/...'): shape} of the state saved at `step`, read from its metadata."""
    return _shapes(self._manager.metadata(step).item_metadata["state"])

  def _check_shapes(self, step: int, abstract_state) -> None:
    """Raises CheckpointError listing differing paths if the checkpoint does not fit the config."""
    mismatch = describe_mismatch(self.saved_shapes(step), _shapes(abstract_state))
    if mismatch:
      raise CheckpointError(os.path.join(self.directory, str(step)),
                            f"the checkpoint does not match the configured model or optimizer: {mismatch}")

  def _has_data_state(self, step: int) -> bool:
    """Whether checkpoint `step` holds an iterator state for this process of this many processes."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return os.path.exists(os.path.join(self.directory, str(step), "data", name))

  def restore(self, step: int, abstract_state, data_iterator=None) -> "Restored":
    """The state at `step`, laid out as `abstract_state` (ShapeDtypeStructs with shardings).

    If `data_iterator` is given, its position is restored in place too, where the
    checkpoint was written by as many processes as there are now (data_restored).
    Raises CheckpointError if the shapes differ from `abstract_state`.
    """
    self._check_shapes(step, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    data_restored = data_iterator is not None and self._has_data_state(step)
    if data_restored:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    state = self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
    return Restored(state, step, data_restored)

  def steps(self) -> list[int]:
    """The steps of the complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def restore_step(self, step: int, abstract_state) -> "Restored":
    """The state at `step` (see `restore`); a CheckpointError names the directory and the saved steps
    when there is no such checkpoint, and the checkpoint when it cannot be read."""
    path = os.path.join(self.directory, str(step))
    if step not in self.steps():
      raise CheckpointError(path, f"no checkpoint of step {step}; saved steps: {self.steps() or 'none'}")
    try:
      return self.restore(step, abstract_state)
    except CheckpointError:
      raise
    except Exception as e:  # Corrupt files fail in many ways (OSError, ValueError, tensorstore).
      raise CheckpointError(path, f"unreadable checkpoint of step {step} ({describe_error(e)})") from None

  def restore_latest(self, abstract_state, data_iterator=None) -> "Restored | None":
    """The newest readable checkpoint (see `restore`), or None if there is none.

    An unreadable checkpoint is skipped with a warning naming its step, path and damage, and
    the next older one is tried; when training (not read_only) it is also moved aside as
    `<step>.corrupt`, so that later saves do not count it. A shape mismatch is a CheckpointError.
    """
    steps = self.steps()[::-1]
    for step in steps:
      path = os.path.join(self.directory, str(step))
      try:
        return self.restore(step, abstract_state, data_iterator)
      except CheckpointError:
        raise
      except Exception as e:  # Corrupt files fail in many ways (OSError, ValueError, tensorstore).
        kept = "left as it is" if self.read_only else f"moved to {self._quarantine(step)}"
        warn(path, f"unreadable checkpoint of step {step} ({describe_error(e)}); {kept}, trying an older one")
    if steps:
      kept = "left as they are" if self.read_only else "moved aside as <step>.corrupt"
      raise CheckpointError(self.directory, f"no readable checkpoint: steps {steps} are all unreadable ({kept})")
    return None

  def _quarantine(self, step: int) -> str:
    """Renames checkpoint `step` to a free `<step>.corrupt[N]` name; returns the new path."""
    path = os.path.join(self.directory, str(step))
    moved, n = f"{path}.corrupt", 0
    while os.path.exists(moved):
      n += 1
      moved = f"{path}.corrupt{n}"
    if jax.process_index() == 0:
      os.replace(path, moved)
    distributed.barrier(f"quarantined {path}")
    self._manager.reload()
    return moved

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class BestCheckpoint:
  """The state at the best value of one evaluation metric so far, for picking a model by quality.

  directory/<step>: a checkpoint like the others (one kept); directory/best.json:
  {'metric', 'value', 'step'}, read back on resume so the best-so-far survives.
  """

  def __init__(self, directory: str, metric: str, higher_is_better: bool):
    self.metric, self.higher_is_better = metric, higher_is_better
    self._checkpointer = Checkpointer(directory, keep=1)
    self.directory = self._checkpointer.directory
    self._record = os.path.join(self._checkpointer.directory, "best.json")
    self.value = self.step = None
    if os.path.isfile(self._record):
      with open(self._record) as f:
        saved = json.load(f)
      if saved.get("metric") == metric:
        self.value, self.step = saved["value"], saved["step"]

  def update(self, step: int, value: float, state, data_iterator) -> bool:
    """Saves `state` if `value` beats the best so far; returns whether it did."""
    if self.value is not None and (value <= self.value if self.higher_is_better else value >= self.value):
      return False
    self._checkpointer.save(step, state, data_iterator)
    self._checkpointer.wait()  # best.json never names a checkpoint still being written.
    self.value, self.step = float(value), step
    if jax.process_index() == 0:
      with atomic_open(self._record) as f:
        json.dump({"metric": self.metric, "value": self.value, "step": step}, f)
    return True

  def close(self) -> None:
    self._checkpointer.close()

