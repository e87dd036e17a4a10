import os
import re
import sys
import tempfile

import pytest

# Identical programs compile once for the whole suite, its worker and child processes included
# (a persistent XLA cache keyed by the program and the JAX version).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "genimg_jax_tests_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# One CPU device unless a test asks for more (config default: one per core), here and in the
# processes tests start: runs compare across processes, and compile once.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/

import jax  # noqa: E402
from absl import flags  # noqa: E402

jax.devices()  # Started here, the backend keeps its devices: runtime.setup leaves it as is.

flags.FLAGS.mark_as_parsed()  # grain reads absl flags.


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tfds data dir shared by all tests; data sets are prepared into it on first use."""
  return str(tmp_path_factory.mktemp("tfds"))


# Under CI every check runs: a skip for want of torch or pytorch-fid (the PyTorch equivalence checks) fails instead.
TORCH_SKIP = re.compile(r"\b(torch|torchvision|pytorch[-_]fid)\b")


def _in_ci() -> bool:
  return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _fail_torch_skip(report):
  """A skipped report whose reason names torch or pytorch-fid, failed with that reason, when CI is set."""
  if not (_in_ci() and report.skipped and isinstance(report.longrepr, tuple)) or hasattr(report, "wasxfail"):
    return report
  reason = report.longrepr[2]
  if TORCH_SKIP.search(reason):
    report.outcome = "failed"
    report.longrepr = (f"CI runs the PyTorch equivalence checks, but this one was skipped: {reason}\n"
                       "torch and pytorch-fid come with the test extra: pip install -e \".[test]\"")
  return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  return _fail_torch_skip((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
  return _fail_torch_skip((yield))
