"""benchmarks/run.py end to end in --quick mode: every row, with positive numbers."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # Subprocesses: `pytest -m "not slow"` leaves them out.

# Without torch the PyTorch columns are left out; CI installs torch, so there they must be filled.
WITH_TORCH = importlib.util.find_spec("torch") is not None or os.environ.get("CI", "") not in ("", "0", "false")


def test_quick_benchmark_produces_every_row(tmp_path):
  out = tmp_path / "run.json"
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = {r["config"]: r for r in report["rows"]}
  assert sorted(rows) == ["dcgan_digits", "ddpm_digits", "dit_digits_cond", "igpt_digits", "vae_digits"]
  for name, r in rows.items():
    for field in ("params", "train_images_per_s", "train_compile_s", "flops_per_image", "mfu", "peak_memory_MiB"):
      assert r[field] > 0, (name, field, r[field])
    assert r["samplers"] and all(s["images_per_s"] > 0 and s["nfe"] > 0 for s in r["samplers"].values()), name
    if WITH_TORCH:
      assert r["torch"]["eager"]["train_images_per_s"] > 0 and r["torch"]["eager"]["params"] == r["params"], name
  assert set(rows["ddpm_digits"]["samplers"]) == {"ddim-50", "ddpm"}
  assert {k: s["nfe"] for k, s in rows["ddpm_digits"]["samplers"].items()} == {"ddim-50": 50, "ddpm": 100}
  # The class-conditional DiT flow: Heun's 2 evaluations per step, guidance's 2 network passes per evaluation.
  dit = rows["dit_digits_cond"]["samplers"]
  assert {k: (s["nfe"], s["network_passes"]) for k, s in dit.items()} == {"flow-heun-25-guided": (50, 100)}
  # The compiled step's count also holds norms, softmax, the loss and the optimizer: a little above the matmuls.
  igpt = rows["igpt_digits"]
  assert 1.0 <= igpt["flops_per_image"] / igpt["flops_per_image_by_hand"] <= 1.3, igpt
  for table_head in ("| config | dtype | params |", "| config | sampler | NFE | passes/img |"):
    assert table_head in result.stdout


def test_the_gpu_script_runs_its_tiny_version_on_the_cpu(tmp_path):
  """benchmarks/gpu.sh with GPU_SH_QUICK (--quick's igpt_digits, 3 measurements at once) on the CPU: both dtypes
  in one JSON next to torch, and the tables as markdown; without GPU_SH_ALLOW_CPU it stops before measuring.
  Torch eager only: torch.compile takes 20 s to 3 minutes a model on a 2-core CPU."""
  script = os.path.join(REPO, "benchmarks", "gpu.sh")
  env = dict(os.environ, OUT=str(tmp_path), GPU_SH_QUICK="1", PYTHON=sys.executable)
  env.pop("GPU_SH_ALLOW_CPU", None)
  refused = subprocess.run(["bash", script], capture_output=True, text=True, env=env)
  assert refused.returncode != 0 and "gpu.sh: no GPU visible to JAX nor torch" in refused.stdout, refused.stdout
  assert not (tmp_path / "gpu.json").exists()

  result = subprocess.run(["bash", script], capture_output=True, text=True, env=dict(env, GPU_SH_ALLOW_CPU="1"))
  assert result.returncode == 0, result.stdout[-3000:]
  report = json.loads((tmp_path / "gpu.json").read_text())
  assert report["incomplete"] == [] and [r["dtype"] for r in report["rows"]] == ["bfloat16", "float32"]
  for r in report["rows"]:  # gpu.sh checks torch's GPU too, so it needs torch
    eager = r["torch"]["eager"]
    assert eager["params"] == r["params"] and eager["ours_per_torch"] > 0, r["dtype"]
  tables = (tmp_path / "gpu.md").read_text()
  assert "| config | dtype | params |" in tables and "| config | dtype | sampler |" in tables
  assert "] float32 igpt_digits ours: " in (tmp_path / "gpu.log").read_text()  # the running log


@pytest.mark.parametrize("flags,words", [
    (["--samplers", "ddim-7"], "--samplers: unknown variant(s) ['ddim-7']"),
    (["--torch", "jit"], "--torch: modes are eager and compile"),
])
def test_bad_flags_exit_naming_the_flag(flags, words, tmp_path):
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), *flags,
                           "--out", str(tmp_path / "run.json")], capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0 and words in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "run.json").exists()


# NFE per image of the diffusion processes' variants: EDM Heun 2N - 1, flow Heun 2N, Euler(-Maruyama) N, the
# few-step processes' N steps.
VARIANT_NFE = {"ddim-50": 50, "edm-heun-3": 5, "edm-heun-5": 9, "edm-heun-9": 17, "edm-heun-18": 35,
               "edm-heun-18-guided": 35, "flow-euler-5": 5, "flow-euler-10": 10, "flow-euler-18": 18,
               "flow-euler-35": 35, "flow-euler-50": 50, "flow-euler-50-guided": 50, "flow-heun-25": 50,
               "flow-heun-25-guided": 50, "flow-em-50": 50, "meanflow-1": 1, "meanflow-2": 2, "consistency-1": 1,
               "consistency-multistep-2": 2, "shortcut-1": 1, "shortcut-4": 4}


@pytest.mark.parametrize("name", ["edm_digits", "flow_digits", "dit_digits", "flow_digits_cond", "edm_cifar10",
                                  "edm_cifar10_cond", "flow_cifar10", "dit_cifar10", "flow_cifar10_cond",
                                  "meanflow_digits", "consistency_digits", "shortcut_digits"])
def test_default_sampler_variants_build_with_their_nfe_and_network_passes(name):
  """Each default variant of a diffusion config is a sampler its process takes, at the NFE of its name;
  the guided ones (for models trained with label dropout only) take two network passes per evaluation."""
  from benchmarks import run
  from genimg_jax import methods

  config = run.load_config(name, {})
  specs = run.default_samplers(config)
  process = config.diffusion.process
  assert [s for s in specs if not s.endswith("-guided")] == run.DEFAULT_VARIANTS[process]
  guided = [s for s in specs if s.endswith("-guided")]
  assert guided == (run.GUIDED_VARIANTS[process] if name in ("flow_digits_cond", "flow_cifar10_cond") else [])
  for spec in specs:
    variant = run.load_config(name, run.SAMPLE_VARIANTS[spec])
    method = methods.make(variant)
    assert method.sample_nfe == VARIANT_NFE[spec], spec
    assert method.sample_network_passes == (2 if spec in guided else 1) * method.sample_nfe, spec


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


def test_a_step_torch_compile_cannot_compile_is_reported_unsupported_in_its_row():
  """MeanFlow's torch.func.jvp step under torch.compile: on torch 2.13's CPU dynamo fails on it; the row then
  names the failure, and the tables print 'unsupported' with the reason instead of stopping the run."""
  pytest.importorskip("torch")
  from benchmarks import run

  overrides = dict(run.QUICK_OVERRIDES["meanflow_digits"], **{"train.batch_size": 4})
  result = run.measure_torch("meanflow_digits", overrides, "compile", 1, 1)
  assert result["params"] > 0
  if "unsupported" not in result:  # a torch whose compiler handles the jvp: a measured row
    assert result["train_images_per_s"] > 0
    return
  assert result["unsupported"].startswith("torch.compile failed in the first step: ")
  row = {"config": "meanflow_digits", "dtype": "float32", "params": result["params"], "batch_size": 4,
         "train_images_per_s": 10.0, "train_step_s": 0.4, "train_compile_s": 1.0, "flops_per_image": 1e6,
         "mfu": None, "peak_memory_MiB": 100.0, "peak_memory_kind": "host RSS", "samplers": {},
         "torch": {"compile": result}}
  tables = run.report_markdown([row], ["compile"], {}, [])
  assert "| unsupported | - |" in tables
  assert f"unsupported: float32 meanflow_digits torch compile: {result['unsupported']}" in tables


def test_the_regression_guard_compares_two_trees_side_by_side(tmp_path):
  out = tmp_path / "regression.json"
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "regression.py"), "--reference", "HEAD",
                           "--configs", "vae_digits", "--rounds", "1", "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  (row,) = report["rows"]
  assert row["config"] == "vae_digits" and row["today_images_per_s"] > 0 and row["reference_images_per_s"] > 0
  assert row["ratio"] == pytest.approx(row["today_images_per_s"] / row["reference_images_per_s"])
  assert len(row["round_ratios"]) == 1 and row["today_peak_memory_MiB"] > 0
  assert "| vae_digits |" in result.stdout
  worktrees = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=REPO).stdout
  assert "genimg_regression_" not in worktrees  # The reference checkout is removed.


def test_the_regression_guard_names_an_unknown_reference():
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "regression.py"), "--reference",
                           "no-such-commit"], capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0 and "no-such-commit" in result.stderr and "Traceback" not in result.stderr


def test_the_quality_benchmark_names_a_missing_root_and_a_workdir_of_another_run(tmp_path):
  script = os.path.join(REPO, "benchmarks", "diffusion_quality.py")
  result = subprocess.run([sys.executable, script], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 2 and "--workdir_root" in result.stderr
  run = tmp_path / "flow"
  (run / "checkpoints" / "1500").mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"method": "gan", "train": {"steps": 1500}}))
  result = subprocess.run([sys.executable, script, "--workdir_root", str(tmp_path), "--processes", "flow"],
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert f"{run} holds a ('gan', None) run of 1500 steps, not flow_digits's ('diffusion', 'flow')" in result.stderr


def test_the_op_profile_puts_our_thunks_and_torch_ops_in_the_same_categories(tmp_path):
  """benchmarks/op_profile.py on the shrunk UNet: its convolutions, dense layers, GroupNorms, attention and the
  optimizer each land in their category on both sides, and the categories add up to the ops' total."""
  out = tmp_path / "op_profile.json"
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "op_profile.py"), "--quick", "--configs",
                           "ddpm_digits", "--steps", "2", "--torch", "eager" if WITH_TORCH else "", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_NUM_CPU_DEVICES="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  entry = json.loads(out.read_text())["configs"]["ddpm_digits"]
  sides = [entry["ours"]] + ([entry["torch_eager"]] if WITH_TORCH else [])
  for side in sides:
    for category in ("convolution", "matmul", "normalization", "attention", "elementwise", "update"):
      assert side["ms_per_step"][category] > 0 and side["ops_per_step"][category] >= 1, (category, side)
    assert side["op_ms_per_step"] == pytest.approx(sum(side["ms_per_step"].values()))
    assert 0 < side["op_ms_per_step"] <= 1.5 * side["wall_ms_per_step"]
  assert entry["ours"]["devices"] == 2 and entry["ours"]["ms_per_step"]["collective"] > 0  # the gradients' all-reduce
  assert "| convolution |" in result.stdout and "| step (wall, not profiled) |" in result.stdout


@pytest.mark.parametrize("name, category", [
    ("aten::conv2d", "convolution"), ("autograd::engine::evaluate_function: ConvolutionBackward0", "convolution"),
    ("aten::addmm", "matmul"), ("autograd::engine::evaluate_function: MmBackward0", "matmul"),
    ("aten::group_norm", "normalization"),
    ("autograd::engine::evaluate_function: NativeLayerNormBackward0", "normalization"),
    ("aten::scaled_dot_product_attention", "attention"), ("Optimizer.step#AdamW.step", "update"),
    ("aten::_foreach_lerp_", "update"), ("aten::silu", "elementwise"), ("aten::copy_", "layout")])
def test_torch_ops_are_put_in_their_category(name, category):
  sys.path.insert(0, REPO)
  from benchmarks import op_profile

  assert op_profile.torch_category(name) == category


def test_the_lever_sweep_reports_a_lever_the_compiler_rejects_and_names_an_unknown_one(tmp_path):
  sys.path.insert(0, REPO)
  from benchmarks import cpu_levers

  script = os.path.join(REPO, "benchmarks", "cpu_levers.py")
  out = tmp_path / "levers.json"
  env = dict(os.environ, XLA_FLAGS="--xla_cpu_enable_fast_min_max=true")  # the environment's flags are kept
  result = subprocess.run([sys.executable, script, "--quick", "--configs", "vae_digits", "--levers", "vector_width_512",
                           "--windows", "1", "--steps_per_window", "2", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(out.read_text())["configs"]["vae_digits"]["summary"]["vector_width_512"]
  assert summary["ratio"] > 0 and summary["images_per_s"] > 0
  assert "| vector_width_512 | `--xla_cpu_prefer_vector_width=512` |" in result.stdout

  cpu_levers.LEVERS["rejected"] = ("--xla_cpu_no_such_flag=true", {}, "a flag XLA does not know")
  try:
    failed = cpu_levers.measure("vae_digits", "rejected", quick=True, windows=1, steps_per_window=1)
  finally:
    del cpu_levers.LEVERS["rejected"]
  assert "failed" in failed and failed["failed"]
  unknown = subprocess.run([sys.executable, script, "--levers", "no_such_lever"], capture_output=True, text=True,
                           cwd=REPO, env=env)
  assert unknown.returncode != 0 and "no_such_lever" in unknown.stderr and "Traceback" not in unknown.stderr


def test_combine_rounds_takes_medians_and_keeps_the_first_rounds_samplers():
  from benchmarks import run

  rounds = [{"train_images_per_s": rate, "train_step_s": 32 / rate, "peak_memory_MiB": mib, "flops_per_image": 2.0,
             "samplers": {"ddim-50": {"images_per_s": 9.0}} if i == 0 else {}}
            for i, (rate, mib) in enumerate([(100.0, 900.0), (300.0, 700.0), (200.0, 800.0)])]
  combined = run.combine_rounds(rounds)
  assert combined["train_images_per_s"] == 200.0 and combined["train_images_per_s_rounds"] == [100.0, 300.0, 200.0]
  assert combined["train_step_s"] == 32 / 200.0 and combined["peak_memory_MiB"] == 900.0
  assert combined["achieved_flops_per_s"] == 400.0 and combined["samplers"] == {"ddim-50": {"images_per_s": 9.0}}
  assert run.combine_rounds([rounds[0], None]) is None
  assert run.combine_rounds([{"unsupported": "why"}, {"unsupported": "why"}]) == {"unsupported": "why"}


@pytest.mark.skipif(not WITH_TORCH, reason="rounds alternate ours with torch's")
def test_rounds_alternate_ours_and_torch_and_report_every_ratio(tmp_path):
  out = tmp_path / "run.json"
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--configs",
                           "vae_digits", "--rounds", "2", "--out", str(out)], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  order = [line.split("] ", 1)[1].split(":")[0] for line in result.stderr.splitlines() if "vae_digits" in line]
  assert order == ["float32 vae_digits ours round 1", "float32 vae_digits torch eager round 1",
                   "float32 vae_digits torch eager round 2", "float32 vae_digits ours round 2"]
  (row,) = json.loads(out.read_text())["rows"]
  eager = row["torch"]["eager"]
  assert len(row["train_images_per_s_rounds"]) == len(eager["train_images_per_s_rounds"]) == 2
  assert eager["ours_per_torch"] == row["train_images_per_s"] / eager["train_images_per_s"]
  ratios = ", ".join(f"{x:.2f}" for x in eager["ours_per_torch_rounds"])
  assert f"({ratios})" in result.stdout and row["samplers"]


def test_the_step_levers_time_every_variant_on_two_devices(tmp_path):
  """benchmarks/step_levers.py on 2 CPU devices, where the flat all-reduce has something to reduce: its shard_map
  compiles only if every gradient and metric is averaged over the devices (check_vma)."""
  out = tmp_path / "step_levers.json"
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2")
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "step_levers.py"), "--quick", "--configs",
                           "vae_digits", "--rounds", "2", "--windows", "1", "--steps_per_window", "2", "--out",
                           str(out)], capture_output=True, text=True, cwd=REPO, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads(out.read_text())["configs"]["vae_digits"]
  assert row["devices"] == 2 and row["ratio"]["default"] == 1.0
  for variant in ("default", "flat_all_reduce", "flat_optimizer"):
    assert len(row["images_per_s"][variant]) == 2 and min(row["images_per_s"][variant]) > 0, variant
  assert "| flat_all_reduce |" in result.stdout and "| flat_optimizer |" in result.stdout


def test_the_suite_shards_the_state_as_the_config_says():
  """run.build_ours with mesh.fsdp=2 on 2 devices: parameters sharded over fsdp, as the trainer shards them, and the
  step runs on that state (cpu_levers.py's `fsdp` lever)."""
  code = """
import jax
from benchmarks import run
ours = run.build_ours("vae_digits", dict(run.QUICK_OVERRIDES["vae_digits"], **{"mesh.fsdp": 2, "mesh.fsdp_min_size": 1}))
specs = {str(x.sharding.spec) for x in jax.tree.leaves(ours.state.params)}
assert any("fsdp" in s for s in specs), specs
state, metrics = ours.train_step.jitted(ours.state, ours.batch, ours.keys["train"])
assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(state.params)) and float(metrics["loss"]) > 0
"""
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, JAX_NUM_CPU_DEVICES="2"))
  assert result.returncode == 0, result.stderr[-3000:]


def test_the_step_levers_name_a_config_quick_cannot_shrink(tmp_path):
  result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "step_levers.py"), "--quick", "--configs",
                           "ddpm_cifar10", "--out", str(tmp_path / "levers.json")], capture_output=True, text=True,
                          cwd=REPO)
  assert result.returncode != 0 and "--quick: no QUICK_OVERRIDES for ['ddpm_cifar10']" in result.stderr
  assert not (tmp_path / "levers.json").exists()
