"""The generic training loop: any method, one code path from 1 CPU to many devices.

Sections: set-up (mesh, method, data, state) / the loop (jitted step, logs,
checkpoints, sample grids, stop requests) / tear-down.
"""

import os
import sys
import time

import jax
import ml_collections
import numpy as np
import tqdm

from genimg_jax import config as config_lib
from genimg_jax import methods
from genimg_jax.data import datasets, pipeline
from genimg_jax.errors import DataError, Preempted, TrainingDiverged
from genimg_jax.evaluation import suite
from genimg_jax.methods.base import TrainState
from genimg_jax.train import checkpoint as ckpt_lib
from genimg_jax.train import distributed
from genimg_jax.train import guards
from genimg_jax.train import mesh as mesh_lib
from genimg_jax.train import steps, workdir as workdir_lib
from genimg_jax.train.writer import RunWriter


def _check_image_shape(source, data, method) -> None:
  shape = tuple(np.asarray(pipeline.eval_dataset(source, data, local_batch_size=1, process_index=0,
                                                 process_count=1)[0]["image"].shape[1:]))
  if shape != method.image_shape:
    raise DataError("config.data", f"the data set's images are {shape} (H, W, C) but the config "
                    f"asks for {method.image_shape} (data.image_size, data.image_size, data.channels)")


def _mean_metrics(window: list[dict]) -> dict[str, float]:
  fetched = jax.device_get(window)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def train(config: ml_collections.ConfigDict, workdir: str, *, show_progress: bool = True) -> TrainState:
  """Trains config.method to config.train.steps, resuming from workdir's latest checkpoint.

  Writes under workdir: config.json (and config_history/), checkpoints/,
  tensorboard/, samples/ (sample grids, and the method's image_grids if it has
  any); with config.eval.every also eval/eval_<step>.json, and with
  config.eval.best_metric checkpoints_best/. Returns the final TrainState.
  Raises Preempted after checkpointing on SIGTERM/SIGINT or a preemption notice,
  and TrainingDiverged after config.train.max_consecutive_nonfinite skipped updates.
  """
  # ---- Set-up: config, mesh, method, data. -------------------------------------------------
  config_lib.validate_common(config)
  mesh = mesh_lib.make_mesh(config.mesh.fsdp)
  local_batch = mesh_lib.local_batch_size(config.train.batch_size, mesh)
  method = methods.make(config)
  keys = steps.root_keys(config.seed)

  source = datasets.open_split(config.data, config.data.train_split)
  _check_image_shape(source, config.data, method)
  data_stream = lambda start_batch=0: iter(pipeline.train_dataset(
      source, config.data, seed=config.seed, local_batch_size=local_batch,
      process_index=jax.process_index(), process_count=jax.process_count(), start_batch=start_batch))
  data_iter = data_stream()
  grids = None  # The method's extra pictures of a fixed held-out batch, next to the samples.
  if method.image_grids is not None:
    held_out = datasets.open_split(config.data, config.data.eval_split)
    _check_image_shape(held_out, config.data, method)
    grids = steps.image_grids(method, mesh, held_out, config.data, config.train.num_samples)

  # ---- State: restore the newest readable checkpoint or initialise. -----------------------
  # Nothing is written before this point, so a config that does not fit the run fails clean.
  abstract = workdir_lib.abstract_state(method, mesh, config.mesh.fsdp_min_size)
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
  checkpointer = ckpt_lib.Checkpointer(workdir_lib.checkpoint_dir(workdir), config.train.keep_checkpoints)
  restored = checkpointer.restore_latest(abstract, data_iter)
  if restored is None:
    state = distributed.CompiledTogether(jax.jit(method.init, out_shardings=state_sharding), "init")(keys["init"])
    last_checkpoint = None
  else:
    state, last_checkpoint = restored.state, restored.step
  start = int(state.step)
  if jax.process_index() == 0:
    print(f"resuming from step {start} ({os.path.join(checkpointer.directory, str(start))})" if restored is not None
          else f"starting from scratch in {workdir}", flush=True)
  if restored is not None and not restored.data_restored:
    # Written by another number of processes: the position follows from the step.
    data_iter = data_stream(restored.step)
    if jax.process_index() == 0:
      print(f"checkpoint {restored.step} was written by another number of processes: the data stream "
            f"continues at global batch {restored.step + 1}", file=sys.stderr)
  workdir_lib.write_config(workdir, config, start)
  writer = RunWriter(workdir)

  debug_nans = config.debug.nans  # Keeps the pre-step state to re-run a bad step op by op.
  train_step = steps.jit_train_step(method, mesh, state_sharding, config.debug.inject_nan_at_steps,
                                    donate=not debug_nans)
  # Grids show the same images (keys) every time, so successive steps compare; the periodic ones
  # may use the method's cheaper preview sampler, the last one uses its sampler.
  sample = steps.sampler(method, mesh, config.train.num_samples)
  preview = (steps.sampler(method, mesh, config.train.num_samples, sample_fn=method.preview_sample)
             if method.preview_sample else sample)
  monitor = guards.NonFiniteMonitor(config.train.max_consecutive_nonfinite)
  total = config.train.steps

  # Periodic evaluation: built now so that missing weights or data fail before the first step.
  eval_options = suite.settings(config)
  evaluator = suite.Evaluator(config, method, mesh, eval_options, config.seed) if eval_options.every else None
  best = None
  if evaluator:
    evaluator.prepare()
    if eval_options.best_metric:
      best = ckpt_lib.BestCheckpoint(workdir_lib.best_checkpoint_dir(workdir), eval_options.best_metric,
                                     eval_options.best_metric in suite.HIGHER_IS_BETTER)

  # ---- The loop. --------------------------------------------------------------------------
  window, window_start = [], time.perf_counter()
  progress = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                       disable=not show_progress or jax.process_index() != 0)
  try:
    with guards.StopSignal() as stop:
      for step in range(start + 1, total + 1):
        batch = mesh_lib.to_global(next(data_iter), mesh)
        previous = state if debug_nans else None  # Donated (deleted) otherwise.
        state, metrics = train_step(state, batch, keys["train"])
        if debug_nans and float(metrics["nonfinite"]):
          message = steps.first_nan_op(method, previous, batch, keys["train"], config.debug.inject_nan_at_steps)
          raise TrainingDiverged(f"step {step}", f"config.debug.nans: {message}")
        window.append(metrics)
        monitor.add(step, metrics)
        progress.update(1)
        last = step == total
        preempted = stop.requested(step)

        if step % config.train.log_every == 0 or last:
          monitor.check(last_checkpoint)
          scalars = _mean_metrics(window)
          seconds = time.perf_counter() - window_start
          scalars["steps_per_sec"] = len(window) / seconds
          scalars["images_per_sec"] = len(window) * config.train.batch_size / seconds
          scalars["skipped_updates_total"] = monitor.skipped_total
          writer.scalars(step, scalars)
          progress.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['images_per_sec']:.0f}")
          window, window_start = [], time.perf_counter()

        if step % config.train.checkpoint_every == 0 or last or preempted:
          monitor.check(last_checkpoint)
          checkpointer.save(step, state, data_iter)
          last_checkpoint = step

        if preempted:
          checkpointer.wait()
          raise Preempted(f"{stop.received} at step {step}: checkpoint saved to "
                          f"{checkpointer.directory}/{step}; run the same command to resume")

        if (config.train.sample_every and step % config.train.sample_every == 0) or last:
          images = (sample if last else preview)(state.ema_params, keys["sample"])
          path = writer.samples(step, images)
          if path:
            progress.write(f"step {step}: samples -> {path}")
          if grids:
            for name, pictures in grids(state.ema_params, keys["eval"]).items():
              writer.grid(name, step, pictures)

        if evaluator and (step % eval_options.every == 0 or last):
          report = evaluator(state.ema_params, step)
          path = suite.write_report(workdir, report)
          values = suite.scalars(report)
          writer.scalars(step, {f"eval/{name}": value for name, value in values.items()})
          progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()) + f" -> {path}")
          if best and best.update(step, suite.metric_value(values, best.metric), state, data_iter):
            progress.write(f"step {step}: best {best.metric} so far -> {workdir_lib.best_checkpoint_dir(workdir)}")
  finally:
    # ---- Tear-down: finish pending checkpoint writes. -----------------------------------
    progress.close()
    checkpointer.close()
    if best:
      best.close()
    writer.close()
  return state
