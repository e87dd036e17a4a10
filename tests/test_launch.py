"""Launching multi-process runs: the scripts, the distributed flags and the mesh stop early naming what is wrong."""

import os
import subprocess

import pytest

from helpers import REPO

LAUNCH = os.path.join(REPO, "launch")


def _run(script, *args, **env):
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                        env={"PATH": os.environ["PATH"], **env}, timeout=60)


@pytest.mark.parametrize("script", ["local.sh", "tpu_pod.sh", "slurm.sbatch"])
def test_scripts_parse(script):
  assert subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)]).returncode == 0


@pytest.mark.parametrize("script,env,message", [
    ("tpu_pod.sh", {}, "set TPU_NAME"),
    ("tpu_pod.sh", {"TPU_NAME": "t", "ZONE": "z", "ACCELERATOR_TYPE": "v4-32"}, "set GENIMG_DATA_DIR"),
    ("slurm.sbatch", {"GENIMG_DATA_DIR": "/d"}, "set GENIMG_VENV"),
    ("slurm.sbatch", {"GENIMG_DATA_DIR": "/d", "GENIMG_VENV": "/v"}, "submit it with sbatch"),
])
def test_missing_variables_stop_before_anything_runs(script, env, message):
  result = _run(script, "--config", "configs/ddpm_digits.py", **env)
  assert result.returncode == 2 and message in result.stderr, result.stderr


def test_local_needs_a_process_count():
  assert "usage: launch/local.sh N" in _run("local.sh").stderr
  result = _run("local.sh", "two", "--config", "x")
  assert result.returncode == 2 and "N must be a positive integer, got 'two'" in result.stderr
  result = _run("local.sh", "2", GENIMG_CPU_DEVICES="0")
  assert result.returncode == 2 and "GENIMG_CPU_DEVICES must be a positive integer" in result.stderr


@pytest.mark.parametrize("flags,field", [
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=None), "--process_id"),
    (dict(coordinator_address=None, num_processes=2, process_id=0), "--coordinator_address"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), "--process_id"),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), "--coordinator_address"),
])
def test_incomplete_distributed_flags_name_the_flag(flags, field):
  from genimg_jax.errors import ConfigError
  from genimg_jax.parallel import distributed

  with pytest.raises(ConfigError) as e:
    distributed.initialize(**flags, heartbeat_timeout_s=100, initialization_timeout_s=300)
  assert e.value.where == field
  with pytest.raises(ConfigError) as e:
    distributed.initialize(None, None, None, heartbeat_timeout_s=0, initialization_timeout_s=300)
  assert e.value.where == "--heartbeat_timeout_s"


def test_cluster_detection_from_the_environment():
  from genimg_jax.parallel.distributed import cluster_detected

  assert cluster_detected({}) is None
  assert cluster_detected({"TPU_WORKER_HOSTNAMES": "w0"}) is None  # A single-host TPU VM.
  assert cluster_detected({"TPU_WORKER_HOSTNAMES": "w0,w1"}).startswith("TPU pod slice")
  assert cluster_detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert cluster_detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}).startswith("SLURM")
  assert cluster_detected({"OMPI_COMM_WORLD_SIZE": "4"}).startswith("Open MPI")


def test_fsdp_size_must_divide_the_devices():
  import jax

  from genimg_jax.errors import ConfigError
  from genimg_jax.parallel import mesh

  with pytest.raises(ConfigError, match="must be >= 1 and divide the number of devices") as e:
    mesh.make_mesh(jax.device_count() + 1)
  assert e.value.where == "config.mesh.fsdp"
