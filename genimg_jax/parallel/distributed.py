"""Joining a multi-process run: `jax.distributed.initialize` when there is more than one process.

Explicit: --coordinator_address HOST:PORT --num_processes N --process_id I (all three).
Automatic: on a TPU VM pod slice, under SLURM with several tasks, and under Open
MPI with several ranks, JAX reads the cluster's environment itself.
Otherwise the run is a single process and nothing is initialised.

Failure detection is JAX's coordination service: every process sends heartbeats
to the coordinator (process 0). When a process dies, the service notices its
missing heartbeats after heartbeat_timeout_s and every surviving process
terminates with an error, instead of waiting forever inside a collective; if the
coordinator itself dies, the others notice within the same timeout.

Meeting before collectives: on CPUs the collectives run over gloo, which gives
up after 30 s when one process reaches a program's first collective that much
later than another (as when it compiles slower, or the machine is busy). Every
jitted function that the processes run together is therefore wrapped in
`CompiledTogether`: compiled first, then a coordination-service barrier (whose
timeout is generous), then run.
"""

import itertools
import os

import jax
from orbax.checkpoint import multihost

from genimg_jax.errors import ConfigError


def cluster_detected(environ=os.environ) -> str | None:
  """The multi-process cluster environment JAX will read, or None (single process)."""
  if "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "TPU pod slice (TPU_WORKER_HOSTNAMES)"
  if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1"))) > 1:
    return "SLURM (SLURM_NTASKS)"
  if int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI (OMPI_COMM_WORLD_SIZE)"
  return None


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None, *,
               heartbeat_timeout_s: int, initialization_timeout_s: int) -> None:
  """Joins the run's other processes if there are any (see the module docstring).

  Call before anything touches a JAX device. Raises ConfigError naming the flag
  when the explicit flags are given incompletely or inconsistently.
  """
  explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
              "--process_id": process_id}
  given = [flag for flag, value in explicit.items() if value is not None]
  timeouts = dict(heartbeat_timeout_seconds=heartbeat_timeout_s, initialization_timeout=initialization_timeout_s)
  if heartbeat_timeout_s <= 0 or initialization_timeout_s <= 0:
    raise ConfigError("--heartbeat_timeout_s" if heartbeat_timeout_s <= 0 else "--initialization_timeout_s",
                      "must be > 0")
  if given:
    missing = [flag for flag in explicit if flag not in given]
    if missing:
      raise ConfigError(missing[0], f"needed with {', '.join(given)}: give all of --coordinator_address, "
                        "--num_processes and --process_id")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ConfigError("--process_id", f"{process_id} is not in [0, --num_processes={num_processes})")
    if ":" not in coordinator_address:
      raise ConfigError("--coordinator_address", f"{coordinator_address!r} is not HOST:PORT")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **timeouts)
  elif cluster_detected():
    jax.distributed.initialize(**timeouts)


BARRIER_TIMEOUT_S = 3600
_barriers = itertools.count()  # Every process meets the same barriers in the same order.


def barrier(name: str) -> None:
  """Waits until every process has called barrier(name) (a no-op in a single process).

  Uses the coordination service, not a collective, so it tolerates any gap up
  to BARRIER_TIMEOUT_S. Every process must meet the same barriers in the same order.
  """
  multihost.get_barrier_sync_fn()(key=f"genimg {name} #{next(_barriers)}", timeout_ms=BARRIER_TIMEOUT_S * 1000)


class CompiledTogether:
  """A jitted function whose first call for each input signature, in a multi-process run, compiles it
  and then waits at a barrier, so every process enters its collectives together (see module docstring).

  Single process: calls the jitted function directly. jit keeps the compiled program, so
  the call after the barrier compiles nothing.
  """

  def __init__(self, jitted, name: str):
    self.jitted, self._name, self._seen = jitted, name, set()

  def __call__(self, *args):
    if jax.process_count() > 1:
      leaves, structure = jax.tree.flatten(args)
      signature = (structure, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x))),
                                     getattr(x, "sharding", None)) for x in leaves))
      if signature not in self._seen:
        self.jitted.lower(*args).compile()
        barrier(f"compiled {self._name}")
        self._seen.add(signature)
    return self.jitted(*args)
