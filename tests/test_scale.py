"""Multi-process and FSDP training on one machine: 2 processes x 4 CPU devices (gloo), meshes of 8 devices."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from genimg_jax import methods
from genimg_jax.data import datasets, pipeline
from genimg_jax.train import checkpoint as ckpt_lib
from genimg_jax.parallel import mesh as mesh_lib
from genimg_jax.train import workdir as workdir_lib
from helpers import DIGITS_CONFIG, REPO, assert_states_close, flat_params, tiny_args, tiny_config

pytestmark = pytest.mark.slow  # Subprocesses: `pytest -m "not slow"` leaves them out.

LOCAL = os.path.join(REPO, "launch", "local.sh")


def _restore(workdir, config, step: int) -> dict:
  """The flat state of checkpoint `step` of a run, restored onto this process's single device."""
  method = methods.make(config)
  checkpointer = ckpt_lib.Checkpointer(workdir_lib.checkpoint_dir(str(workdir)), create=False)
  abstract = workdir_lib.abstract_state(method, mesh_lib.make_mesh(), config.mesh.fsdp_min_size)
  state = checkpointer.restore(step, abstract).state
  checkpointer.close()
  return flat_params(state)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  """A 2-process run to step 30 (launch/local.sh), then in one 8-device process: 20 steps data
  parallel, 20 steps FSDP, and the 2-process run continued from its step-20 checkpoint to 30."""
  root = tmp_path_factory.mktemp("scale")
  datasets.open_split(tiny_config(data_dir).data, "train")  # Prepared before the processes start.
  env = dict(os.environ, GENIMG_CPU_DEVICES="4",
             GENIMG_COMMAND=f"{sys.executable} {os.path.join(REPO, 'tests', 'scripts', 'distributed_train.py')} {root}")
  two = subprocess.run([LOCAL, "2", "--config", DIGITS_CONFIG, "--workdir", str(root / "two"), "--no_progress",
                        *tiny_args(data_dir, steps=30)], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
  shutil.copytree(root / "two", root / "resume")
  shutil.rmtree(root / "resume" / "checkpoints" / "30")
  eight = subprocess.run([sys.executable, os.path.join(REPO, "tests", "scripts", "eight_device_runs.py"), data_dir,
                          str(root), str(root / "resume")], env=dict(os.environ, JAX_NUM_CPU_DEVICES="8"), cwd=REPO,
                         capture_output=True, text=True, timeout=600)
  assert eight.returncode == 0, eight.stderr[-3000:]
  return root, eight.stderr


def test_two_processes_equal_one_process_with_eight_devices(runs, data_dir):
  root, _ = runs
  one_process = dict(np.load(root / "dp.npz"))
  assert_states_close(_restore(root / "two", tiny_config(data_dir), 20), one_process)


def test_each_process_loaded_only_its_block_of_each_global_batch(runs, data_dir):
  root, _ = runs
  config = tiny_config(data_dir)
  stream = iter(pipeline.train_dataset(datasets.open_split(config.data, "train"), config.data, seed=config.seed,
                                       local_batch_size=16, process_index=0, process_count=1))
  expected = np.stack([next(stream)["label"] for _ in range(30)])
  for p in range(2):
    seen = np.load(root / f"process_{p}.npz")
    assert seen["labels"].shape == (30, 8)
    np.testing.assert_array_equal(seen["labels"], expected[:, 8 * p:8 * (p + 1)])
  checksums = [np.load(root / f"process_{p}.npz")["checksums"] for p in range(2)]
  assert not np.array_equal(checksums[0], checksums[1])


def test_fsdp_matches_data_parallel_and_shards_the_large_arrays(runs):
  root, _ = runs
  assert_states_close(dict(np.load(root / "fsdp.npz")), dict(np.load(root / "dp.npz")))
  shardings = json.load(open(root / "fsdp_shardings.json"))
  whole = per_device = 0
  for path, (shape, spec, shard) in shardings.items():
    size = int(np.prod(shape))
    if size >= 1024 and any(n % 8 == 0 for n in shape):
      axis = max((i for i, n in enumerate(shape) if n % 8 == 0), key=lambda i: (shape[i], i))
      assert shard == [n // 8 if i == axis else n for i, n in enumerate(shape)], (path, spec)
      assert "fsdp" in spec, path
    else:
      assert shard == shape, (path, spec)  # Small arrays are replicated.
    if path.startswith(".params"):
      whole += size
      per_device += int(np.prod(shard))
  assert per_device / whole < 0.15, (per_device, whole)  # About 1/8: a few small arrays stay whole.


def test_fsdp_checkpoint_restores_onto_one_device(runs, data_dir):
  root, _ = runs
  config = tiny_config(data_dir)
  config.unlock()
  config.mesh.fsdp, config.mesh.fsdp_min_size = 8, 1024
  restored = _restore(root / "fsdp", config, 20)
  want = dict(np.load(root / "fsdp.npz"))
  assert restored.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(restored[k], want[k], err_msg=k)


def test_two_process_checkpoint_continues_identically_in_one_process(runs, data_dir):
  root, log = runs
  assert "checkpoint 20 was written by another number of processes" in log
  assert_states_close(dict(np.load(root / "resumed.npz")), _restore(root / "two", tiny_config(data_dir), 30))


def test_killing_one_process_stops_the_other_within_the_heartbeat_timeout(data_dir, tmp_path):
  datasets.open_split(tiny_config(data_dir).data, "train")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  heartbeat = 10
  procs = [subprocess.Popen(
      [sys.executable, "-m", "genimg_jax.cli", "train", "--config", DIGITS_CONFIG, "--workdir", str(tmp_path / "run"),
       "--no_progress", "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id",
       str(i), "--heartbeat_timeout_s", str(heartbeat), *tiny_args(data_dir, steps=100_000)],
      env=dict(os.environ, JAX_NUM_CPU_DEVICES="4"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  try:
    deadline = time.time() + 300
    while not os.path.isdir(tmp_path / "run" / "checkpoints" / "10"):  # Training is under way.
      assert time.time() < deadline and procs[0].poll() is None and procs[1].poll() is None
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, err = procs[0].communicate(timeout=3 * heartbeat + 60)
    waited = time.time() - killed_at
  finally:
    for p in procs:
      p.kill()
  print(f"\nsurvivor exited {procs[0].returncode} after {waited:.1f} s; heartbeat timeout {heartbeat} s")
  print("\n".join(line for line in err.splitlines() if "@" not in line)[-1500:])
  assert procs[0].returncode != 0
  assert waited < 3 * heartbeat + 60
  assert err.strip(), "the survivor says nothing about why it stopped"
