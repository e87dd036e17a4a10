"""Run by tests/test_meanflow.py in a process with 8 CPU devices (JAX_NUM_CPU_DEVICES=8):

  python tests/scripts/meanflow_mesh.py DATA_DIR OUT_DIR

Three train steps (the trainer's compiled step, its jvp through the UNet) of the tiny MeanFlow config on one
fixed batch, on a data-parallel mesh (8 x 1) and on a data x fsdp mesh (2 x 4). Writes OUT_DIR/{dp,data_fsdp}.npz
(flat final states) and OUT_DIR/data_fsdp.json: {"variants": compiled train-step variants, "shardings":
{path: [shape, spec]}} of the data x fsdp run.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: helpers


def main(data_dir: str, out_dir: str) -> None:
  import jax

  from genimg_jax import methods
  from genimg_jax.parallel import mesh as mesh_lib
  from genimg_jax.train import steps as steps_lib
  from genimg_jax.train import workdir as workdir_lib
  from helpers import flat_params, tiny_config

  assert jax.device_count() == 8, jax.devices()
  config = tiny_config(data_dir)
  config.unlock()
  config.diffusion.process = "meanflow"
  config.model.attn_resolutions = ()
  config.sample.sampler, config.sample.steps, config.sample.preview_sampler = "meanflow", 1, ""
  method = methods.make(config)
  images = np.random.default_rng(0).uniform(-1, 1, (config.train.batch_size, *method.image_shape))
  for name, fsdp in (("dp", 1), ("data_fsdp", 4)):
    mesh = mesh_lib.make_mesh(fsdp)
    shardings = jax.tree.map(lambda x: x.sharding, workdir_lib.abstract_state(method, mesh, 256))
    state = jax.jit(method.init, out_shardings=shardings)(jax.random.PRNGKey(0))
    step = steps_lib.jit_train_step(method, mesh, shardings)
    for _ in range(3):
      state, metrics = step(state, mesh_lib.to_global({"image": images.astype(np.float32)}, mesh),
                            jax.random.PRNGKey(1))
      assert float(metrics["nonfinite"]) == 0.0, metrics
    np.savez(os.path.join(out_dir, f"{name}.npz"), **flat_params(state))
  summary = {"variants": step.jitted._cache_size(),
             "shardings": {path: [list(x.shape), str(x.sharding.spec)]
                           for path, x in zip(flat_params(state), jax.tree.leaves(state))}}
  with open(os.path.join(out_dir, "data_fsdp.json"), "w") as f:
    json.dump(summary, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
