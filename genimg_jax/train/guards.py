"""Stopping a run safely: on a signal or preemption notice, and on non-finite updates."""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from genimg_jax.errors import TrainingDiverged


class StopSignal:
  """A context in which SIGTERM/SIGINT ask the loop to stop after the current step.

  Single process: our handlers set a flag (a second SIGINT interrupts at once).
  Several processes: no handler is installed, since a flag set in one process
  alone would make it stop while the others wait in collectives; JAX's
  coordination service receives the preemption notice (SIGTERM) and
  `reached_preemption_sync_point` makes every process stop at the same step.
  """

  def __init__(self):
    self.received: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def requested(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step` (called once per step on every process)."""
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.received = "preemption notice"
    return self.received is not None


class NonFiniteMonitor:
  """Counts consecutive skipped (non-finite) updates from the step metrics, lazily.

  `add` keeps device metrics without waiting for them; `check` fetches what was
  added since the last check and raises TrainingDiverged once `limit` updates in
  a row were non-finite. Call it before every checkpoint so none is written then.
  """

  def __init__(self, limit: int):
    self.limit = limit
    self.skipped_total = 0
    self._pending: list[tuple[int, dict]] = []
    self._streak = 0
    self._streak_start = 0
    self._bad_metrics: list[str] = []

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def check(self, last_checkpoint: int | None) -> None:
    fetched = jax.device_get([m for _, m in self._pending])
    steps = [s for s, _ in self._pending]
    self._pending = []
    for step, metrics in zip(steps, fetched):
      if not metrics["nonfinite"]:
        self._streak = 0
        continue
      self.skipped_total += 1
      if self._streak == 0:
        self._streak_start = step
        self._bad_metrics = [k for k, v in metrics.items() if k != "nonfinite" and not np.all(np.isfinite(v))]
      self._streak += 1
      if self._streak >= self.limit:
        where = ", ".join(self._bad_metrics) or "the updated state (parameters or optimizer)"
        kept = f"step {last_checkpoint}" if last_checkpoint is not None else "none yet"
        raise TrainingDiverged(
            f"step {self._streak_start}",
            f"non-finite values in {where}; {self._streak} consecutive updates (steps "
            f"{self._streak_start}-{step}) skipped, so training stopped (config.train."
            f"max_consecutive_nonfinite={self.limit}); last good checkpoint: {kept}")
