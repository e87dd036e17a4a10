"""One `genimg train` per workdir: an exclusive lock held for the whole run.

The lock is `fcntl.flock` on WORKDIR/.train.lock, taken by process 0 of a run. The
kernel releases it when the process ends, however it ends (kill -9 included), so a
lock file left behind blocks nothing. The file is never deleted (deleting it could
let two runs lock two different files); it holds a line naming the current holder.
"""

import datetime
import fcntl
import os
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils

from genimg_jax.errors import UserError

FILE_NAME = ".train.lock"


class WorkdirBusy(UserError):
  """Another run holds the workdir's lock."""


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, FILE_NAME)


class WorkdirLock:
  """A context manager holding the lock on `workdir` (created if needed) from enter to exit.

  Raises WorkdirBusy naming the holder (pid, host, since when) if another run holds it. In a
  multi-process run process 0 takes it and every process learns whether it did.
  """

  def __init__(self, workdir: str):
    self.workdir, self.path = workdir, lock_path(workdir)
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    holder = self._acquire() if jax.process_index() == 0 else None
    if jax.process_count() > 1:  # Every process stops if process 0 could not take the lock.
      busy = multihost_utils.broadcast_one_to_all(np.int32(holder is not None))
      holder = holder if holder is not None else ("held by another run" if busy else None)
    if holder is not None:
      raise WorkdirBusy(self.workdir, f"another `genimg train` holds its lock {FILE_NAME} ({holder}); wait for "
                        "it to end or stop it, then run again")
    return self

  def _acquire(self) -> str | None:
    """Takes the lock and writes this process into the file; returns None, or who holds it instead."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    lock_file = open(self.path, "a+")  # Not truncated: the holder's line is read below if it is busy.
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock_file.seek(0)
      holder = lock_file.read().strip() or "holder not yet written"
      lock_file.close()
      return holder
    lock_file.seek(0)
    lock_file.truncate()
    since = datetime.datetime.now().isoformat(timespec="seconds")
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
    lock_file.flush()
    self._file = lock_file
    return None

  def __exit__(self, *exc_info) -> None:
    if self._file is not None:
      self._file.truncate(0)  # A lock file left behind names no one.
      self._file.close()  # Releases the lock.
      self._file = None
