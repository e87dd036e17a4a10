"""A ddpm run written by the code at 3d3622c (tests/fixtures/) fits the model, samples, evaluates and resumes."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from genimg_jax import methods, seeds
from genimg_jax.train import workdir as workdir_lib
from genimg_jax.train.checkpoint import Checkpointer
from helpers import REPO

pytestmark = pytest.mark.slow  # Subprocesses: `pytest -m "not slow"` leaves them out.

FIXTURE = os.path.join(REPO, "tests", "fixtures", "ddpm_run_v1")
# The fields the fixture was trained with (tests/fixtures/README.md), but train.steps: what resuming repeats.
FIXTURE_OVERRIDES = {
    "data.image_size": 8, "model.ch": 4, "model.ch_mult": (1, 2), "model.norm_groups": 4,
    "diffusion.num_timesteps": 20, "sample.steps": 5, "sample.preview_steps": 5, "train.batch_size": 16,
    "train.eval_batches": 1, "train.num_samples": 4, "train.log_every": 2, "train.checkpoint_every": 2,
}


@pytest.fixture
def run(tmp_path) -> str:
  """A copy of the fixture run: the commands write into their workdir."""
  return str(shutil.copytree(FIXTURE, tmp_path / "run"))


def genimg(*args, cwd, data_dir) -> subprocess.CompletedProcess:
  # The fixture's config.json leaves data.data_dir empty; sample and eval read that config, so the
  # data dir comes, as for any moved run, from $GENIMG_DATA_DIR.
  result = subprocess.run([sys.executable, "-m", "genimg_jax.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=dict(os.environ, GENIMG_DATA_DIR=data_dir))
  assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
  return result


def test_parameter_tree_is_the_configured_models():
  """The saved parameter names and shapes are the model's: renaming or reshaping a module fails here."""
  method = methods.make(workdir_lib.read_config(FIXTURE))
  params = jax.eval_shape(method.init, seeds.root_keys(0)["init"]).params
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  expected = {"params/" + "/".join(key.key for key in path): leaf.shape for path, leaf in leaves}
  saved = Checkpointer(os.path.join(FIXTURE, "checkpoints"), create=False).saved_shapes(2)
  assert {path: shape for path, shape in saved.items() if path.startswith("params/")} == expected


def test_sample(run, tmp_path, data_dir):
  out = tmp_path / "samples.npz"
  result = genimg("sample", "--workdir", run, "--num", "4", "--out", out, cwd=tmp_path, data_dir=data_dir)
  assert f"{out}: 4 samples from step 2" in result.stdout
  images = np.load(out)["arr_0"]
  assert images.shape == (4, 8, 8, 1) and images.std() > 0  # NaN samples would all be one value.


def test_eval(run, tmp_path, data_dir):
  result = genimg("eval", "--workdir", run, "--metrics", "bpd", cwd=tmp_path, data_dir=data_dir)
  assert "eval_0000002.json" in result.stdout
  report = json.load(open(os.path.join(run, "eval", "eval_0000002.json")))
  assert report["step"] == 2 and 0 < report["metrics"]["bpd"]["vlb_bpd"] < 20


def test_train_resumes_from_the_old_checkpoint(run, tmp_path, data_dir):
  overrides = [f"--config.{k}={v}" for k, v in dict(FIXTURE_OVERRIDES, **{"train.steps": 4}).items()]
  result = genimg("train", "--config", os.path.join(REPO, "configs", "ddpm_digits.py"), "--workdir", run,
                  "--no_progress", *overrides, cwd=tmp_path, data_dir=data_dir)
  assert result.stdout.splitlines()[0] == f"resuming from step 2 ({os.path.join(run, 'checkpoints', '2')})"
  assert sorted(os.listdir(os.path.join(run, "checkpoints")), key=int) == ["2", "4"]
  old, *new = open(os.path.join(run, "metrics.jsonl")).read().splitlines()
  assert old == open(os.path.join(FIXTURE, "metrics.jsonl")).read().strip()  # Step 2 as the old code logged it.
  assert [json.loads(row)["step"] for row in new] == [4] and np.isfinite(json.loads(new[0])["loss"])
