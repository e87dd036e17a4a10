"""genimg_jax.api: the README's "Use it from Python" block as it stands, and its option checks."""

import os
import subprocess
import sys

import pytest

from genimg_jax import api, methods
from genimg_jax.errors import ConfigError
from helpers import DIGITS_CONFIG, REPO, readme_block, tiny_config


@pytest.mark.slow
def test_readme_python_block_runs(data_dir, tmp_path):
  (tmp_path / "configs").symlink_to(os.path.join(REPO, "configs"))
  script = tmp_path / "from_python.py"
  script.write_text(readme_block("# from_python.py"))
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, GENIMG_DATA_DIR=data_dir))
  assert result.returncode == 0, result.stderr
  assert "20 ddim" in result.stdout.splitlines() and "| fid |" in result.stdout
  assert os.path.isdir(tmp_path / "runs" / "from_python" / "checkpoints" / "20")


def test_load_config_checks_overrides_like_the_command_line():
  config = api.load_config(DIGITS_CONFIG, {"train.steps": 7, "model.ch_mult": (1, 2), "data.random_flip": True})
  assert config.train.steps == 7 and config.model.ch_mult == (1, 2) and config.data.random_flip is True
  with pytest.raises(ConfigError, match=r"config\.train\.stepz"):
    api.load_config(DIGITS_CONFIG, {"train.stepz": 7})


def test_run_options_are_checked_before_any_work(data_dir):
  config = tiny_config(data_dir)
  run = api.Run(config, methods.make(config), mesh=None, state=None, step=0)
  with pytest.raises(ConfigError, match=r"evaluate\(nope=\.\.\.\): unknown option"):
    run.evaluate(nope=1)
  with pytest.raises(ConfigError, match="labels: the model is not class-conditional"):
    run.classes("all")
