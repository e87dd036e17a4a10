r"""Train-step and sampler speed of every family's configs.

  python benchmarks/speed.py [--batch_size 32] [--configs ddpm_digits,ddpm_cifar10]

For each config (each in a fresh subprocess, so peak memory is its own): the
train step's compile seconds and images/s after compile (median of timed
windows, synchronised with block_until_ready), and the compile seconds and
images/s of `method.sample` for each of the config's sampler variants
(SAMPLE_VARIANTS: a name and the config overrides that select it). A config is
a file in configs/ or a CONFIG_VARIANTS entry (a file plus overrides). Methods
that model images as token sequences (TOKENS_PER_IMAGE) also get tokens/s.
Batches are synthetic (uniform noise in [-1, 1]), so the input pipeline is not
timed. Peak memory is the device's peak bytes in use where the backend reports
it, else the process's peak RSS. Prints a markdown table and writes JSON (--out).
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Sampler variants: name -> config overrides. Unlisted fields keep the config's values.
SAMPLE_VARIANTS = {
    "ddim-50": {"sample.sampler": "ddim", "sample.steps": 50},
    "ddim-10": {"sample.sampler": "ddim", "sample.steps": 10},
    "ddpm": {"sample.sampler": "ddpm"},
    "vae-mean": {"sample.mode": "mean"},  # decode prior draws to the likelihood's mean
    "vae-sample": {"sample.mode": "sample"},  # ... to a draw of the likelihood
    "cached": {"sample.sampler": "cached"},  # autoregressive: key/value cache
    "uncached": {"sample.sampler": "uncached"},  # autoregressive: full forward pass per token
    "generator": {},  # a GAN's one forward pass of the EMA generator
}
# The variants each config is measured with unless --samplers says otherwise.
DEFAULT_VARIANTS = {
    "ddpm_digits": ["ddim-50", "ddpm"],
    "ddpm_cifar10": ["ddim-10"],
    "vae_digits": ["vae-mean", "vae-sample"],
    "vae_cifar10": ["vae-mean", "vae-sample"],
    "igpt_digits": ["cached", "uncached"],
    "igpt_cifar10_small": ["cached", "uncached"],
    "dcgan_digits": ["generator"],
    "dcgan_mnist": ["generator"],
    "sngan_cifar10": ["generator"],
}
# Benchmark configs that are a config file with overrides (applied after --batch_size):
# name -> (file in configs/ without .py, overrides, images per sampler run or None for --sample_num).
CONFIG_VARIANTS = {
    # A modest model (2 layers, width 32, float32) on 32x32x3 images, 3072 tokens, so that the
    # uncached sampler (3072 full forward passes per image) finishes on a CPU in minutes.
    "igpt_cifar10_small": ("igpt_cifar10", {"model.num_layers": 2, "model.width": 32, "model.num_heads": 2,
                                            "model.dropout": 0.0, "model.dtype": "float32",
                                            "train.batch_size": 4}, 1),
}
# Methods whose images are token sequences: method name -> tokens per image of shape (H, W, C).
TOKENS_PER_IMAGE = {"autoregressive": math.prod}


def _load_config(config_name: str, overrides: list[str]):
  from genimg_jax import config as config_lib

  file, variant_overrides, _ = CONFIG_VARIANTS.get(config_name, (config_name, {}, None))
  return config_lib.load(os.path.join(REPO, "configs", f"{file}.py"),
                         overrides + [f"--config.{k}={v}" for k, v in variant_overrides.items()])


# Batch sizes for configs whose step splits its batch (a GAN: one slice per discriminator
# update) and so cannot take --batch_size's default: 5 slices of 32.
DEFAULT_BATCH_SIZES = {"sngan_cifar10": 5 * 32}


def _timed(fn, *args):
  import jax

  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def measure(config_name: str, batch_size: int, windows: int, steps_per_window: int,
            samplers: list[str], sample_num: int) -> dict:
  """Measures one config in this process; returns a row of the table."""
  import jax
  import jax.numpy as jnp

  from genimg_jax import methods
  from genimg_jax.train import mesh as mesh_lib
  from genimg_jax.train import runtime, steps

  config = _load_config(config_name, [f"--config.train.batch_size={batch_size}"])
  batch_size = config.train.batch_size
  runtime.setup(config)
  method = methods.make(config)
  mesh = mesh_lib.make_mesh()
  keys = steps.root_keys(0)
  state = jax.jit(method.init, out_shardings=mesh_lib.replicated(mesh))(keys["init"])
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  batch = mesh_lib.to_global({
      "image": jax.device_get(jax.random.uniform(keys["eval"], (batch_size,) + method.image_shape,
                                                 minval=-1, maxval=1)),
      "label": jax.device_get(jnp.zeros((batch_size,), jnp.int32))}, mesh)

  train_step = steps.jit_train_step(method, mesh, mesh_lib.replicated(mesh))
  start = time.perf_counter()
  compiled = train_step.lower(state, batch, keys["train"]).compile()
  compile_s = time.perf_counter() - start
  (state, _), _ = _timed(compiled, state, batch, keys["train"])  # warm-up step, untimed
  seconds = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps_per_window):
      state, metrics = compiled(state, batch, keys["train"])
    jax.block_until_ready((state, metrics))
    seconds.append((time.perf_counter() - start) / steps_per_window)
  step_s = statistics.median(seconds)
  tokens = TOKENS_PER_IMAGE[config.method](method.image_shape) if config.method in TOKENS_PER_IMAGE else None
  row = {"config": config_name, "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
         "params_M": num_params / 1e6, "batch_size": batch_size, "image_shape": method.image_shape,
         "tokens_per_image": tokens, "train_compile_s": compile_s, "train_step_s": step_s,
         "train_images_per_s": batch_size / step_s,
         "train_tokens_per_s": batch_size * tokens / step_s if tokens else None, "samplers": {}}

  sample_num = CONFIG_VARIANTS.get(config_name, (None, None, None))[2] or sample_num
  for spec in samplers:
    variant = _load_config(config_name, [f"--config.train.batch_size={batch_size}"] +
                           [f"--config.{k}={v}" for k, v in SAMPLE_VARIANTS[spec].items()])
    sample = jax.jit(methods.make(variant).sample, static_argnums=2)
    start = time.perf_counter()
    compiled_sample = sample.lower(state.ema_params, keys["sample"], sample_num).compile()
    sample_compile_s = time.perf_counter() - start
    _, sample_s = _timed(compiled_sample, state.ema_params, keys["sample"])
    row["samplers"][spec] = {"num": sample_num, "compile_s": sample_compile_s, "seconds": sample_s,
                             "images_per_s": sample_num / sample_s,
                             "tokens_per_s": sample_num * tokens / sample_s if tokens else None}

  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    row["peak_memory_MiB"], row["peak_memory_kind"] = stats["peak_bytes_in_use"] / 2**20, "device"
  else:
    row["peak_memory_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["peak_memory_kind"] = "host RSS"
  return row


def _loadavg() -> list[str] | None:
  """The 1, 5 and 15 minute load averages (Linux), to judge whether the machine was idle."""
  return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None


def _per_s(value) -> str:
  """A rate for the table: '-' where a row has none, whole numbers from 100 up, else 3 significant digits."""
  if value is None:
    return "-"
  return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def table(rows: list[dict]) -> str:
  lines = ["| config | params | batch | train img/s | train tok/s | step ms | compile s | sampler | "
           "sample img/s | sample tok/s | sample compile s | peak MiB |", "|" + "---|" * 12]
  for r in rows:
    for i, (spec, s) in enumerate(r["samplers"].items() or [("-", None)]):
      head = (f"| {r['config']} | {r['params_M']:.2f}M | {r['batch_size']} | {r['train_images_per_s']:.1f} | "
              f"{_per_s(r.get('train_tokens_per_s'))} | {1000 * r['train_step_s']:.0f} | "
              f"{r['train_compile_s']:.1f} |") if i == 0 else "| | | | | | | |"
      tail = (f" {spec} (n={s['num']}) | {s['images_per_s']:.3g} | {_per_s(s.get('tokens_per_s'))} | "
              f"{s['compile_s']:.1f} |" if s else " - | - | - | - |")
      peak = f" {r['peak_memory_MiB']:.0f} ({r['peak_memory_kind']}) |" if i == 0 else " |"
      lines.append(head + tail + peak)
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="ddpm_digits,ddpm_cifar10")
  parser.add_argument("--batch_size", type=int, help="for every config (default: 32, or DEFAULT_BATCH_SIZES)")
  parser.add_argument("--windows", type=int, default=5)
  parser.add_argument("--steps_per_window", type=int, default=5)
  parser.add_argument("--samplers", help="comma-separated names from SAMPLE_VARIANTS for every "
                      "config (default: DEFAULT_VARIANTS of each config; '' for none)")
  parser.add_argument("--sample_num", type=int, default=16)
  parser.add_argument("--out", default="benchmarks/results/speed.json")
  parser.add_argument("--single", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.single:  # Child process: measure one config, print its row as JSON.
    row = measure(args.single, args.batch_size, args.windows, args.steps_per_window,
                  [v for v in args.samplers.split(",") if v], args.sample_num)
    print("ROW " + json.dumps(row))
    return

  unknown = [v for v in (args.samplers or "").split(",") if v and v not in SAMPLE_VARIANTS]
  if unknown:
    sys.exit(f"--samplers: unknown variant(s) {unknown}; known: {sorted(SAMPLE_VARIANTS)}")
  loadavg_before = _loadavg()
  if loadavg_before and float(loadavg_before[0]) > 0.5:
    print(f"warning: load average {loadavg_before[0]} before starting: timings may be low", file=sys.stderr)
  rows = []
  for name in args.configs.split(","):
    batch_size = args.batch_size or DEFAULT_BATCH_SIZES.get(name, 32)
    cmd = [sys.executable, os.path.abspath(__file__), "--single", name, "--batch_size", str(batch_size),
           "--windows", str(args.windows), "--steps_per_window", str(args.steps_per_window),
           "--samplers", args.samplers if args.samplers is not None else ",".join(DEFAULT_VARIANTS.get(name, [])),
           "--sample_num", str(args.sample_num)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if result.returncode:
      sys.exit(f"{name}: benchmark failed:\n{result.stderr[-3000:]}")
    rows.append(json.loads(next(l for l in result.stdout.splitlines() if l.startswith("ROW "))[4:]))
    print(f"measured {name}", file=sys.stderr)
  print(table(rows))
  report = {"loadavg_before": loadavg_before, "loadavg_after": _loadavg(), "rows": rows}
  out = os.path.join(REPO, args.out) if not os.path.isabs(args.out) else args.out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
  main()
