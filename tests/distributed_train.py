"""Run by tests as one of several JAX processes on 127.0.0.1 (CPU, gloo collectives):

  python tests/distributed_train.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR WORKDIR STEPS

trains the tiny config (4 CPU devices per process) and exits with the CLI's codes.
"""

import sys

import jax


def main(process_id: str, num_processes: str, port: str, data_dir: str, workdir: str, steps: str) -> int:
  jax.config.update("jax_num_cpu_devices", 4)
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=int(num_processes),
                             process_id=int(process_id), initialization_timeout=60)
  from absl import flags

  from genimg_jax.errors import Preempted
  from genimg_jax.train import runtime, trainer
  from helpers import tiny_config

  flags.FLAGS.mark_as_parsed()
  config = tiny_config(data_dir, steps=int(steps))
  config.unlock()
  config.train.checkpoint_every = 10_000
  config.train.log_every = 1
  runtime.setup(config)
  try:
    trainer.train(config, workdir, show_progress=False)
  except Preempted as e:
    print(f"process {process_id}: stopped: {e}", flush=True)
    return e.exit_code
  return 0


if __name__ == "__main__":
  sys.exit(main(*sys.argv[1:]))
