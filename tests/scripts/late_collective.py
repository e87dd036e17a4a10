"""Script for test_compiled_together: one of 2 processes reaches a collective LATE_S seconds after the other.

  python tests/scripts/late_collective.py PORT PROCESS_ID LATE_S
Prints 'sum <value>' (the all-reduced sum over both processes' devices).
"""

import os
import sys
import time

os.environ["JAX_NUM_CPU_DEVICES"] = "2"
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from genimg_jax.parallel import distributed  # noqa: E402

if __name__ == "__main__":
  port, process_id, late_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  total = distributed.CompiledTogether(
      jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec())), "sum")
  local = np.full(2, process_id + 1, np.float32)  # Process 0 holds [1, 1], process 1 [2, 2].
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("data")), local)
  if process_id == 1:
    time.sleep(late_s)  # A slower compilation or a busy machine.
  print("sum", float(total(x)), flush=True)
