r"""Sample quality of the diffusion processes on the CPU digits demos, at one training wall time.

  python benchmarks/diffusion_quality.py --workdir_root runs/quality
  python benchmarks/diffusion_quality.py --workdir_root runs/quality --headline_samples 1000   # without N = 10000
  python benchmarks/diffusion_quality.py --workdir_root runs/quality --processes meanflow,consistency,shortcut
  python benchmarks/diffusion_quality.py --workdir_root runs/quality --processes flow,latent_flow,maskgit,igpt_tokens \
    --out benchmarks/results/diffusion_quality_latent.json
  python benchmarks/diffusion_quality.py --workdir_root /tmp/quality --quick    # a smoke test

Wall time on 2 shared CPU cores (2026-12-01): the evals 34 minutes (each N = 10000 one 6-7 minutes,
about 0.75 ms per image and NFE), plus about 10 minutes per run it has to train (18 minutes
measured at load average 5-8); --quick 4 minutes at load average 6.

The multi-step processes, configs/ddpm_digits.py (eps prediction), edm_digits.py and flow_digits.py
(rectified flow), share one UNet, batch and optimizer and differ only in the process, so a training step
costs the same in each: the same training budget is the same number of steps, 1500 (ddpm_digits' 2000
overridden). The one- and few-step processes, meanflow_digits, consistency_digits and shortcut_digits, cost
more per step (a jvp; a teacher pass; the self-consistency rows' two extra passes): each trains its
config's own number of steps, sized to flow_digits' wall time; the training table shows each loop's wall
seconds, so the budgets can be compared.
The latent and token rows train on a first stage trained first at <workdir_root>/autoencoder
(autoencoder_digits, 16x16 -> 4x4x4) or <workdir_root>/tokenizer (tokenizer_digits, 4x4 tokens of 1000 codes):
latent_flow (latent_flow_digits, Euler), maskgit (maskgit_digits at 4, 8 and 12 decoding steps) and
igpt_tokens (igpt_tokens_digits, the autoregressive Transformer on the same tokens, one pass per token). Their
configs are sized so the first stage plus the run take about flow_digits' wall time; the training table
lists the first stages as rows of their own.
<workdir_root>/<process> is trained with `genimg train` (output in <workdir_root>/<process>.log,
ending in its wall time) only when its checkpoint of the final step is missing. The training loop's wall
time and steps/s come from the run's metrics.jsonl (the sum of its logged windows: compilation and
the preview grids included, start-up and the last grid not), the process's from the log's last line.

Every number is one `genimg eval --feature_net classifier --seed 0 --checkpoint <final step>` of the EMA
parameters, against the 1497 digits training images (the reference the digits configs use):
1. NFE vs FID at 1000 samples: DDIM (ddpm) and flow Euler at 5, 10, 18, 35 and 50 steps; EDM
   Heun (N steps: 2N - 1 NFE) at 3, 5, 9, 18 and 25 steps and flow Heun (2N NFE) at 3, 5, 9, 18
   and 25 steps, the NFE nearest those (EDM's ties broken downwards, to no more than the others);
   MeanFlow's jumps, consistency's one- and multi-step sampling and the shortcut model at 1, 2 and 4 NFE.
2. The headline rows: each multi-step process with its config's sampler at 35-50 NFE (DDIM-50, EDM
   Heun-18, flow Euler-50), each one- and few-step process at 1, 2 and 4 NFE, latent flow Euler-50, MaskGIT
   at 4, 8 and 12 steps and the autoregressive Transformer on the same tokens (16 NFE): FID, Inception Score
   and precision/recall at each --headline_samples (1000 and 10000).
Memory and speed: each run's training table row gives its loop's images/s and the peak resident memory of a
separate 20-step `genimg train` of the same config (MEMORY_STEPS, the step's memory without the long run's
grids); each headline row gives its sampler's images/s at batch 250 (the run loaded by genimg_jax.api in a fresh
process, one batch drawn to compile, then batches timed for at least 5 s) and that process's peak memory.
The NFE is the one the eval reports. Runs evaluate one at a time (the CPU is the bottleneck).
An eval's report (<run>/eval/eval_<step>.json, shared by every eval of that step) is copied, its
entries of the metrics asked for with the command and its wall seconds, to
<workdir_root>/reports/<process>-<sampler>-<steps>-n<N>.json before the next eval; a measurement
whose file already holds the metrics it needs is not run again (delete the file to measure again).
Writes JSON (--out), the markdown tables (.md next to it) and NFE-vs-FID curves (.png).
"""

import argparse
import json
import os
import platform
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MULTISTEP_TRAIN_STEPS = 1500
FEW_STEPS = (1, 2, 4)
MASKGIT_STEPS = (4, 8, 12)


class Entry(NamedTuple):
  """A row group: its config, training steps, {sampler: sweep steps} and headline [(sampler, steps)], and the
  first stage it trains on (a FIRST_STAGES name) or None. A sampler of None: the method has one (MaskGIT's
  decoding); steps of None: the method's own count (the autoregressive Transformer: one pass per token)."""

  config: str
  train_steps: int
  sweep: dict
  headline: list
  first_stage: str | None = None


# First stages: name -> (config section that names it, its config, training steps); trained at <root>/<name>.
FIRST_STAGES = {"autoencoder": ("autoencoder", "autoencoder_digits", 1200),
                "tokenizer": ("tokenizer", "tokenizer_digits", 1200)}
PROCESSES = {
    "ddpm": Entry("ddpm_digits", MULTISTEP_TRAIN_STEPS, {"ddim": (5, 10, 18, 35, 50)}, [("ddim", 50)]),
    "edm": Entry("edm_digits", MULTISTEP_TRAIN_STEPS, {"heun": (3, 5, 9, 18, 25)}, [("heun", 18)]),
    "flow": Entry("flow_digits", MULTISTEP_TRAIN_STEPS, {"euler": (5, 10, 18, 35, 50), "heun": (3, 5, 9, 18, 25)},
                  [("euler", 50)]),
    "meanflow": Entry("meanflow_digits", 1200, {"meanflow": FEW_STEPS}, [("meanflow", n) for n in FEW_STEPS]),
    "consistency": Entry("consistency_digits", 1200, {"onestep": (1,), "multistep": FEW_STEPS[1:]},
                         [("onestep", 1)] + [("multistep", n) for n in FEW_STEPS[1:]]),
    "shortcut": Entry("shortcut_digits", 1300, {"shortcut": FEW_STEPS}, [("shortcut", n) for n in FEW_STEPS]),
    "latent_flow": Entry("latent_flow_digits", 4000, {"euler": (5, 10, 18, 35, 50)}, [("euler", 50)],
                         "autoencoder"),
    "maskgit": Entry("maskgit_digits", 2000, {None: MASKGIT_STEPS}, [(None, n) for n in MASKGIT_STEPS], "tokenizer"),
    "igpt_tokens": Entry("igpt_tokens_digits", 2000, {"cached": (None,)}, [("cached", None)], "tokenizer"),
}
PROCESSES_MULTISTEP = ("ddpm", "edm", "flow")
SAMPLER_NAMES = {"ddim": "DDIM", "heun": "Heun", "euler": "Euler", "meanflow": "jumps", "onestep": "one step",
                 "multistep": "multistep", "shortcut": "shortcut", None: "decoding", "cached": "token by token"}
SWEEP_SAMPLES = 1000
MEMORY_STEPS = 20  # the short training run whose peak memory is reported
SAMPLE_BATCH = 250  # sampling speed: batches of this size (QUICK_SAMPLES with --quick)
SAMPLE_SECONDS = 5.0  # ... timed for at least this long after the first batch
# --quick: a narrow network trained 20 steps, one sweep point per sampler (the headline's where there is one),
# 64 samples.
QUICK_STEPS = 20
QUICK_TRAIN = {"model.ch": 16, "model.ch_mult": "(1,2)", "model.attn_resolutions": "(8,)", "train.log_every": 10,
               "train.checkpoint_every": QUICK_STEPS, "train.sample_every": QUICK_STEPS, "train.num_samples": 16,
               "diffusion.num_timesteps": 100, "sample.steps": 10}
# The one- and few-step configs sample in 1 NFE; the shortcut's steps must be a power of two.
QUICK_FEW_STEP_TRAIN = dict(QUICK_TRAIN, **{"sample.steps": 1})
QUICK_LOG = {"train.log_every": 10, "train.checkpoint_every": QUICK_STEPS, "train.sample_every": QUICK_STEPS,
             "train.num_samples": 16}
QUICK_FIRST_STAGE_TRAIN = dict(QUICK_LOG, **{"model.ch": 8, "model.norm_groups": 4})
QUICK_TRANSFORMER_TRAIN = dict(QUICK_LOG, **{"model.num_layers": 1, "model.width": 32})
QUICK_PROCESSES = {
    "ddpm": Entry("ddpm_digits", QUICK_STEPS, {"ddim": (5,)}, [("ddim", 5)]),
    "edm": Entry("edm_digits", QUICK_STEPS, {"heun": (3,)}, [("heun", 3)]),
    "flow": Entry("flow_digits", QUICK_STEPS, {"euler": (5,), "heun": (3,)}, [("euler", 5)]),
    "meanflow": Entry("meanflow_digits", QUICK_STEPS, {"meanflow": (1,)}, [("meanflow", 1)]),
    "consistency": Entry("consistency_digits", QUICK_STEPS, {"onestep": (1,)}, [("onestep", 1)]),
    "shortcut": Entry("shortcut_digits", QUICK_STEPS, {"shortcut": (1,)}, [("shortcut", 1)]),
    "latent_flow": Entry("latent_flow_digits", QUICK_STEPS, {"euler": (5,)}, [("euler", 5)], "autoencoder"),
    "maskgit": Entry("maskgit_digits", QUICK_STEPS, {None: (4,)}, [(None, 4)], "tokenizer"),
    "igpt_tokens": Entry("igpt_tokens_digits", QUICK_STEPS, {"cached": (None,)}, [("cached", None)], "tokenizer"),
}
QUICK_OVERRIDES = {"meanflow": QUICK_FEW_STEP_TRAIN, "consistency": QUICK_FEW_STEP_TRAIN,
                   "shortcut": QUICK_FEW_STEP_TRAIN,
                   # Its own attention resolution: the 4x4 latents have no 8x8 level.
                   "latent_flow": {k: v for k, v in QUICK_TRAIN.items() if k != "model.attn_resolutions"},
                   "maskgit": QUICK_TRANSFORMER_TRAIN, "igpt_tokens": QUICK_TRANSFORMER_TRAIN,
                   "autoencoder": QUICK_FIRST_STAGE_TRAIN, "tokenizer": QUICK_FIRST_STAGE_TRAIN}
QUICK_SAMPLES = 64


def _cli(args: list[str], log=None) -> subprocess.CompletedProcess:
  """`genimg ARGS` in a fresh process from the repository root."""
  return subprocess.run([sys.executable, "-m", "genimg_jax.cli", *args], check=False, cwd=REPO, text=True,
                        stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT if log else subprocess.PIPE)


def _timed_cli(args: list[str]) -> tuple[float, float]:
  """Wall seconds and peak resident memory (MiB) of `genimg ARGS` in a fresh process; exits on its failure."""
  with tempfile.TemporaryFile("w+") as stderr:
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "genimg_jax.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=stderr, text=True)
    _, status, usage = os.wait4(child.pid, 0)  # This child's own rusage.
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
      stderr.seek(0)
      sys.exit(f"genimg {' '.join(args)} failed (exit {child.returncode}):\n{stderr.read()[-3000:]}")
  return wall, usage.ru_maxrss / 1024  # KiB on Linux


def training_memory(root: str, name: str, config: str, fields: dict) -> dict:
  """Peak resident memory of a short `genimg train` of the config (MEMORY_STEPS steps, no grids) in a scratch
  workdir <root>/memory/<name>: the train step's memory, measured the same way for every row."""
  copy = os.path.join(root, "reports", f"{name}-train-memory.json")
  if os.path.exists(copy):
    with open(copy) as f:
      return json.load(f)
  workdir = os.path.join(root, "memory", name)
  shutil.rmtree(workdir, ignore_errors=True)
  short = dict(fields, **{"train.steps": MEMORY_STEPS, "train.sample_every": 0, "train.log_every": MEMORY_STEPS})
  args = ["train", "--config", os.path.join("configs", f"{config}.py"), "--workdir", workdir, "--no_progress",
          *[f"--config.{k}={v}" for k, v in short.items()]]
  print(f"genimg {' '.join(args)}", file=sys.stderr)
  wall, peak = _timed_cli(args)
  shutil.rmtree(workdir, ignore_errors=True)
  measured = {"train_peak_rss_MiB": peak, "train_memory_run_s": wall, "train_memory_steps": MEMORY_STEPS}
  os.makedirs(os.path.dirname(copy), exist_ok=True)
  with open(copy, "w") as f:
    json.dump(measured, f, indent=2)
  return measured


def sampling_speed(root: str, process: str, workdir: str, step: int, sampler: str | None, steps: int | None,
                   batch: int) -> dict:
  """Images/s of the run's sampler at batch `batch` (genimg_jax.api in a fresh process: one batch to compile,
  then batches timed for at least SAMPLE_SECONDS) and that process's peak resident memory."""
  copy = os.path.join(root, "reports", f"{process}-{sampler}-{steps}-sample-speed.json")
  if os.path.exists(copy):
    with open(copy) as f:
      return json.load(f)
  overrides = dict({"sampler": sampler} if sampler else {}, **({"steps": steps} if steps else {}))
  job = {"workdir": workdir, "step": step, "overrides": overrides, "batch": batch}
  print(f"sampling speed of {workdir} {overrides} at batch {batch}", file=sys.stderr)
  loadavg = _loadavg()
  result = subprocess.run([sys.executable, os.path.abspath(__file__), "--sample_speed_child", json.dumps(job)],
                          cwd=REPO, capture_output=True, text=True, check=False)
  lines = [line for line in result.stdout.splitlines() if line.startswith("SPEED ")]
  if result.returncode or not lines:
    sys.exit(f"sampling speed of {workdir} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
  measured = dict(json.loads(lines[-1][len("SPEED "):]), sample_loadavg_before=loadavg)
  os.makedirs(os.path.dirname(copy), exist_ok=True)
  with open(copy, "w") as f:
    json.dump(measured, f, indent=2)
  return measured


def _sample_speed_child(job: dict) -> None:
  """Prints 'SPEED {json}': images/s of job's run after a first (compiling) batch, and the peak RSS."""
  import resource

  import jax

  from genimg_jax import api

  run = api.Run.load(job["workdir"], job["step"], sample_overrides=job["overrides"])
  batch, batches = job["batch"], 0
  draws = run.sample_batches(10 ** 9, batch_size=batch)
  jax.block_until_ready(next(draws))
  start = time.perf_counter()
  while batches < 2 or time.perf_counter() - start < SAMPLE_SECONDS:
    jax.block_until_ready(next(draws))
    batches += 1
  seconds = time.perf_counter() - start
  print("SPEED " + json.dumps({"sample_images_per_s": batches * batch / seconds, "sample_batch": batch,
                               "sample_batches_timed": batches, "sample_seconds": seconds,
                               "sample_peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def ensure_trained(root: str, name: str, config: str, steps: int, overrides: dict) -> str:
  """<root>/<name>, trained to `steps` with `genimg train` unless its checkpoint of that step exists."""
  workdir = os.path.join(root, name)
  if not os.path.isdir(os.path.join(workdir, "checkpoints", str(steps))):
    log_path = os.path.join(root, f"{name}.log")
    print(f"training {workdir} ({config}, {steps} steps; log {log_path})", file=sys.stderr)
    fields = dict(overrides, **{"train.steps": steps})
    with open(log_path, "a") as log:
      start = time.perf_counter()
      result = _cli(["train", "--config", os.path.join("configs", f"{config}.py"), "--workdir", workdir,
                     "--no_progress", *[f"--config.{k}={v}" for k, v in fields.items()]], log=log)
      log.write(f"WALL {time.perf_counter() - start:.2f} s\n")
    if result.returncode:
      sys.exit(f"training {workdir} failed (exit {result.returncode}): see {log_path}")
  with open(os.path.join(workdir, "config.json")) as f:
    trained = json.load(f)
  # The method and diffusion process the config file names, and the steps asked for.
  from genimg_jax.config import load_file

  wanted = load_file(os.path.join(REPO, "configs", f"{config}.py"))
  kind = lambda c: (c["method"], c.get("diffusion", {}).get("process"))
  if kind(trained) != kind(wanted) or trained["train"]["steps"] != steps:
    sys.exit(f"{workdir} holds a {kind(trained)} run of {trained['train']['steps']} steps, not {config}'s "
             f"{kind(wanted)} at {steps}: give another --workdir_root")
  return workdir


def training_speed(root: str, process: str, workdir: str, steps: int) -> dict:
  """The training loop's wall seconds and steps/s from metrics.jsonl, and the process's wall seconds from
  the last 'WALL <s> s' line of <root>/<process>.log (None without one); images/s at the run's batch."""
  from genimg_jax import plots

  series = plots.training_series(workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    batch = json.load(f)["train"]["batch_size"]
  speeds = series["steps_per_sec"]
  logged = sorted(s for s in speeds if s <= steps)
  windows = [(step - previous) / speeds[step] for previous, step in zip([0] + logged, logged)]
  process_wall = None
  log_path = os.path.join(root, f"{process}.log")
  if os.path.exists(log_path):
    with open(log_path) as f:
      walls = [line.split()[1] for line in f if line.startswith("WALL ")]
    process_wall = float(walls[-1]) if walls else None
  return {"train_steps": steps, "train_loop_s": sum(windows), "train_steps_per_s": logged[-1] / sum(windows),
          "train_batch": batch, "train_images_per_s": batch * logged[-1] / sum(windows),
          # The first window holds the compilation.
          "train_steady_steps_per_s": statistics.median(speeds[s] for s in logged[1:]) if len(logged) > 1 else None,
          "train_process_wall_s": process_wall, "train_final_loss": series["loss"][logged[-1]]}


def measure(root: str, process: str, workdir: str, step: int, sampler: str, steps: int, num_samples: int,
            metrics: tuple[str, ...]) -> dict:
  """One `genimg eval` (or its earlier copy when that holds `metrics`): the copied report's fields."""
  copy = os.path.join(root, "reports", f"{process}-{sampler}-{steps}-n{num_samples}.json")
  if os.path.exists(copy):
    with open(copy) as f:
      saved = json.load(f)
    if set(metrics) <= set(saved["report"]["metrics"]):
      return saved
  args = ["eval", "--workdir", workdir, "--metrics", ",".join(metrics), "--num_samples", str(num_samples),
          "--feature_net", "classifier", "--seed", "0", "--checkpoint", str(step)]
  args += (["--sampler", sampler] if sampler else []) + (["--steps", str(steps)] if steps else [])
  print(f"genimg {' '.join(args)}", file=sys.stderr)
  loadavg = _loadavg()  # The CPU may be shared: judges the wall seconds.
  start = time.perf_counter()
  result = _cli(args)
  wall = time.perf_counter() - start
  if result.returncode:
    sys.exit(f"genimg {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
  with open(os.path.join(workdir, "eval", f"eval_{step:07d}.json")) as f:
    report = json.load(f)
  # The report keeps metrics of earlier evals of this step: take this eval's and check they are its.
  report["metrics"] = {name: report["metrics"][name] for name in metrics}
  for name, entry in report["metrics"].items():
    asked = (num_samples, 0, sampler, steps or entry["sampler"].get("steps"))
    found = (entry["num_samples"], entry["seed"], entry["sampler"].get("sampler"), entry["sampler"].get("steps"))
    if report["step"] != step or found != asked:
      sys.exit(f"{workdir}: the report's {name} of step {report['step']} has (num_samples, seed, sampler, "
               f"steps) = {found}, the eval asked for step {step}, {asked}")
  saved = {"command": ["genimg", *args], "eval_wall_s": wall, "loadavg_before": loadavg, "report": report}
  os.makedirs(os.path.dirname(copy), exist_ok=True)
  with open(copy, "w") as f:
    json.dump(saved, f, indent=2)
  return saved


def row_of(process: str, saved: dict) -> dict:
  """A table row from a measurement: its settings, NFE, metrics and eval seconds."""
  m = saved["report"]["metrics"]
  fid = m["fid"]
  row = {"process": process, "sampler": fid["sampler"].get("sampler"), "steps": fid["sampler"].get("steps"),
         "nfe": fid["sampler"]["nfe"], "num_samples": fid["num_samples"], "fid": fid["value"], "is": None,
         "is_std": None, "precision": None, "recall": None, "eval_wall_s": saved["eval_wall_s"],
         "eval_loadavg_before": saved["loadavg_before"], "feature_net": fid["feature_net"],
         "reference": fid["reference"], "seed": fid["seed"]}
  if "is" in m:
    row["is"], row["is_std"] = m["is"]["mean"], m["is"]["std"]
  if "pr" in m:
    row["precision"], row["recall"] = m["pr"]["precision"], m["pr"]["recall"]
  return row


def _git_commit() -> dict:
  run = lambda *a: subprocess.run(["git", *a], check=False, cwd=REPO, capture_output=True, text=True).stdout.strip()
  return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def _machine() -> dict:
  model = platform.processor()
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
  return {"cpu_count": os.cpu_count(), "cpu": model, "platform": platform.platform()}


def _loadavg() -> list[str] | None:
  return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None


def _label(row: dict) -> str:
  return f"{row['process']} {SAMPLER_NAMES.get(row['sampler'], row['sampler'])}"


def _number(value, digits: int = 3) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def _load(row: dict) -> str:
  """The 1-minute load average when the row's eval started."""
  return row["eval_loadavg_before"][0] if row["eval_loadavg_before"] else "-"


def tables(report: dict) -> str:
  """The markdown: how it was measured, then training, the NFE sweep and the headline rows."""
  first = (report["sweep"] or report["headline"])[0]
  how = (f"Feature net: {first['feature_net']}; reference: {first['reference']}; seed {first['seed']}; "
         f"EMA parameters at each run's final step; commit {report['git']['commit'][:10]}"
         f"{' (uncommitted changes)' if report['git']['dirty'] else ''}; {report['machine']['cpu_count']} CPUs "
         f"({report['machine']['cpu']}), load average {report['loadavg_before']} before, "
         f"{report['loadavg_after']} after.")
  head = ["run", "config", "on", "steps", "loop wall s", "steps/s (loop)", "steps/s (steady)", "img/s (loop)",
          "process wall s", "final loss", f"peak MiB ({MEMORY_STEPS}-step run)"]
  lines = [how, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for process, t in report["training"].items():
    lines.append(f"| {process} | {t['config']} | {t.get('first_stage') or 'pixels'} | {t['train_steps']} | "
                 f"{t['train_loop_s']:.0f} | "
                 f"{t['train_steps_per_s']:.2f} | {_number(t['train_steady_steps_per_s'], 2)} | "
                 f"{t['train_images_per_s']:.0f} | {_number(t['train_process_wall_s'], 0)} | "
                 f"{t['train_final_loss']:.4f} | {_number(t.get('train_peak_rss_MiB'), 0)} |")
  sweep_title = (f"NFE vs FID ({report['sweep_samples']} samples; load: the 1-minute load average as the eval "
                 "started, on a CPU shared with other work):")
  lines += ["", sweep_title, "",
            "| process | sampler | steps | NFE | FID | eval s | load |", "|---|---|---|---|---|---|---|"]
  for r in report["sweep"]:
    lines.append(f"| {r['process']} | {r['sampler'] or '-'} | {r['steps'] or '-'} | {r['nfe']} | "
                 f"{r['fid']:.2f} | {r['eval_wall_s']:.0f} | {_load(r)} |")
  lines += ["", "Each process with its config's sampler:", "",
            "| process | sampler | steps | NFE | samples | FID | IS | precision | recall | eval s | load | "
            "sample img/s | sample peak MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in report["headline"]:
    lines.append(f"| {r['process']} | {r['sampler'] or '-'} | {r['steps'] or '-'} | {r['nfe']} | "
                 f"{r['num_samples']} | "
                 f"{r['fid']:.2f} | {_number(r['is'], 2)} ± {_number(r['is_std'], 2)} | {_number(r['precision'])} | "
                 f"{_number(r['recall'])} | {r['eval_wall_s']:.0f} | {_load(r)} | "
                 f"{_number(r.get('sample_images_per_s'), 1)} | {_number(r.get('sample_peak_rss_MiB'), 0)} |")
  return "\n".join(lines)


def plot(report: dict, path: str) -> None:
  """NFE vs FID, one line per process and sampler, the NFE axis logarithmic."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot, ticker

  curves = {}
  for r in report["sweep"]:
    curves.setdefault(_label(r), []).append((r["nfe"], r["fid"]))
  figure, axes = pyplot.subplots(figsize=(6.4, 4.4))
  for label, points in curves.items():
    nfe, fid = zip(*sorted(points))
    axes.plot(nfe, fid, marker="o", label=label)
  axes.set_xscale("log")
  axes.set_yscale("log")
  for axis in (axes.xaxis, axes.yaxis):  # Plain numbers at 1, 2 and 5 times powers of ten, not 10^x.
    axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(ticker.NullFormatter())
  axes.set_xlabel("network evaluations per image (NFE)")
  axes.set_ylabel(f"FID ({report['sweep_samples']} samples, classifier features)")
  axes.set_title("digits 16x16, about one training wall time each")
  axes.grid(True, which="both", alpha=0.3)
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  pyplot.close(figure)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir_root", help="the runs: <root>/<process>, e.g. <root>/flow")
  parser.add_argument("--headline_samples", default="1000,10000", help="comma-separated sample counts of the "
                      "headline rows")
  parser.add_argument("--processes", default=",".join(PROCESSES), help="comma-separated processes to train and "
                      "evaluate (default: all)")
  parser.add_argument("--quick", action="store_true", help=f"a smoke test: runs in <root>/quick trained "
                      f"{QUICK_STEPS} steps with a narrow UNet, one NFE per sampler, {QUICK_SAMPLES} samples")
  parser.add_argument("--out", help="the JSON; .md and .png go next to it (default: "
                      "benchmarks/results/diffusion_quality.json, with --quick <root>/quick/diffusion_quality.json)")
  parser.add_argument("--sample_speed_child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.sample_speed_child:
    _sample_speed_child(json.loads(args.sample_speed_child))
    return
  if not args.workdir_root:
    parser.error("--workdir_root is required")

  root = os.path.abspath(args.workdir_root)
  if args.quick:
    root = os.path.join(root, "quick")
    processes = QUICK_PROCESSES
    overrides = dict({name: QUICK_TRAIN for name in PROCESSES_MULTISTEP}, **QUICK_OVERRIDES)
    sweep_samples, headline_samples = QUICK_SAMPLES, [QUICK_SAMPLES]
  else:
    processes, overrides = PROCESSES, {}
    sweep_samples = SWEEP_SAMPLES
    headline_samples = [int(n) for n in args.headline_samples.split(",") if n]
  chosen = [name for name in args.processes.split(",") if name]
  unknown = sorted(set(chosen) - set(processes))
  if unknown:
    parser.error(f"--processes: unknown {unknown}; choose from {sorted(processes)}")
  processes = {name: processes[name] for name in chosen}
  out = args.out or (os.path.join(root, "diffusion_quality.json") if args.quick
                     else os.path.join(REPO, "benchmarks", "results", "diffusion_quality.json"))
  os.makedirs(root, exist_ok=True)
  loadavg_before = _loadavg()

  workdirs, training = {}, {}
  stages = {entry.first_stage for entry in processes.values()} - {None}
  for name in sorted(stages):  # Trained first: the processes on them name their workdirs.
    _, config, steps = FIRST_STAGES[name]
    steps = QUICK_STEPS if args.quick else steps
    workdir = ensure_trained(root, name, config, steps, overrides.get(name, {}))
    training[name] = dict(config=config, **training_speed(root, name, workdir, steps),
                          **training_memory(root, name, config, overrides.get(name, {})))
  for process, entry in processes.items():
    fields = dict(overrides.get(process, {}))
    if entry.first_stage:
      section = FIRST_STAGES[entry.first_stage][0]
      fields[f"{section}.workdir"] = os.path.join(root, entry.first_stage)
    workdirs[process] = ensure_trained(root, process, entry.config, entry.train_steps, fields)
    training[process] = dict(config=entry.config, first_stage=entry.first_stage,
                             **training_speed(root, process, workdirs[process], entry.train_steps),
                             **training_memory(root, process, entry.config, fields))

  def evaluate(process: str, sampler: str, steps: int, n: int, metrics: tuple[str, ...]) -> dict:
    train_steps = processes[process].train_steps
    saved = measure(root, process, workdirs[process], train_steps, sampler, steps, n, metrics)
    return dict(row_of(process, saved), **training[process])

  sample_batch = QUICK_SAMPLES if args.quick else SAMPLE_BATCH

  def headline_rows(n: int) -> list[dict]:
    return [dict(evaluate(process, sampler, steps, n, ("fid", "is", "pr")),
                 **sampling_speed(root, process, workdirs[process], entry.train_steps, sampler, steps, sample_batch))
            for process, entry in processes.items() for sampler, steps in entry.headline]

  # The smallest headline sample count first: its rows (fid, is, pr) also serve the sweep's points there.
  counts = sorted(headline_samples)
  headline = headline_rows(counts[0]) if counts else []
  sweep = [evaluate(process, sampler, steps, sweep_samples, ("fid",))
           for process, entry in processes.items()
           for sampler, all_steps in entry.sweep.items() for steps in all_steps]
  for n in counts[1:]:
    headline += headline_rows(n)

  report = {"train_steps": {process: entry.train_steps for process, entry in processes.items()},
            "sweep_samples": sweep_samples, "headline_samples": headline_samples,
            "quick": args.quick, "workdir_root": root, "git": _git_commit(), "machine": _machine(),
            "loadavg_before": loadavg_before, "loadavg_after": _loadavg(), "training": training, "sweep": sweep,
            "headline": headline}
  markdown = tables(report)
  print(markdown)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  stem = os.path.splitext(out)[0]
  with open(out, "w") as f:
    json.dump(report, f, indent=2)
  with open(stem + ".md", "w") as f:
    f.write(markdown + "\n")
  plot(report, stem + ".png")
  print(f"wrote {out}, {stem}.md, {stem}.png", file=sys.stderr)


if __name__ == "__main__":
  main()
