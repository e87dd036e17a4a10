"""Process-wide JAX settings, applied once before the first computation."""

import os

import jax
import ml_collections
from jax._src import xla_bridge

_GPU_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"
_CPU_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def _num_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_device_count(config: ml_collections.ConfigDict, num_cores: int | None = None) -> int:
  """The number of CPU devices for `config`: mesh.cpu_devices, or with 0 one per core
  (`num_cores`, default: the cores this process may use), reduced to the largest count
  that divides train.batch_size, the eval batch size and is a multiple of mesh.fsdp."""
  explicit = config.mesh.get("cpu_devices", 0)
  if explicit:
    return explicit
  batches = [config.train.batch_size, config.eval.get("batch_size", 0) or config.train.batch_size]
  for count in range(num_cores or _num_cores(), 0, -1):
    if count % config.mesh.fsdp == 0 and all(b % count == 0 for b in batches):
      return count
  return config.mesh.fsdp


def setup(config: ml_collections.ConfigDict) -> None:
  """Deterministic GPU ops (if config.deterministic), the CPU device count and partitionable threefry.

  XLA reads XLA_FLAGS and JAX the CPU device count when the first backend starts,
  so call this before any array is created (once started, both are left as they
  are). The CPU device count (`cpu_device_count`) applies to single-process runs
  where neither XLA_FLAGS nor JAX_NUM_CPU_DEVICES sets one; it only shapes the CPU backend, so a GPU or
  TPU run is unaffected. With partitionable threefry, random draws do not depend
  on how an array is sharded.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if config.deterministic and _GPU_DETERMINISM_FLAG not in flags:
    os.environ["XLA_FLAGS"] = (flags + " " + _GPU_DETERMINISM_FLAG).strip()
  if (not xla_bridge.backends_are_initialized() and _CPU_DEVICE_COUNT_FLAG not in flags
      and jax.config.jax_num_cpu_devices < 0 and not jax.distributed.is_initialized()):
    jax.config.update("jax_num_cpu_devices", cpu_device_count(config))
  jax.config.update("jax_threefry_partitionable", True)
