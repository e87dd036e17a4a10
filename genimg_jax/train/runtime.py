"""Process-wide JAX settings, applied once before the first computation."""

import os

import jax
import ml_collections

_GPU_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


def setup(config: ml_collections.ConfigDict) -> None:
  """Deterministic GPU ops (if config.deterministic) and partitionable threefry.

  XLA reads XLA_FLAGS when the first backend starts, so call this before any
  array is created. With partitionable threefry, random draws do not depend on
  how an array is sharded.
  """
  if config.deterministic and _GPU_DETERMINISM_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _GPU_DETERMINISM_FLAG).strip()
  jax.config.update("jax_threefry_partitionable", True)
