"""User-facing errors and warnings: each names the field, file or step concerned.

The CLI turns these into a one-line message and a non-zero exit code; anything
else that escapes is a bug and keeps its traceback.
"""


import sys


def warn(where: str, message: str) -> None:
  """One line on stderr: `genimg: warning: <where>: <message>`."""
  print(f"genimg: warning: {where}: {message}", file=sys.stderr, flush=True)


class UserError(Exception):
  """An error caused by the user's input (config, files, data), not by a bug."""

  exit_code = 2

  def __init__(self, where: str, message: str):
    super().__init__(f"{where}: {message}")
    self.where = where
    self.message = message


class ConfigError(UserError):
  """A config field is unknown, has the wrong type or an invalid value."""


class DataError(UserError):
  """A data set is unknown, missing or malformed."""


class CheckpointError(UserError):
  """A workdir has no usable checkpoint or resolved config."""


class TrainingDiverged(UserError):
  """Too many consecutive updates had non-finite values; the last good checkpoint is kept."""

  exit_code = 3


class Preempted(Exception):
  """Training stopped on a signal or preemption notice after saving a checkpoint."""

  exit_code = 75  # EX_TEMPFAIL: run the same command again to resume.
