"""User-facing errors: each names the field, file or step that is wrong.

The CLI turns these into a one-line message and a non-zero exit code; anything
else that escapes is a bug and keeps its traceback.
"""


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
