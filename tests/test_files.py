"""files.atomic_open: a file appears whole or not at all."""

import os

import pytest

from genimg_jax.files import atomic_open


def test_atomic_open_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
  path = tmp_path / "sub" / "report.json"
  with atomic_open(str(path)) as f:
    f.write("first")
  assert path.read_text() == "first"
  with pytest.raises(RuntimeError):
    with atomic_open(str(path)) as f:
      f.write("half of the second")
      raise RuntimeError("interrupted")
  assert path.read_text() == "first" and os.listdir(path.parent) == ["report.json"]
