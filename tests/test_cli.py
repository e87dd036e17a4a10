"""`genimg` in subprocesses: user errors, data show and prepare (each family's runs: test_cli_families)."""

import os
import re
import subprocess
import sys

import pytest

from helpers import DIGITS_CONFIG, REPO

pytestmark = pytest.mark.slow  # Subprocesses: `pytest -m "not slow"` leaves them out.


def genimg(*args, cwd=REPO, env=None):
  return subprocess.run([sys.executable, "-m", "genimg_jax.cli", *args], cwd=cwd, capture_output=True,
                        text=True, env=dict(os.environ, **(env or {})))


@pytest.mark.parametrize("args,env,field", [
    (["--config.train.stepz=3"], {}, "config.train.stepz"),
    (["--config.train.steps=ten"], {}, "config.train.steps"),
    (["--config.train.batch_size=16"], {"JAX_NUM_CPU_DEVICES": "3"},
     "config.train.batch_size"),
    (["--config.data.name=no_such_data"], {}, "config.data.name"),
])
def test_user_errors_are_one_line_naming_the_field(args, env, field, tmp_path):
  workdir = tmp_path / "run"
  result = genimg("train", "--config", DIGITS_CONFIG, "--workdir", str(workdir), *args, env=env)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"genimg: error: {field}: "), result.stderr
  assert not workdir.exists()  # Nothing half-written.


def test_data_show_writes_the_preprocessed_training_images(data_dir, tmp_path):
  out = tmp_path / "grid.png"
  result = genimg("data", "show", "--config", DIGITS_CONFIG, "--out", str(out), "--num", "9",
                  f"--config.data.data_dir={data_dir}", "--config.data.dequantize=True")
  assert result.returncode == 0, result.stderr
  assert "9 training images of digits train (16x16x1" in result.stdout
  low, high = map(float, re.search(r"values in \[(\S+), (\S+)\]", result.stdout).groups())
  assert -1.004 <= low < -0.99 and 0.99 < high <= 1.004  # Dequantized: half a level beyond [-1, 1].
  import PIL.Image

  assert PIL.Image.open(out).size == (3 * 18 + 2, 3 * 18 + 2)  # 3x3 tiles of 16 px, 2 px gaps.
  bad = genimg("data", "show", "--config", DIGITS_CONFIG, "--out", str(out), "--num", "0",
               f"--config.data.data_dir={data_dir}")
  assert bad.returncode == 2 and bad.stderr.startswith("genimg: error: --num: must be > 0")


def test_data_prepare_prepares_user_images_once(tmp_path):
  import numpy as np

  path = tmp_path / "mine.npz"
  np.savez(path, images=np.random.default_rng(0).integers(0, 256, (40, 12, 12, 3), dtype=np.uint8))
  args = ("data", "prepare", "--config", DIGITS_CONFIG, "--config.data.name=npz", f"--config.data.path={path}",
          "--config.data.channels=3", f"--config.data.data_dir={tmp_path / 'tfds'}")
  first, second = genimg(*args), genimg(*args)
  assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
  assert "npz train: 38 examples" in first.stdout and "npz test: 2 examples" in first.stdout
  assert "preparing data set 'npz'" in first.stderr and "preparing" not in second.stderr
  bad = genimg(*args, "--config.data.crop_size=-1")
  assert bad.returncode == 2 and bad.stderr.startswith("genimg: error: config.data.crop_size: must be >= 0")


def test_sample_without_a_run_names_the_workdir(tmp_path):
  result = genimg("sample", "--workdir", str(tmp_path), "--out", str(tmp_path / "x.png"))
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith(f"genimg: error: {tmp_path}: no config.json here")


def test_sample_with_config_but_no_checkpoint_names_the_directory(tmp_path):
  from genimg_jax import config as config_lib

  (tmp_path / "config.json").write_text(config_lib.to_json(config_lib.load(DIGITS_CONFIG, [])))
  result = genimg("sample", "--workdir", str(tmp_path), "--out", str(tmp_path / "x.png"))
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith(f"genimg: error: {tmp_path / 'checkpoints'}: no checkpoint found")
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_sample_with_a_malformed_config_json_names_the_file(tmp_path):
  (tmp_path / "config.json").write_text('{"train": ')
  result = genimg("sample", "--workdir", str(tmp_path), "--out", str(tmp_path / "x.png"))
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith(f"genimg: error: {tmp_path / 'config.json'}: not a valid resolved config")
