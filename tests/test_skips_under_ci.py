"""tests/conftest.py: with CI set, a check skipped for want of torch or pytorch-fid fails, saying what is missing."""

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # Subprocesses: `pytest -m "not slow"` leaves them out.

CONFTEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conftest.py")
NO_TORCH = 'import sys\n\nsys.modules["torch"] = sys.modules["pytorch_fid"] = None  # imports of them fail\n'
IN_TESTS = NO_TORCH + '''
import pytest


@pytest.fixture
def fid():
  return pytest.importorskip("pytorch_fid")


def test_in_a_fixture(fid):
  pass


def test_in_the_test():
  pytest.importorskip("torch")


def test_by_hand():
  pytest.skip("pytorch-fid is not installed")


def test_for_another_reason():
  pytest.skip("needs 8 accelerators")


def test_that_runs():
  pass
'''
IN_MODULE = NO_TORCH + '''
import pytest

torch = pytest.importorskip("torch")


def test_never_collected():
  pass
'''


def _pytest(tmp_path, ci: bool, *files: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": "true"} if ci else {})
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def suite(tmp_path):
  shutil.copy(CONFTEST, tmp_path / "conftest.py")
  (tmp_path / "test_in_tests.py").write_text(IN_TESTS)
  (tmp_path / "test_in_module.py").write_text(IN_MODULE)
  return tmp_path


def test_without_ci_the_torch_checks_skip(suite):
  result = _pytest(suite, False, "test_in_tests.py", "test_in_module.py")
  assert result.returncode == 0, result.stdout[-3000:]
  assert "1 passed, 5 skipped" in result.stdout, result.stdout[-3000:]


def test_with_ci_a_skip_for_want_of_torch_fails_with_its_reason(suite):
  result = _pytest(suite, True, "test_in_tests.py")
  assert result.returncode == 1, result.stdout[-3000:]
  assert "2 failed, 1 passed, 1 skipped, 1 error" in result.stdout, result.stdout[-3000:]
  assert ": needs 8 accelerators" in result.stdout, result.stdout[-3000:]  # Another reason still skips.
  for missing in ("could not import 'pytorch_fid'", "could not import 'torch'", "pytorch-fid is not installed"):
    assert f"CI runs the PyTorch equivalence checks, but this one was skipped: Skipped: {missing}" in result.stdout, (
        missing, result.stdout[-3000:])


def test_with_ci_a_module_skipped_for_want_of_torch_fails_to_collect(suite):
  result = _pytest(suite, True, "test_in_module.py")
  assert result.returncode != 0, result.stdout[-3000:]
  assert "ERROR collecting test_in_module.py" in result.stdout, result.stdout[-3000:]
  assert "this one was skipped: Skipped: could not import 'torch'" in result.stdout, result.stdout[-3000:]
