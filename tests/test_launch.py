"""The launch scripts parse, and stop early naming what is missing."""

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
