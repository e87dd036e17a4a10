"""benchmarks/run.py end to end in --quick mode: every row, with positive numbers."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # Subprocesses: `pytest -m "not slow"` leaves them out.

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_quick_benchmark_produces_every_row(tmp_path):
  out = tmp_path / "run.json"
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = {r["config"]: r for r in report["rows"]}
  assert sorted(rows) == ["dcgan_digits", "ddpm_digits", "igpt_digits", "vae_digits"]
  for name, r in rows.items():
    for field in ("params", "train_images_per_s", "train_compile_s", "flops_per_image", "mfu", "peak_memory_MiB"):
      assert r[field] > 0, (name, field, r[field])
    assert r["samplers"] and all(s["images_per_s"] > 0 for s in r["samplers"].values()), name
    if HAS_TORCH:
      assert r["torch"]["eager"]["train_images_per_s"] > 0 and r["torch"]["eager"]["params"] == r["params"], name
  assert set(rows["ddpm_digits"]["samplers"]) == {"ddim-50", "ddpm"}
  # The compiled step's count also holds norms, softmax, the loss and the optimizer: a little above the matmuls.
  igpt = rows["igpt_digits"]
  assert 1.0 <= igpt["flops_per_image"] / igpt["flops_per_image_by_hand"] <= 1.3, igpt
  for table_head in ("| config | dtype | params |", "| config | sampler |"):
    assert table_head in result.stdout


@pytest.mark.parametrize("flags,words", [
    (["--samplers", "ddim-7"], "--samplers: unknown variant(s) ['ddim-7']"),
    (["--torch", "jit"], "--torch: modes are eager and compile"),
])
def test_bad_flags_exit_naming_the_flag(flags, words, tmp_path):
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), *flags,
                           "--out", str(tmp_path / "run.json")], capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0 and words in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "run.json").exists()


def test_a_parameter_count_mismatch_exits_naming_the_reference_file():
  from benchmarks import run

  run.require_same_params("vae_digits", "vae", 100, 100)
  with pytest.raises(SystemExit) as raised:
    run.require_same_params("vae_digits", "vae", 100, 101)
  assert "101 trainable parameters, ours 100: benchmarks/torch_reference/vae.py" in str(raised.value.code)


def test_the_hand_count_of_transformer_flops_follows_the_attention_that_runs():
  from benchmarks import run

  config = run.load_config("igpt_digits", {})
  blocked = run.transformer_flops_per_image(config)  # "auto" on this CPU: 4 query blocks
  config.model.attention = "xla"
  full = run.transformer_flops_per_image(config)
  m, tokens = config.model, 256
  # The blocked attention scores 5/8 of the 256 x 256 matrix: the difference is 3/8 of the scores' matmuls.
  assert full - blocked == pytest.approx(3.0 * 2 * tokens * m.num_layers * 2 * tokens * m.width * 3 / 8)
