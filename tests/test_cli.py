"""`genimg` end to end in subprocesses: train, sample, eval, a user loss, and user errors."""

import hashlib
import json
import math
import os
import re
import subprocess
import sys

import pytest

from helpers import DIGITS_CONFIG, REPO, read_scalars, tiny_args


def genimg(*args, cwd=REPO, env=None):
  return subprocess.run([sys.executable, "-m", "genimg_jax.cli", *args], cwd=cwd, capture_output=True,
                        text=True, env=dict(os.environ, **(env or {})))


def _readme_loss_example() -> str:
  text = open(os.path.join(REPO, "README.md")).read()
  blocks = re.findall(r"```python\n(# my_losses\.py\n.*?)```", text, flags=re.S)
  assert len(blocks) == 1, "README must show my_losses.py once"
  return blocks[0]


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  """A tiny CLI training run using the README's own loss, given by import path from the cwd."""
  root = tmp_path_factory.mktemp("cli")
  (root / "my_losses.py").write_text(_readme_loss_example())
  workdir = str(root / "run")
  result = genimg("train", "--config", DIGITS_CONFIG, "--workdir", workdir, "--no_progress",
                  *tiny_args(data_dir, steps=10), "--config.loss.name=my_losses:weighted_eps_loss", cwd=root)
  assert result.returncode == 0, result.stderr
  return root, workdir


def test_train_writes_the_workdir_with_the_user_loss(run):
  _, workdir = run
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "config_history", "samples", "tensorboard"]
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["10"]
  assert json.load(open(os.path.join(workdir, "config.json")))["loss"]["name"] == "my_losses:weighted_eps_loss"
  scalars = read_scalars(workdir)
  weights = [v for _, v in scalars["mean_weight"]]
  assert len(weights) == 2 and all(0 < w <= 1 for w in weights)


def test_sample_is_byte_identical_for_a_seed(run):
  root, workdir = run
  digests = {}
  for name, seed, extra in [("a", 0, []), ("b", 0, []), ("c", 1, []),
                            ("ddim", 0, ["--sampler", "ddim", "--steps", "50", "--eta", "0.5"]),
                            ("ddpm", 0, ["--sampler", "ddpm"])]:
    out = str(root / f"{name}.png")
    result = genimg("sample", "--workdir", workdir, "--num", "16", "--seed", str(seed), "--out", out, *extra,
                    cwd=root)
    assert result.returncode == 0, result.stderr
    assert "16 samples from step 10" in result.stdout
    digests[name] = hashlib.sha256(open(out, "rb").read()).hexdigest()
  assert digests["a"] == digests["b"]
  assert len({digests[k] for k in ("a", "c", "ddim", "ddpm")}) == 4


def test_eval_writes_every_requested_metric(run):
  root, workdir = run
  result = genimg("eval", "--workdir", workdir, "--metrics", "fid,kid,is,pr,bpd", "--num_samples", "40",
                  "--batch_size", "16", cwd=root)
  assert result.returncode == 0, result.stderr
  report = json.load(open(os.path.join(workdir, "eval", "eval_0000010.json")))
  assert report["step"] == 10 and sorted(report["metrics"]) == ["bpd", "fid", "is", "kid", "pr"]
  results = report["metrics"]
  for name in ("fid", "kid", "is", "pr"):
    assert results[name]["feature_net"].startswith("classifier[digits train 8x8")
    assert results[name]["num_samples"] == 40 and results[name]["seed"] == 0
    assert results[name]["sampler"]["sampler"] == "ddim" and results[name]["sampler"]["steps"] == 5
  assert results["fid"]["reference"] == "digits train 8x8 (1497 images)"
  assert results["fid"]["value"] > 0 and results["kid"]["num_subsets"] == 100
  assert 1 <= results["is"]["mean"] <= 10  # 10 classes.
  assert 0 <= results["pr"]["precision"] <= 1 and 0 <= results["pr"]["recall"] <= 1
  held = results["bpd"]
  assert held["split"] == "test" and held["num_examples"] == 288 and 0 < held["loss"] < 10
  parts = held["vlb_prior_bpd"] + held["vlb_diffusion_bpd"] + held["vlb_decoder_bpd"]
  assert held["vlb_bpd"] == pytest.approx(parts, rel=1e-5) and 0 < held["vlb_bpd"] < 20
  assert held["vlb_nats"] == pytest.approx(held["vlb_bpd"] * 64 * math.log(2), rel=1e-5)
  table = result.stdout
  assert "| fid |" in table and "| recall |" in table and "| vlb_bpd |" in table and "eval_0000010.json" in table


def test_eval_without_inception_weights_says_how_to_get_them(run, tmp_path):
  root, workdir = run
  missing = str(tmp_path / "inception_v3_fid.npz")
  result = genimg("eval", "--workdir", workdir, "--metrics", "fid", "--feature_net", "inception",
                  "--inception_weights", missing, cwd=root)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  line = result.stderr.strip()
  assert len(line.splitlines()) == 1 and line.startswith(f"genimg: error: {missing}: ")
  assert "pt_inception-2015-12-05-6726825d.pth" in line and "https://github.com/mseitzer/pytorch-fid" in line
  assert f"genimg eval convert-inception --pth pt_inception-2015-12-05-6726825d.pth --out {missing}" in line


def test_eval_rejects_an_unknown_metric_by_its_flag(run):
  root, workdir = run
  result = genimg("eval", "--workdir", workdir, "--metrics", "fid,nope", cwd=root)
  assert result.returncode == 2 and result.stderr.startswith("genimg: error: --metrics: unknown metric(s) ['nope']")


def test_train_resumes_in_the_same_workdir(run, data_dir):
  root, workdir = run
  result = genimg("train", "--config", DIGITS_CONFIG, "--workdir", workdir, "--no_progress",
                  *tiny_args(data_dir, steps=15), "--config.loss.name=my_losses:weighted_eps_loss", cwd=root)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["10", "15"]
  assert [s for s, _ in read_scalars(workdir)["loss"]] == [5, 10, 15]
  history = sorted(os.listdir(os.path.join(workdir, "config_history")))
  assert history == ["step_0000000.json", "step_0000010.json"]
  assert json.load(open(os.path.join(workdir, "config_history", history[1])))["train"]["steps"] == 15


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
