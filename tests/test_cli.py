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


# ---- A workdir's config runs no code. ---------------------------------------------------------

EVIL = '''import pathlib
pathlib.Path(__file__).with_name("MARKER").write_text("ran")
from genimg_jax.diffusion.ddpm import LOSSES
make = LOSSES["simple"]
'''


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A tiny 20-step run (checkpoints 10 and 20)."""
  from genimg_jax.train import trainer
  from helpers import tiny_config

  workdir = tmp_path_factory.mktemp("trained") / "run"
  trainer.train(tiny_config(data_dir), str(workdir), show_progress=False)
  return workdir


@pytest.fixture
def evil_run(trained, tmp_path):
  """A copy of `trained` whose config.json names `evil:make` (the DDPM loss, after writing MARKER), with evil.py."""
  import json
  import shutil

  workdir = tmp_path / "downloaded"
  shutil.copytree(trained, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["loss"]["name"] = "evil:make"
  (workdir / "config.json").write_text(json.dumps(config))
  (workdir / "evil.py").write_text(EVIL)
  return workdir


@pytest.mark.parametrize("command", [["sample", "--out", "x.png", "--num", "2"], ["eval", "--metrics", "bpd"]],
                         ids=["sample", "eval"])
def test_a_workdir_config_naming_code_is_refused_unless_trusted(evil_run, command):
  result = genimg(command[0], "--workdir", ".", *command[1:], cwd=evil_run)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
      "genimg: error: config.loss.name: 'evil:make' in ./config.json names code to import, which a workdir's "
      "config may not do; pass --trust_workdir_code to run it if you trust this workdir"]
  assert not (evil_run / "MARKER").exists()
  trusted = genimg(command[0], "--workdir", ".", *command[1:], "--trust_workdir_code", cwd=evil_run)
  assert trusted.returncode == 0, trusted.stderr
  assert (evil_run / "MARKER").exists()


def test_train_resumes_a_downloaded_workdir_with_the_users_config_only(evil_run, data_dir):
  """`genimg train` reads the config the user names, never the workdir's: nothing of evil.py runs."""
  from helpers import tiny_args

  result = genimg("train", "--config", DIGITS_CONFIG, "--workdir", ".", "--no_progress", *tiny_args(data_dir, 20),
                  cwd=evil_run)
  assert result.returncode == 0, result.stderr
  assert "resuming from step 20" in result.stdout
  assert not (evil_run / "MARKER").exists()
  assert '"evil:make"' not in (evil_run / "config.json").read_text()  # Rewritten from the user's config.


# ---- config show checks what train checks. ---------------------------------------------------

def test_config_show_rejects_an_unknown_data_set_as_train_does(tmp_path):
  shown = genimg("config", "show", "--config", DIGITS_CONFIG, "--config.data.name=bogus")
  trained = genimg("train", "--config", DIGITS_CONFIG, "--workdir", str(tmp_path / "run"),
                   "--config.data.name=bogus")
  assert shown.returncode == trained.returncode == 2
  assert shown.stderr == trained.stderr == (
      "genimg: error: config.data.name: unknown data set 'bogus'; built-in: celeb_a, cifar10, digits, "
      "fashion_mnist, folder, imagenet2012, imagenet_resized/32x32, imagenet_resized/64x64, mnist, npz; or give "
      "your own CatalogEntry as 'module:attribute'\n")
  assert shown.stdout == ""
  folder = genimg("config", "show", "--config", DIGITS_CONFIG, "--config.data.name=folder")
  assert folder.returncode == 2
  assert folder.stderr == "genimg: error: config.data.path: data.name='folder' needs the path of your folder\n"


# ---- The user's images: 16-bit files, corrupt files and the held-out split. -------------------

def test_16_bit_images_are_read_at_full_depth(tmp_path):
  import numpy as np
  import PIL.Image

  folder = tmp_path / "deep"
  folder.mkdir()
  values = [1000, 10000, 40000, 65535]
  for i, value in enumerate(values):
    PIL.Image.fromarray(np.full((8, 8), value, np.uint16)).save(folder / f"{i}.png")
  assert PIL.Image.open(folder / "0.png").mode == "I;16"
  result = genimg("data", "show", "--config", DIGITS_CONFIG, "--out", str(tmp_path / "grid.png"), "--num", "4",
                  "--config.data.name=folder", f"--config.data.path={folder}", "--config.data.image_size=8",
                  "--config.data.holdout_fraction=0.0", "--config.data.eval_split=train",
                  f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert result.returncode == 0, result.stderr
  low, high = map(float, re.search(r"values in \[(\S+), (\S+)\]", result.stdout).groups())
  levels = np.round(np.array(values, np.float64) / 65535 * 255)  # 16 bits scaled to the stored 8.
  assert (low, high) == (round(levels.min() / 127.5 - 1, 3), round(levels.max() / 127.5 - 1, 3))
  assert low < -0.9  # Not saturated: 1000/65535 is dark, not white.


def test_corrupt_files_are_dropped_before_the_holdout_is_drawn(tmp_path):
  import numpy as np
  import PIL.Image

  from genimg_jax.data import user_images

  folder = tmp_path / "some_bad"
  folder.mkdir()
  held_out = int(np.flatnonzero(user_images._holdout(8, 0.125))[0])  # The one a split of all 8 holds out.
  for i in range(8):
    if i == held_out:
      (folder / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    else:
      PIL.Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(folder / f"{i}.png")
  result = genimg("data", "prepare", "--config", DIGITS_CONFIG, "--config.data.name=folder",
                  f"--config.data.path={folder}", "--config.data.image_size=8", "--config.data.holdout_fraction=0.125",
                  "--config.data.skip_corrupt=True", f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert result.returncode == 0, result.stderr
  assert "folder train: 6 examples" in result.stdout and "folder test: 1 examples" in result.stdout
  warnings = [line for line in result.stderr.splitlines() if line.startswith("genimg: warning:")]
  assert len(warnings) == 1 and warnings[0].startswith(f"genimg: warning: {folder}: left out 1 unreadable image(s): "
                                                       f"{folder / f'{held_out}.png'} (")
