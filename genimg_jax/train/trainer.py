"""The generic training loop: any method, one code path from 1 CPU to many devices.

`train` sets up the run (`_start`), then steps and runs the periodic actions, each
a named function of what is fixed for the run (`_RunSetup`) and what the loop changes
(`_LoopState`) behind one predicate, `every`: log, checkpoint, sample grids, evaluate.
Evaluation comes in from above (`make_evaluation`), so the trainer imports nothing of
evaluation/.
"""

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Protocol

import jax
import ml_collections
import numpy as np
import tqdm

from genimg_jax import config as config_lib
from genimg_jax import methods, seeds
from genimg_jax.data import datasets, pipeline
from genimg_jax.errors import ConfigError, DataError, Preempted, TrainingDiverged
from genimg_jax.methods.base import Method, TrainState
from genimg_jax.parallel import distributed, functions
from genimg_jax.parallel import mesh as mesh_lib
from genimg_jax.train import checkpoint as ckpt_lib
from genimg_jax.train import guards
from genimg_jax.train import lock as lock_lib
from genimg_jax.train import steps, workdir as workdir_lib
from genimg_jax.train.writer import RunWriter


class Evaluation(Protocol):
  """What the trainer needs of a periodic evaluation (evaluation.suite.TrainingEvaluation).

  every: steps between evaluations (and at the end). prepare(): fail early on missing
  weights or data. __call__(params, step) -> ({name: value}, path of the written report),
  the values including best_metric.
  best_metric ('' for none) and higher_is_better pick the checkpoint kept in checkpoints_best/.
  """

  every: int
  best_metric: str
  higher_is_better: bool

  def prepare(self) -> None: ...

  def __call__(self, params, step: int) -> tuple[dict[str, float], str]: ...


def every(step: int, n: int, last: bool) -> bool:
  """Whether an action with period `n` runs at `step`: every n-th step, and at the last (n = 0: only then)."""
  return last or (n > 0 and step % n == 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _RunSetup:
  """What is fixed for the whole run, built once by `_start`."""

  config: ml_collections.ConfigDict
  workdir: str
  method: Method
  mesh: Any  # The device mesh.
  keys: dict  # The root keys by use: init, train, sample, eval.
  checkpointer: ckpt_lib.Checkpointer  # Writes checkpoints/.
  writer: RunWriter  # Writes TensorBoard, metrics.jsonl and samples/.
  progress: Any  # The tqdm progress bar.
  monitor: guards.NonFiniteMonitor  # Counts skipped (non-finite) updates.
  sample: Callable  # The final grid's sampler.
  preview: Callable  # The periodic grids' sampler (the method's cheaper one, if any).
  grids: Callable | None  # The method's pictures of a fixed held-out batch, if any.
  evaluation: Evaluation | None  # The periodic evaluation, if config.eval.every.
  best: ckpt_lib.BestCheckpoint | None  # Keeps checkpoints_best/, if the evaluation has a best_metric.


@dataclasses.dataclass(kw_only=True)
class _LoopState:
  """What the loop changes as it steps."""

  state: TrainState  # The current train state.
  data_iter: Any  # The training batches, from the next one to take.
  last_checkpoint: int | None  # The step last checkpointed or restored (None: neither yet).
  window: list = dataclasses.field(default_factory=list)  # The step metrics since the last log.
  window_start: float = dataclasses.field(default_factory=time.perf_counter)  # When the window began.


def _check_image_shape(source, data, method) -> None:
  shape = tuple(np.asarray(pipeline.eval_dataset(source, data, local_batch_size=1, process_index=0,
                                                 process_count=1)[0]["image"].shape[1:]))
  if shape != method.image_shape:
    raise DataError("config.data", f"the data set's images are {shape} (H, W, C) but the config "
                    f"asks for {method.image_shape} (data.image_size, data.image_size, data.channels)")


def _say(message: str, file=sys.stdout) -> None:
  if jax.process_index() == 0:
    print(message, file=file, flush=True)


def _start(config, workdir: str, show_progress: bool, make_evaluation,
           held: contextlib.ExitStack) -> tuple[_RunSetup, _LoopState]:
  """Set-up: mesh, method, data, evaluation, the workdir's lock (entered into `held`), and the state
  restored from the newest readable checkpoint or initialised. Nothing but the lock file is written
  before the state exists, so a config that does not fit the run fails clean."""
  config_lib.validate_common(config)
  mesh = mesh_lib.make_mesh(config.mesh.fsdp)
  local_batch = mesh_lib.local_batch_size(config.train.batch_size, mesh)
  method = methods.make(config)
  keys = seeds.root_keys(config.seed)
  source = datasets.open_split(config.data, config.data.train_split)
  _check_image_shape(source, config.data, method)
  data_stream = lambda start_batch=0: iter((method.train_data or pipeline.train_dataset)(
      source, config.data, seed=config.seed, local_batch_size=local_batch,
      process_index=jax.process_index(), process_count=jax.process_count(), start_batch=start_batch))
  data_iter = data_stream()
  grids = None
  if method.image_grids is not None:
    held_out = datasets.open_split(config.data, config.data.eval_split)
    _check_image_shape(held_out, config.data, method)
    grids = functions.image_grids(method, mesh, held_out, config.data, config.train.num_samples)
  if config.eval.every and make_evaluation is None:
    raise ConfigError("config.eval.every", "set, but this train() call was given no evaluation "
                      "(genimg_jax.api.train gives it)")
  evaluation = make_evaluation(method, mesh) if config.eval.every else None
  if evaluation:
    evaluation.prepare()  # Missing weights or data fail before the first step.

  abstract = workdir_lib.abstract_state(method, mesh, config.mesh.fsdp_min_size)
  held.enter_context(lock_lib.WorkdirLock(workdir))  # Before anything in the workdir is read or written.
  checkpointer = ckpt_lib.Checkpointer(workdir_lib.checkpoint_dir(workdir), config.train.keep_checkpoints)
  restored = checkpointer.restore_latest(abstract, data_iter)
  if restored is None:
    init = jax.jit(method.init, out_shardings=jax.tree.map(lambda x: x.sharding, abstract))
    state = distributed.CompiledTogether(init, "init")(keys["init"])
    _say(f"starting from scratch in {workdir}")
  else:
    state = restored.state
    _say(f"resuming from step {restored.step} ({os.path.join(checkpointer.directory, str(restored.step))})")
    if not restored.data_restored:  # Written by another number of processes: the position follows from the step.
      data_iter = data_stream(restored.step)
      _say(f"checkpoint {restored.step} was written by another number of processes: the data stream "
           f"continues at global batch {restored.step + 1}", file=sys.stderr)
  workdir_lib.write_config(workdir, config, int(state.step))

  # Grids show the same images (keys) every time, so successive steps compare.
  sample = functions.sampler(method, mesh, config.train.num_samples)
  preview = (functions.sampler(method, mesh, config.train.num_samples, sample_fn=method.preview_sample)
             if method.preview_sample else sample)
  best = None
  if evaluation and evaluation.best_metric:
    best = ckpt_lib.BestCheckpoint(workdir_lib.best_checkpoint_dir(workdir), evaluation.best_metric,
                                   evaluation.higher_is_better)
  progress = tqdm.tqdm(total=config.train.steps, initial=int(state.step), unit="step", dynamic_ncols=True,
                       disable=not show_progress or jax.process_index() != 0)
  setup = _RunSetup(config=config, workdir=workdir, method=method, mesh=mesh, keys=keys, checkpointer=checkpointer,
                    writer=RunWriter(workdir), progress=progress,
                    monitor=guards.NonFiniteMonitor(config.train.max_consecutive_nonfinite), sample=sample,
                    preview=preview, grids=grids, evaluation=evaluation, best=best)
  loop = _LoopState(state=state, data_iter=data_iter, last_checkpoint=None if restored is None else restored.step)
  return setup, loop


# ---- The periodic actions. ------------------------------------------------------------------

def log(setup: _RunSetup, loop: _LoopState, step: int) -> None:
  """Means of the step metrics since the last log, speed and skipped updates: TensorBoard, metrics.jsonl."""
  setup.monitor.check(loop.last_checkpoint)
  fetched = jax.device_get(loop.window)
  scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  seconds = time.perf_counter() - loop.window_start
  scalars["steps_per_sec"] = len(loop.window) / seconds
  scalars["images_per_sec"] = len(loop.window) * setup.config.train.batch_size / seconds
  scalars["skipped_updates_total"] = setup.monitor.skipped_total
  setup.writer.scalars(step, scalars)
  setup.progress.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['images_per_sec']:.0f}")
  loop.window, loop.window_start = [], time.perf_counter()


def checkpoint(setup: _RunSetup, loop: _LoopState, step: int) -> None:
  """Saves the state and the data position (not during a streak of skipped updates)."""
  setup.monitor.check(loop.last_checkpoint)
  setup.checkpointer.save(step, loop.state, loop.data_iter)
  loop.last_checkpoint = step


def sample_grids(setup: _RunSetup, state: TrainState, step: int, last: bool) -> None:
  """samples/step_<step>.png (the preview sampler, the method's own at the last step) and the method's
  pictures of a fixed held-out batch."""
  images = (setup.sample if last else setup.preview)(state.ema_params, setup.keys["sample"])
  path = setup.writer.samples(step, images)
  if path:
    setup.progress.write(f"step {step}: samples -> {path}")
  if setup.grids:
    for name, pictures in setup.grids(state.ema_params, setup.keys["eval"]).items():
      setup.writer.grid(name, step, pictures)


def evaluate(setup: _RunSetup, loop: _LoopState, step: int) -> None:
  """The periodic evaluation: its report, its numbers logged as eval/<name>, the best checkpoint kept."""
  values, path = setup.evaluation(loop.state.ema_params, step)
  setup.writer.scalars(step, {f"eval/{name}": value for name, value in values.items()})
  setup.progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()) + f" -> {path}")
  if setup.best and setup.best.update(step, values[setup.best.metric], loop.state, loop.data_iter):
    setup.progress.write(f"step {step}: best {setup.best.metric} so far -> {setup.best.directory}")


# ---- The loop. ------------------------------------------------------------------------------

def train(config: ml_collections.ConfigDict, workdir: str, *, show_progress: bool = True,
          make_evaluation: Callable[[Method, Any], Evaluation] | None = None) -> TrainState:
  """Trains config.method to config.train.steps, resuming from workdir's latest checkpoint.

  Writes under workdir: config.json (and config_history/), checkpoints/, tensorboard/,
  metrics.jsonl, samples/ (sample grids, and the method's image_grids if it has any).
  make_evaluation(method, mesh) builds the evaluation run every config.eval.every steps
  (needed when that is set); with its best_metric also checkpoints_best/. Returns the final
  TrainState. Raises Preempted after checkpointing on SIGTERM/SIGINT or a preemption notice,
  TrainingDiverged after config.train.max_consecutive_nonfinite skipped updates, and
  lock.WorkdirBusy if another run holds the workdir (its lock is held until this returns).
  """
  with contextlib.ExitStack() as held:
    setup, loop = _start(config, workdir, show_progress, make_evaluation, held)
    return _loop(config, setup, loop)


def _loop(config: ml_collections.ConfigDict, setup: _RunSetup, loop: _LoopState) -> TrainState:
  """Steps from the loop's state to config.train.steps, running the periodic actions; returns the final state."""
  t = config.train
  debug_nans = config.debug.nans  # Keeps the pre-step state to re-run a bad step op by op.
  train_step = steps.jit_train_step(setup.method, setup.mesh, jax.tree.map(lambda x: x.sharding, loop.state),
                                    config.debug.inject_nan_at_steps, donate=not debug_nans)
  try:
    with guards.StopSignal() as stop:
      for step in range(int(loop.state.step) + 1, t.steps + 1):
        batch = mesh_lib.to_global(next(loop.data_iter), setup.mesh)
        previous = loop.state if debug_nans else None  # Donated (deleted) otherwise.
        loop.state, metrics = train_step(loop.state, batch, setup.keys["train"])
        if debug_nans and float(metrics["nonfinite"]):
          message = steps.first_nan_op(setup.method, previous, batch, setup.keys["train"],
                                       config.debug.inject_nan_at_steps)
          raise TrainingDiverged(f"step {step}", f"config.debug.nans: {message}")
        loop.window.append(metrics)
        setup.monitor.add(step, metrics)
        setup.progress.update(1)
        last, preempted = step == t.steps, stop.requested(step)
        if every(step, t.log_every, last):
          log(setup, loop, step)
        if every(step, t.checkpoint_every, last or preempted):
          checkpoint(setup, loop, step)
        if preempted:
          setup.checkpointer.wait()
          raise Preempted(f"{stop.received} at step {step}: checkpoint saved to "
                          f"{setup.checkpointer.directory}/{step}; run the same command to resume")
        if every(step, t.sample_every, last):
          sample_grids(setup, loop.state, step, last)
        if setup.evaluation and every(step, setup.evaluation.every, last):
          evaluate(setup, loop, step)
  finally:  # Finish pending checkpoint writes.
    setup.progress.close()
    setup.checkpointer.close()
    if setup.best:
      setup.best.close()
    setup.writer.close()
  return loop.state
