"""distributed.CompiledTogether: processes that reach a collective far apart still meet."""

import pytest
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp

from genimg_jax.parallel import distributed
from helpers import REPO

pytestmark = pytest.mark.slow  # Subprocesses: `pytest -m "not slow"` leaves them out.

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


def test_a_process_35_seconds_late_to_the_first_collective_still_meets_the_other():
  # Without the barrier, gloo's context set-up gives up after 30 s (GetKeyValue() timed out).
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  script = os.path.join(REPO, "tests", "scripts", "late_collective.py")
  procs = [subprocess.Popen([sys.executable, script, str(port), str(i), "35"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
    assert "sum 6.0" in out, out


def test_one_barrier_per_new_signature_and_no_second_compilation(monkeypatch):
  met, lowerings = [], []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed, "barrier", met.append)
  listen = lambda event, duration, **kwargs: lowerings.append(event) if event == LOWERING_EVENT else None
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    double = distributed.CompiledTogether(jax.jit(lambda x: 2 * x), "double")
    x, y, longer = jnp.ones(3), jnp.zeros(3), jnp.ones(4)
    before = len(lowerings)
    doubled = double(x)
    assert met == ["compiled double"] and len(lowerings) == before + 1  # The call reused the compiled program.
    assert doubled.tolist() == [2.0, 2.0, 2.0]
    double(y)
    assert met == ["compiled double"] and len(lowerings) == before + 1
    double(longer)
    assert met == ["compiled double"] * 2 and len(lowerings) == before + 2
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
