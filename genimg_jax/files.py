"""Writing files so that a reader never sees half of one."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
  """Yields a file opened with `mode` next to `path`; on success renames it onto `path`.

  The rename is atomic on POSIX, so `path` holds the old content or the new, never
  a part. On an exception the temporary file is removed and `path` is untouched.
  Creates `path`'s directory if needed.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(temporary)
    raise
