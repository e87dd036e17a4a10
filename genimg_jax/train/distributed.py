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
"""

import os

import jax

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
