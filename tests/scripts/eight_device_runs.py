"""Run by tests/test_scale.py in a process with 8 CPU devices (JAX_NUM_CPU_DEVICES=8):

  python tests/scripts/eight_device_runs.py DATA_DIR OUT_DIR RESUME_WORKDIR

Trains the tiny config for 20 steps data parallel (mesh 8x1) and FSDP (mesh 1x8),
then continues RESUME_WORKDIR (a run checkpointed by another number of processes)
to step 30. Writes OUT_DIR/{dp,fsdp,resumed}.npz (flat final states) and
OUT_DIR/fsdp_shardings.json ({path: [shape, spec, per-device shard shape]} of the
FSDP state).
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: helpers


def main(data_dir: str, out_dir: str, resume_workdir: str) -> None:
  import jax

  from genimg_jax.parallel import runtime
  from genimg_jax.train import trainer
  from helpers import flat_params, tiny_config

  assert jax.device_count() == 8, jax.devices()
  for name, fsdp in (("dp", 1), ("fsdp", 8)):
    config = tiny_config(data_dir, steps=20)
    config.unlock()
    config.mesh.fsdp, config.mesh.fsdp_min_size = fsdp, 1024
    runtime.setup(config)
    state = trainer.train(config, os.path.join(out_dir, name), show_progress=False)
    np.savez(os.path.join(out_dir, f"{name}.npz"), **flat_params(state))
  shardings = {path: [list(x.shape), str(x.sharding.spec), list(x.addressable_shards[0].data.shape)]
               for path, x in zip(flat_params(state), jax.tree.leaves(state))}
  with open(os.path.join(out_dir, "fsdp_shardings.json"), "w") as f:
    json.dump(shardings, f)
  state = trainer.train(tiny_config(data_dir, steps=30), resume_workdir, show_progress=False)
  np.savez(os.path.join(out_dir, "resumed.npz"), **flat_params(state))


if __name__ == "__main__":
  main(*sys.argv[1:])
