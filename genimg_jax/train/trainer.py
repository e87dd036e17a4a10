"""The generic training loop: any method, one code path from 1 CPU to many devices.

`train` sets up the run (`_start`), then steps and runs the periodic actions, each
a named function of the step's `_Run` behind one predicate, `every`: log, checkpoint,
sample grids, evaluate. Evaluation comes in from above (`make_evaluation`), so the
trainer imports nothing of evaluation/.
"""

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


@dataclasses.dataclass
class _Run:
  """What the loop and its actions share; `state`, `data_iter`, `last_checkpoint` and `window` change."""

  config: ml_collections.ConfigDict
  workdir: str
  method: Method
  mesh: Any
  keys: dict
  state: TrainState
  data_iter: Any
  checkpointer: ckpt_lib.Checkpointer
  last_checkpoint: int | None
  writer: RunWriter
  progress: Any
  monitor: guards.NonFiniteMonitor
  sample: Callable  # The final grid's sampler.
  preview: Callable  # The periodic grids' sampler (the method's cheaper one, if any).
  grids: Callable | None  # The method's pictures of a fixed held-out batch, if any.
  evaluation: Evaluation | None
  best: ckpt_lib.BestCheckpoint | None
  window: list = dataclasses.field(default_factory=list)
  window_start: float = dataclasses.field(default_factory=time.perf_counter)


def _check_image_shape(source, data, method) -> None:
  shape = tuple(np.asarray(pipeline.eval_dataset(source, data, local_batch_size=1, process_index=0,
                                                 process_count=1)[0]["image"].shape[1:]))
  if shape != method.image_shape:
    raise DataError("config.data", f"the data set's images are {shape} (H, W, C) but the config "
                    f"asks for {method.image_shape} (data.image_size, data.image_size, data.channels)")


def _say(message: str, file=sys.stdout) -> None:
  if jax.process_index() == 0:
    print(message, file=file, flush=True)


def _start(config, workdir: str, show_progress: bool, make_evaluation) -> _Run:
  """Set-up: mesh, method, data, evaluation, and the state restored from the newest readable
  checkpoint or initialised. Nothing is written before the state exists, so a config that does
  not fit the run fails clean."""
  config_lib.validate_common(config)
  mesh = mesh_lib.make_mesh(config.mesh.fsdp)
  local_batch = mesh_lib.local_batch_size(config.train.batch_size, mesh)
  method = methods.make(config)
  keys = seeds.root_keys(config.seed)
  source = datasets.open_split(config.data, config.data.train_split)
  _check_image_shape(source, config.data, method)
  data_stream = lambda start_batch=0: iter(pipeline.train_dataset(
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
  return _Run(config, workdir, method, mesh, keys, state, data_iter, checkpointer,
              None if restored is None else restored.step, RunWriter(workdir), progress,
              guards.NonFiniteMonitor(config.train.max_consecutive_nonfinite), sample, preview, grids, evaluation,
              best)


# ---- The periodic actions. ------------------------------------------------------------------

def log(run: _Run, step: int) -> None:
  """Means of the step metrics since the last log, speed and skipped updates: TensorBoard, metrics.jsonl."""
  run.monitor.check(run.last_checkpoint)
  fetched = jax.device_get(run.window)
  scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  seconds = time.perf_counter() - run.window_start
  scalars["steps_per_sec"] = len(run.window) / seconds
  scalars["images_per_sec"] = len(run.window) * run.config.train.batch_size / seconds
  scalars["skipped_updates_total"] = run.monitor.skipped_total
  run.writer.scalars(step, scalars)
  run.progress.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['images_per_sec']:.0f}")
  run.window, run.window_start = [], time.perf_counter()


def checkpoint(run: _Run, step: int) -> None:
  """Saves the state and the data position (not during a streak of skipped updates)."""
  run.monitor.check(run.last_checkpoint)
  run.checkpointer.save(step, run.state, run.data_iter)
  run.last_checkpoint = step


def sample_grids(run: _Run, step: int, last: bool) -> None:
  """samples/step_<step>.png (the preview sampler, the method's own at the last step) and the method's
  pictures of a fixed held-out batch."""
  images = (run.sample if last else run.preview)(run.state.ema_params, run.keys["sample"])
  path = run.writer.samples(step, images)
  if path:
    run.progress.write(f"step {step}: samples -> {path}")
  if run.grids:
    for name, pictures in run.grids(run.state.ema_params, run.keys["eval"]).items():
      run.writer.grid(name, step, pictures)


def evaluate(run: _Run, step: int) -> None:
  """The periodic evaluation: its report, its numbers logged as eval/<name>, the best checkpoint kept."""
  values, path = run.evaluation(run.state.ema_params, step)
  run.writer.scalars(step, {f"eval/{name}": value for name, value in values.items()})
  run.progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()) + f" -> {path}")
  if run.best and run.best.update(step, values[run.best.metric], run.state, run.data_iter):
    run.progress.write(f"step {step}: best {run.best.metric} so far -> {run.best.directory}")


# ---- The loop. ------------------------------------------------------------------------------

def train(config: ml_collections.ConfigDict, workdir: str, *, show_progress: bool = True,
          make_evaluation: Callable[[Method, Any], Evaluation] | None = None) -> TrainState:
  """Trains config.method to config.train.steps, resuming from workdir's latest checkpoint.

  Writes under workdir: config.json (and config_history/), checkpoints/, tensorboard/,
  metrics.jsonl, samples/ (sample grids, and the method's image_grids if it has any).
  make_evaluation(method, mesh) builds the evaluation run every config.eval.every steps
  (needed when that is set); with its best_metric also checkpoints_best/. Returns the final
  TrainState. Raises Preempted after checkpointing on SIGTERM/SIGINT or a preemption notice,
  and TrainingDiverged after config.train.max_consecutive_nonfinite skipped updates.
  """
  run = _start(config, workdir, show_progress, make_evaluation)
  t = config.train
  debug_nans = config.debug.nans  # Keeps the pre-step state to re-run a bad step op by op.
  train_step = steps.jit_train_step(run.method, run.mesh, jax.tree.map(lambda x: x.sharding, run.state),
                                    config.debug.inject_nan_at_steps, donate=not debug_nans)
  try:
    with guards.StopSignal() as stop:
      for step in range(int(run.state.step) + 1, t.steps + 1):
        batch = mesh_lib.to_global(next(run.data_iter), run.mesh)
        previous = run.state if debug_nans else None  # Donated (deleted) otherwise.
        run.state, metrics = train_step(run.state, batch, run.keys["train"])
        if debug_nans and float(metrics["nonfinite"]):
          message = steps.first_nan_op(run.method, previous, batch, run.keys["train"], config.debug.inject_nan_at_steps)
          raise TrainingDiverged(f"step {step}", f"config.debug.nans: {message}")
        run.window.append(metrics)
        run.monitor.add(step, metrics)
        run.progress.update(1)
        last, preempted = step == t.steps, stop.requested(step)
        if every(step, t.log_every, last):
          log(run, step)
        if every(step, t.checkpoint_every, last or preempted):
          checkpoint(run, step)
        if preempted:
          run.checkpointer.wait()
          raise Preempted(f"{stop.received} at step {step}: checkpoint saved to "
                          f"{run.checkpointer.directory}/{step}; run the same command to resume")
        if every(step, t.sample_every, last):
          sample_grids(run, step, last)
        if run.evaluation and every(step, run.evaluation.every, last):
          evaluate(run, step)
  finally:  # Finish pending checkpoint writes.
    run.progress.close()
    run.checkpointer.close()
    if run.best:
      run.best.close()
    run.writer.close()
  return run.state
