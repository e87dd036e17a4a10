r"""The benchmark suite: every family's train step and samplers, next to PyTorch on the same model.

  python benchmarks/run.py                        # all families' configs (see FAMILY_CONFIGS)
  python benchmarks/run.py --configs ddpm_digits,vae_digits --torch eager,compile
  python benchmarks/run.py --configs edm_cifar10,flow_cifar10,dit_cifar10   # the diffusion processes and the DiT
  python benchmarks/run.py --configs meanflow_digits,consistency_digits,shortcut_digits   # the few-step processes
  python benchmarks/run.py --quick                # a smoke run of the families (QUICK_CONFIGS), about a minute on a CPU
  python benchmarks/run.py --quick --configs meanflow_digits,consistency_digits,shortcut_digits --torch eager
  python benchmarks/run.py --gpu_suite --dtypes bfloat16,float32 --jobs 3 --budget_s 420   # benchmarks/gpu.sh

For each config, each measurement in a fresh subprocess (so peak memory and threads are its own):
- ours: the train step's compile seconds and images/s after compile (median of timed windows,
  synchronised with block_until_ready), peak memory, model FLOPs per image from the compiled
  step's cost analysis, and MFU = achieved FLOP/s / peak FLOP/s, the peak being a large matmul
  in the config's compute dtype measured on the same machine in the same run; then each
  sampler variant's compile seconds and images/s (median of calls repeated for up to 2 s), with its
  network evaluations per image (NFE) and network passes per image (2 per NFE under guidance).
- torch: the reference of the same architecture and objective (benchmarks/torch_reference/, parameter
  count checked equal to ours, else the run fails) trained on the same batch on the same device,
  eagerly and under torch.compile (--torch), with ours/torch ratios in the table. A step torch.compile cannot
  compile (MeanFlow's torch.func.jvp on torch 2.13's CPU) is reported 'unsupported' in its row, with the reason,
  and the run goes on.
Batches are synthetic (uniform noise in [-1, 1], and uniform labels for a class-conditional model), so
the input pipeline is not timed here
(benchmarks/data_speed.py). Prints markdown tables and writes JSON (--out) and the tables (--markdown), both
rewritten after each config, so that a run cut short keeps what it measured.
--jobs N runs N measurements at once: their start-up and torch.compile's compilation overlap, while a lock keeps
the sections that time or autotune on the device one at a time (DeviceLock).
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each family, and the diffusion family's other processes and backbone: (its CIFAR-10-sized config, its CPU
# demo config), or its CPU demo config alone.
FAMILY_CONFIGS = {
    "diffusion": ("ddpm_cifar10", "ddpm_digits"),
    "gan": ("sngan_cifar10", "dcgan_digits"),
    "vae": ("vae_cifar10", "vae_digits"),
    "autoregressive": ("igpt_cifar10", "igpt_digits"),
    "edm": ("edm_cifar10", "edm_digits"),
    "flow": ("flow_cifar10", "flow_digits"),
    "dit": ("dit_cifar10", "dit_digits"),  # DiT trained as a flow
    "guided": ("flow_cifar10_cond", "flow_digits_cond"),  # class-conditional flow, with the guided samplers
    # The few-step processes: their CPU demos only (their UNet is ddpm_digits', with a second time input for
    # MeanFlow and the shortcut model).
    "meanflow": ("meanflow_digits",),
    "consistency": ("consistency_digits",),
    "shortcut": ("shortcut_digits",),
}
# Sampler variants: name -> config overrides. Unlisted fields keep the config's values.
# Guided variants guide at every step (two network passes per evaluation), whatever the config's interval.
GUIDED_EVERYWHERE = "(0.0, 1e400)"  # an override string: 1e400 parses as inf
SAMPLE_VARIANTS = {
    "ddim-50": {"sample.sampler": "ddim", "sample.steps": 50},
    "ddim-10": {"sample.sampler": "ddim", "sample.steps": 10},
    "ddpm": {"sample.sampler": "ddpm"},  # ancestral, every one of the config's T steps
    "vae-mean": {"sample.mode": "mean"},  # decode prior draws to the likelihood's mean
    "vae-sample": {"sample.mode": "sample"},  # ... to a draw of the likelihood
    "cached": {"sample.sampler": "cached"},  # autoregressive: key/value cache
    "uncached": {"sample.sampler": "uncached"},  # autoregressive: full forward pass per token
    "generator": {},  # a GAN's one forward pass of the EMA generator
    # EDM and flow at several step counts, unguided. NFE: EDM Heun 2N - 1, flow Heun 2N, Euler and
    # Euler-Maruyama N.
    **{f"edm-heun-{n}": {"sample.sampler": "heun", "sample.steps": n, "sample.guidance": 0.0} for n in (3, 5, 9, 18)},
    **{f"flow-euler-{n}": {"sample.sampler": "euler", "sample.steps": n, "sample.guidance": 0.0}
       for n in (5, 10, 18, 35, 50)},
    "flow-heun-25": {"sample.sampler": "heun", "sample.steps": 25, "sample.guidance": 0.0},
    "flow-em-50": {"sample.sampler": "euler_maruyama", "sample.steps": 50, "sample.guidance": 0.0},
    # The few-step processes: MeanFlow's jumps, consistency's one step and CM's multistep (Algorithm 1),
    # the shortcut model's equal steps; NFE = steps.
    "meanflow-1": {"sample.sampler": "meanflow", "sample.steps": 1},
    "meanflow-2": {"sample.sampler": "meanflow", "sample.steps": 2},
    "consistency-1": {"sample.sampler": "onestep"},
    "consistency-multistep-2": {"sample.sampler": "multistep", "sample.steps": 2},
    "shortcut-1": {"sample.sampler": "shortcut", "sample.steps": 1},
    "shortcut-4": {"sample.sampler": "shortcut", "sample.steps": 4},
    # Classifier-free guidance at scale 1 (class-conditional models trained with label dropout): two
    # network passes per NFE.
    "edm-heun-18-guided": {"sample.sampler": "heun", "sample.steps": 18, "sample.guidance": 1.0,
                           "sample.guidance_interval": GUIDED_EVERYWHERE},
    "flow-euler-50-guided": {"sample.sampler": "euler", "sample.steps": 50, "sample.guidance": 1.0,
                           "sample.guidance_interval": GUIDED_EVERYWHERE},
    "flow-heun-25-guided": {"sample.sampler": "heun", "sample.steps": 25, "sample.guidance": 1.0,
                           "sample.guidance_interval": GUIDED_EVERYWHERE},
}
# The variants measured by default: by family, the diffusion family's by process; GUIDED_VARIANTS besides for
# a model trained for guidance.
DEFAULT_VARIANTS = {"ddpm": ["ddim-50", "ddpm"], "edm": ["edm-heun-3", "edm-heun-5", "edm-heun-9", "edm-heun-18"],
                    "flow": ["flow-euler-5", "flow-euler-10", "flow-euler-18", "flow-euler-35", "flow-euler-50",
                             "flow-heun-25", "flow-em-50"],
                    "meanflow": ["meanflow-1", "meanflow-2"], "consistency": ["consistency-1",
                                                                             "consistency-multistep-2"],
                    "shortcut": ["shortcut-1", "shortcut-4"],
                    "vae": ["vae-sample"], "autoregressive": ["cached"], "gan": ["generator"]}
GUIDED_VARIANTS = {"edm": ["edm-heun-18-guided"], "flow": ["flow-euler-50-guided", "flow-heun-25-guided"]}
# A DiT of about the digits UNet's size (1.27M parameters against 1.11M): patch 2, width 128, 4 blocks.
DIT_DIGITS = {"model.arch": "dit", "model.patch_size": 2, "model.hidden_size": 128, "model.depth": 4,
              "model.num_heads": 4, "model.mlp_ratio": 4.0, "model.dropout": 0.0}
# Benchmark configs that are a config file with overrides: name -> (file in configs/, overrides).
CONFIG_VARIANTS = {
    # A modest model (2 layers, width 32, float32) on 32x32x3 images, 3072 tokens, so that the
    # uncached sampler (3072 full forward passes per image) finishes on a CPU in minutes.
    "igpt_cifar10_small": ("igpt_cifar10", {"model.num_layers": 2, "model.width": 32, "model.num_heads": 2,
                                            "model.dropout": 0.0, "model.dtype": "float32"}),
    # The CPU defaults' alternatives, for side-by-side comparisons on a CPU.
    "igpt_digits_xla_attention": ("igpt_digits", {"model.attention": "xla"}),
    "dcgan_digits_device_per_core": ("dcgan_digits", {"mesh.cpu_devices": 0}),
    # flow_digits and flow_digits_cond with the DiT in place of the UNet.
    "dit_digits": ("flow_digits", DIT_DIGITS),
    "dit_digits_cond": ("flow_digits_cond", DIT_DIGITS),
}
# Batch sizes for configs whose step splits its batch (a GAN: one slice per discriminator
# update) and so cannot take --batch_size's default: 5 slices of 32.
DEFAULT_BATCH_SIZES = {"sngan_cifar10": 5 * 32}
# --quick: the demo configs shrunk (8x8 images, narrow networks, T=100), 1 window of 2 steps.
QUICK_UNET = {"data.image_size": 8, "model.ch": 16, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
              "model.attn_resolutions": (4,), "model.norm_groups": 4}
QUICK_OVERRIDES = {
    "ddpm_digits": {**QUICK_UNET, "diffusion.num_timesteps": 100, "sample.steps": 10},
    "dcgan_digits": {"data.image_size": 8, "model.g_ch": 8, "model.d_ch": 8, "model.ch_mult": (1, 2)},
    "vae_digits": {"data.image_size": 8, "model.ch": 16, "model.ch_mult": (1, 2), "model.latent_dim": 8},
    "igpt_digits": {"data.image_size": 8, "model.num_layers": 2, "model.width": 32, "model.num_heads": 2},
    "dit_digits_cond": {"data.image_size": 8, "model.hidden_size": 32, "model.depth": 2, "model.num_heads": 2},
    "meanflow_digits": QUICK_UNET,
    "consistency_digits": QUICK_UNET,
    "shortcut_digits": QUICK_UNET,
}
# What --quick measures without --configs: the families and the DiT, about a minute on a CPU. The few-step
# processes' quick rows (their train steps compile in 20-80 s on 2 cores) run with --configs.
QUICK_CONFIGS = ["ddpm_digits", "dcgan_digits", "vae_digits", "igpt_digits", "dit_digits_cond"]
# --quick's sampler variants where not the defaults: one that doubles the NFE (Heun) and the passes (guidance).
QUICK_SAMPLERS = {"dit_digits_cond": ["flow-heun-25-guided"]}
# --gpu_suite (benchmarks/gpu.sh): the accelerator-sized configs, name -> (batch on one GPU, its sampler). The
# configs' own batches, but igpt_cifar10's is its 64 over 8 GPUs (in float32 XLA's attention holds [8, 8 heads,
# 3072, 3072] scores, 2.4 GB a layer). edm_cifar10 and flow_cifar10 train ddpm_cifar10's UNet, whose step cost
# the process does not change (benchmarks/README.md), and their samplers cost NFE network passes: left out.
GPU_SUITE = {"ddpm_cifar10": (128, ["ddim-50"]), "dit_cifar10": (256, ["flow-heun-25"]),
             "igpt_cifar10": (8, ["cached"]), "sngan_cifar10": (5 * 64, ["generator"]),
             "vae_cifar10": (128, ["vae-sample"])}


def load_config(name: str, overrides: dict):
  """configs/<name>.py (or a CONFIG_VARIANTS entry) with `overrides` ({field: value}) applied."""
  from genimg_jax import config as config_lib

  file, variant = CONFIG_VARIANTS.get(name, (name, {}))
  fields = dict(variant, **overrides)
  return config_lib.load(os.path.join(REPO, "configs", f"{file}.py"),
                         [f"--config.{k}={v}" for k, v in fields.items()])


def default_samplers(config) -> list[str]:
  """The SAMPLE_VARIANTS a config is measured with by default: DEFAULT_VARIANTS of its family (of its
  process, for diffusion), and GUIDED_VARIANTS too for a class-conditional model trained with label dropout."""
  if config.method != "diffusion":
    return DEFAULT_VARIANTS[config.method]
  process = config.diffusion.process
  guided = config.model.num_classes > 0 and config.diffusion.label_dropout > 0
  return DEFAULT_VARIANTS[process] + (GUIDED_VARIANTS.get(process, []) if guided else [])


def transformer_flops_per_image(config) -> float:
  """Training FLOPs of one image through the autoregressive Transformer, counted by hand.

  Matmuls only, 2 FLOPs per multiply-add, backward = 2x forward: per token and layer
  qkv + output projection (4 d^2) and the MLP (2 d * mlp_ratio d), the attention scores
  and their use on values over the context the attention computes (2 * L * d times the
  computed fraction of the L x L scores: all of them with XLA's or cuDNN's attention, the
  query blocks' prefixes with the CPU's blocked attention), then the 256-way head.
  Embeddings, norms, softmax and the optimizer are left out.
  """
  from genimg_jax.models import attention, transformer

  m = config.model
  tokens = config.data.image_size ** 2 * config.data.channels
  blocks = [(0, tokens)]
  if transformer.attention_implementation(m.attention, m.dtype) == "blocked":
    blocks = attention.query_blocks(tokens, transformer.ATTENTION_QUERY_BLOCKS)
  scored = sum((end - start) * end for start, end in blocks) / tokens ** 2
  per_layer = 4 * m.width ** 2 + 2 * m.width * m.mlp_ratio * m.width + 2 * tokens * m.width * scored
  forward = 2 * tokens * (m.num_layers * per_layer + m.width * 256)
  return 3.0 * forward


def _sync_timer(fn, *args):
  import jax

  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def time_train_step(step, state, batch, key, windows: int, steps_per_window: int):
  """(state after the timed steps, median seconds per step over `windows` windows of `steps_per_window` steps
  of step(state, batch, key) -> (state, metrics), each window synchronised at its end)."""
  import jax

  seconds = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps_per_window):
      state, metrics = step(state, batch, key)
    jax.block_until_ready((state, metrics))
    seconds.append((time.perf_counter() - start) / steps_per_window)
  return state, statistics.median(seconds)


def suite_overrides(name: str, quick: bool) -> dict:
  """The config overrides the suite measures `name` with by default: QUICK_OVERRIDES with --quick, and the
  batch size of DEFAULT_BATCH_SIZES (32 unless listed)."""
  return dict(QUICK_OVERRIDES.get(name, {}) if quick else {}, **{"train.batch_size": DEFAULT_BATCH_SIZES.get(name, 32)})


def _median_call_s(fn, *args, budget_s: float = 2.0, max_calls: int = 10) -> float:
  """Median seconds of synchronised calls of fn(*args), repeated while the calls so far took under budget_s."""
  seconds = []
  while not seconds or (sum(seconds) < budget_s and len(seconds) < max_calls):
    seconds.append(_sync_timer(fn, *args)[1])
  return statistics.median(seconds)


class DeviceLock:
  """--jobs' lock on the device: an exclusive flock on a file around each section that times or autotunes work
  there (our compiles too: XLA times candidate kernels on the device), so that concurrent measurements overlap
  only their start-up and torch.compile's compilation. No path (--jobs 1): no lock."""

  def __init__(self, path: str | None):
    self.path, self.waited_s = path, 0.0

  @contextlib.contextmanager
  def held(self):
    if not self.path:
      yield
      return
    import fcntl

    with open(self.path, "a") as f:  # closing the file releases the lock
      start = time.perf_counter()
      fcntl.flock(f, fcntl.LOCK_EX)
      self.waited_s += time.perf_counter() - start
      yield


def peak_flops(dtype: str, size: int, repeats: int = 5) -> float:
  """FLOP/s of a [size, size] @ [size, size] matmul in `dtype` on the default device (best of repeats)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, a))
  best = min(_sync_timer(matmul, a, a)[1] for _ in range(repeats))
  return 2.0 * size ** 3 / best


class OursStep(NamedTuple):
  """Our train step for one config, ready to lower: `batch` is a synthetic global batch on the mesh."""
  config: Any
  method: Any
  state: Any
  batch: dict
  keys: dict
  train_step: Any  # steps.jit_train_step's result; .jitted(state, batch, key) -> (state, metrics)


def build_ours(name: str, overrides: dict) -> OursStep:
  """Our method, initial state, synthetic batch (uniform images in [-1, 1], uniform labels) and jitted train
  step for configs/<name>.py with `overrides`, on the config's mesh with the state sharded as the trainer shards
  it (replicated unless mesh.fsdp > 1), in this process."""
  import jax

  from genimg_jax import methods, seeds
  from genimg_jax.parallel import mesh as mesh_lib
  from genimg_jax.parallel import runtime
  from genimg_jax.train import steps
  from genimg_jax.train import workdir

  config = load_config(name, overrides)
  batch_size = config.train.batch_size
  runtime.setup(config)
  method = methods.make(config)
  mesh = mesh_lib.make_mesh(config.mesh.fsdp)
  keys = seeds.root_keys(0)
  state_sharding = jax.tree.map(lambda x: x.sharding, workdir.abstract_state(method, mesh, config.mesh.fsdp_min_size))
  state = jax.jit(method.init, out_shardings=state_sharding)(keys["init"])
  image_rng, label_rng = jax.random.split(keys["eval"])
  batch = mesh_lib.to_global({
      "image": jax.device_get(jax.random.uniform(image_rng, (batch_size,) + method.image_shape, minval=-1, maxval=1)),
      "label": jax.device_get(jax.random.randint(label_rng, (batch_size,), 0, max(method.num_classes, 1)))}, mesh)
  return OursStep(config, method, state, batch, keys,
                  steps.jit_train_step(method, mesh, state_sharding))


def measure_ours(name: str, overrides: dict, windows: int, steps_per_window: int, samplers: list[str],
                 sample_num: int, lock: DeviceLock = DeviceLock(None)) -> dict:
  """Our train step and samplers for one config, in this process; returns a row."""
  import jax

  from genimg_jax import methods
  from genimg_jax.parallel import functions
  from genimg_jax.parallel import mesh as mesh_lib

  config, method, state, batch, keys, train_step = build_ours(name, overrides)
  batch_size = config.train.batch_size
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  with lock.held():
    start = time.perf_counter()
    lowered = train_step.jitted.lower(state, batch, keys["train"])
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    # The compiled program is one device's share of the batch. Custom calls (cuDNN convolutions,
    # fused attention) may count no FLOPs after compilation: then the unoptimised program's count stands in.
    flops = (compiled.cost_analysis() or {}).get("flops", 0.0) * jax.device_count()
    flops_source = "compiled"
    lowered_flops = (lowered.cost_analysis() or {}).get("flops", 0.0)
    if flops < 0.5 * lowered_flops:
      flops, flops_source = lowered_flops, "lowered"
    (state, _), _ = _sync_timer(compiled, state, batch, keys["train"])  # warm-up step, untimed
    state, step_s = time_train_step(compiled, state, batch, keys["train"], windows, steps_per_window)
    row = {"config": name, "family": config.method, "overrides": {k: str(v) for k, v in overrides.items()},
           "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform, "jax": jax.__version__,
           "num_devices": jax.device_count(), "dtype": config.model.dtype, "deterministic": config.deterministic,
           "params": int(num_params), "batch_size": batch_size, "image_shape": list(method.image_shape),
           "train_compile_s": compile_s, "train_step_s": step_s, "train_images_per_s": batch_size / step_s,
           "flops_per_image": flops / batch_size, "flops_source": flops_source,
           "achieved_flops_per_s": flops / step_s, "samplers": {}}
    if config.method == "autoregressive":
      row["flops_per_image_by_hand"] = transformer_flops_per_image(config)

    for spec in samplers:
      variant = load_config(name, dict(overrides, **SAMPLE_VARIANTS[spec]))
      variant_method = methods.make(variant)
      # As `genimg sample` and `genimg eval` draw: the images split over the devices, per-image keys.
      draw = functions.sampler(variant_method, mesh_lib.make_mesh(variant.mesh.fsdp), sample_num)
      first_s = _sync_timer(draw, state.ema_params, keys["sample"])[1]
      sample_s = _median_call_s(draw, state.ema_params, keys["sample"])
      row["samplers"][spec] = {"num": sample_num, "compile_s": max(first_s - sample_s, 0.0), "seconds": sample_s,
                               "images_per_s": sample_num / sample_s, "nfe": variant_method.sample_nfe,
                               "network_passes": variant_method.sample_network_passes}

  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    row["peak_memory_MiB"], row["peak_memory_kind"] = stats["peak_bytes_in_use"] / 2**20, "device"
  else:
    row["peak_memory_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["peak_memory_kind"] = "host RSS"
  return row


class TorchStep(NamedTuple):
  """The torch reference's train step for one config and the synthetic batch it trains on (as ours')."""
  config: Any
  reference: Any  # torch_reference.Reference
  images: Any  # [B, H, W, C] float32 tensor in [-1, 1] on `device`
  labels: Any  # [B] int64 tensor on `device`
  device: Any


def build_torch(name: str, overrides: dict, mode: str) -> TorchStep:
  """The reference of configs/<name>.py with `overrides`, eager or compiled (`mode`), on the GPU if torch sees
  one, else the CPU."""
  import torch

  from benchmarks import torch_reference

  config = load_config(name, overrides)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if device.type == "cuda":
    torch.set_float32_matmul_precision("high")  # TF32, as XLA's float32 matmuls on a GPU; cuDNN's convs use it anyway
  reference = torch_reference.build(config.method, config, device, compile=mode == "compile")
  shape = (config.train.batch_size, config.data.image_size, config.data.image_size, config.data.channels)
  generator = torch.Generator(device="cpu").manual_seed(0)
  images = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
  labels = torch.randint(0, max(config.model.get("num_classes", 0), 1), shape[:1], generator=generator).to(device)
  return TorchStep(config, reference, images, labels, device)


def measure_torch(name: str, overrides: dict, mode: str, windows: int, steps_per_window: int,
                  lock: DeviceLock = DeviceLock(None), samplers: tuple[str, ...] = (), sample_num: int = 16) -> dict:
  """The torch reference's train step for one config, eager or compiled, in this process, and the `samplers` the
  reference has (Reference.sample), timed as ours (median of repeated calls, after an untimed first call that
  compiles under torch.compile)."""
  import torch

  config, reference, images, labels, device = build_torch(name, overrides, mode)

  def run(num: int) -> float:
    start = time.perf_counter()
    for _ in range(num):
      loss = reference.train_step(images, labels)
    loss.item()  # waits for the device
    return time.perf_counter() - start

  # The file that defines the (first) network: named if the parameter counts differ.
  module = type(next(iter(reference.modules.values()))).__module__.rsplit(".", 1)[-1]
  row = {"mode": mode, "torch": torch.__version__, "device": str(device), "params": reference.num_params,
         "float32_matmul": torch.get_float32_matmul_precision(), "module": module}
  try:
    compile_s = run(1)  # the first step: torch.compile's compilation, or eager warm-up
  except torch._dynamo.exc.TorchDynamoException as e:
    if mode != "compile":
      raise
    # A step torch.compile cannot compile (MeanFlow's torch.func.jvp on a CPU): the row says so, the run goes on.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = re.sub(r" at 0x[0-9a-f]+", "", " ".join(lines[:2]).split("(*")[0])[:300]
    return dict(row, unsupported=f"torch.compile failed in the first step: {type(e).__name__}: {reason}")

  def drawer(spec: str):
    return lambda: (lambda images: images if images is None else images.sum().item())(  # waits for the device
        reference.sample(spec, sample_num))

  # Each sampler's first call, untimed and outside the lock: torch.compile compiles it there.
  draws = {spec: drawer(spec) for spec in samplers}
  draws = {spec: draw for spec, draw in draws.items() if draw() is not None}
  with lock.held():
    run(1)
    step_s = statistics.median(run(steps_per_window) / steps_per_window for _ in range(windows))
    sampled = {}
    for spec, draw in draws.items():
      seconds = _median_call_s(draw)
      sampled[spec] = {"num": sample_num, "seconds": seconds, "images_per_s": sample_num / seconds}
  peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
          else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  return dict(row, first_step_s=compile_s, train_step_s=step_s, train_images_per_s=config.train.batch_size / step_s,
              peak_memory_MiB=peak, samplers=sampled)


class MeasurementFailed(Exception):
  """A measurement's process failed ("failed") or outlasted --budget_s ("timeout")."""

  def __init__(self, status: str, message: str):
    super().__init__(message)
    self.status = status


def _child(job: dict, timeout: float | None = None, env: dict | None = None, script: str = __file__,
           env_overrides: dict | None = None) -> dict:
  """Runs `script` (this one by default) on `job` (see --child) in a fresh process; returns the JSON it prints
  after 'ROW '.

  `env`: defaults for the process's environment; `env_overrides`: set over it. With a timeout the process leads
  its own process group, so that torch.compile's workers are killed with it.
  """
  args = ["--child", json.dumps(job)]
  env = {**(env or {}), **os.environ, **(env_overrides or {})}
  env["PYTHONPATH"] = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
  proc = subprocess.Popen([sys.executable, os.path.abspath(script)] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, start_new_session=timeout is not None)
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
      os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    raise MeasurementFailed("timeout", f"benchmark step {' '.join(args)} stopped at the end of --budget_s")
  if proc.returncode:
    raise MeasurementFailed("failed", f"benchmark step {' '.join(args)} failed:\n{stderr[-3000:]}")
  return json.loads(next(l for l in stdout.splitlines() if l.startswith("ROW "))[4:])


def require_same_params(name: str, module: str, ours: int, reference: int) -> None:
  """Exits naming the reference's file (benchmarks/torch_reference/<module>.py) when its trainable
  parameter count differs from ours."""
  if reference != ours:
    sys.exit(f"{name}: the torch reference has {reference} trainable parameters, ours {ours}: "
             f"benchmarks/torch_reference/{module}.py does not match the model")


def _loadavg() -> list[str] | None:
  """The 1, 5 and 15 minute load averages (Linux), to judge whether the machine was idle."""
  return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None


def _rate(value) -> str:
  """A rate for the table: '-' where there is none, whole numbers from 100 up, else 3 significant digits."""
  if value is None:
    return "-"
  return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def train_table(rows: list[dict], torch_modes: list[str]) -> str:
  head = ["config", "dtype", "params", "batch", "img/s", "step ms", "compile s", "GFLOP/img", "MFU", "peak MiB"]
  for mode in torch_modes:
    head += [f"torch {mode} img/s", f"ours/{mode}"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    gflop = f"{r['flops_per_image'] / 1e9:.3g}"
    if "flops_per_image_by_hand" in r:
      gflop += f" (by hand {r['flops_per_image_by_hand'] / 1e9:.3g})"
    cells = [r["config"], r["dtype"], f"{r['params'] / 1e6:.2f}M", str(r["batch_size"]),
             _rate(r["train_images_per_s"]), f"{1000 * r['train_step_s']:.0f}", f"{r['train_compile_s']:.1f}",
             gflop, f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-",
             f"{r['peak_memory_MiB']:.0f} ({r['peak_memory_kind']})"]
    for mode in torch_modes:
      t = r["torch"].get(mode)
      if t and "unsupported" in t:
        cells += ["unsupported", "-"]
      else:
        cells += [_rate(t["train_images_per_s"]), _ratio_cell(t)] if t else ["-", "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _ratio_cell(torch: dict) -> str:
  """ours/torch of the median images/s, and every round's ratio in brackets when there were several."""
  rounds = torch.get("ours_per_torch_rounds", [])
  return f"{torch['ours_per_torch']:.2f}" + (f" ({', '.join(f'{x:.2f}' for x in rounds)})" if len(rounds) > 1 else "")


def sample_table(rows: list[dict]) -> str:
  """One line per sampler: NFE and network passes per image, images/s, and network img/s = img/s x
  passes (for a diffusion sampler the network's throughput in images, to set against the train step's)."""
  by_dtype = len({r["dtype"] for r in rows}) > 1  # a dtype column where rows differ in it
  head = ["config"] + ["dtype"] * by_dtype + ["sampler", "NFE", "passes/img", "images", "img/s", "network img/s",
                                              "compile s", "torch eager img/s", "ours/eager",
                                              "torch.compile img/s", "ours/compile"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    for spec, s in r["samplers"].items():
      passes = s["network_passes"]
      config = f"{r['config']} | {r['dtype']}" if by_dtype else r["config"]
      cells = []
      for mode in ("eager", "compile"):
        torch_rate = r.get("torch", {}).get(mode, {}).get("samplers", {}).get(spec, {}).get("images_per_s")
        cells += [_rate(torch_rate), f"{s['images_per_s'] / torch_rate:.2f}" if torch_rate else "-"]
      lines.append(f"| {config} | {spec} | {s['nfe']} | {passes} | {s['num']} | "
                   f"{_rate(s['images_per_s'])} | {_rate(s['images_per_s'] * passes)} | {s['compile_s']:.1f} | "
                   + " | ".join(cells) + " |")
  return "\n".join(lines)


def _torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def combine_rounds(results: list[dict | None]) -> dict | None:
  """One measurement's rounds as one result: the first round's (with its samplers), the train step's images/s
  the median over the rounds (every round's in train_images_per_s_rounds), the peak memory the largest.
  None if a round is missing (failed or skipped)."""
  if any(r is None for r in results):
    return None
  first = dict(results[0])
  if "unsupported" in first:
    return first
  rates = [r["train_images_per_s"] for r in results]
  first.update(train_images_per_s=statistics.median(rates), train_images_per_s_rounds=rates,
               train_step_s=statistics.median(r["train_step_s"] for r in results),
               peak_memory_MiB=max(r["peak_memory_MiB"] for r in results))
  if "flops_per_image" in first:
    first["achieved_flops_per_s"] = first["flops_per_image"] * first["train_images_per_s"]
  return first


def _time_note(result: dict) -> str:
  """Where a measurement's seconds went, for the running log: compiles, torch's first step, waiting for the device."""
  parts = []
  if "train_compile_s" in result:
    parts.append(f"train step compile {result['train_compile_s']:.1f} s")
    parts += [f"{spec} compile {s['compile_s']:.1f} s" for spec, s in result["samplers"].items()]
  if "first_step_s" in result:
    parts.append(f"first step {result['first_step_s']:.1f} s")
  if "unsupported" in result:
    parts.append(result["unsupported"])
  if result.get("device_wait_s"):
    parts.append(f"waited {result['device_wait_s']:.1f} s for the device")
  return ", ".join(parts)


def report_markdown(rows: list[dict], torch_modes: list[str], peaks: dict, incomplete: list[dict]) -> str:
  """The printed tables (--markdown), and a line naming the measurements that failed or were skipped."""
  parts = [train_table(rows, torch_modes), sample_table(rows),
           "peak FLOP/s (matmul): " + ", ".join(f"{d} {p['flops_per_s'] / 1e12:.3g} TFLOP/s (n={p['matmul_size']})"
                                                for d, p in peaks.items())]
  unsupported = [f"{r['dtype']} {r['config']} torch {mode}: {t['unsupported']}" for r in rows
                 for mode, t in r["torch"].items() if "unsupported" in t]
  if unsupported:
    parts.append("unsupported: " + "; ".join(unsupported))
  if incomplete:
    parts.append("not measured: " + "; ".join(f"{i['dtype']} {i['config']} {i['measurement']} ({i['status']})"
                                              for i in incomplete))
  return "\n\n".join(parts)


def _write(path: str, text: str) -> str:
  """Writes `text` to `path` (relative to the repository unless absolute); returns the absolute path."""
  path = path if os.path.isabs(path) else os.path.join(REPO, path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", help="comma-separated configs (default: every config in FAMILY_CONFIGS; "
                      "with --quick QUICK_CONFIGS, or a subset of QUICK_OVERRIDES; with --gpu_suite a subset of "
                      "GPU_SUITE)")
  parser.add_argument("--batch_size", type=int, help="for every config (default: 32, or DEFAULT_BATCH_SIZES; "
                      "GPU_SUITE's with --gpu_suite)")
  parser.add_argument("--dtypes", "--dtype", help="comma-separated compute dtypes (float32, bfloat16), a pass over "
                      "every config for each, in this order (default: each config's model.dtype)")
  parser.add_argument("--windows", type=int, help="timed windows of the train step (default 5; 3 with --gpu_suite)")
  parser.add_argument("--steps_per_window", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=1, help="measurements of each train step, ours and torch's "
                      "alternating in order between rounds; a row gives the medians and every round's ratio "
                      "(the samplers are timed in the first round)")
  parser.add_argument("--samplers", help="comma-separated names from SAMPLE_VARIANTS for every config "
                      "(default: each config's default_samplers, or GPU_SUITE's; '' for none)")
  parser.add_argument("--sample_num", type=int, help="images per sampler call (default 16; 64 with --gpu_suite)")
  parser.add_argument("--torch", help="torch reference modes: eager, compile; '' for none (default: both; eager "
                      "with --quick)")
  parser.add_argument("--peak_size", type=int, help="matmul size of the peak-FLOP/s measurement "
                      "(default: 8192 on an accelerator, 2048 on a CPU)")
  parser.add_argument("--quick", action="store_true", help="the demo configs shrunk (QUICK_OVERRIDES), one window "
                      "of 2 steps, 2 images per sampler (QUICK_SAMPLERS), torch eager only: checks the suite end "
                      "to end")
  parser.add_argument("--gpu_suite", action="store_true", help="GPU_SUITE's configs, batches and samplers (the "
                      "samplers in the first of --dtypes only)")
  parser.add_argument("--jobs", type=int, default=1, help="measurements at once, their device sections one at a "
                      "time (DeviceLock)")
  parser.add_argument("--budget_s", type=float, help="wall-clock budget: a measurement still running then is "
                      "stopped, those not started are skipped, and the report names them")
  parser.add_argument("--keep_going", action="store_true", help="record a failed measurement in the report and go "
                      "on (the run still exits non-zero at the end)")
  parser.add_argument("--out", default="benchmarks/results/run.json")
  parser.add_argument("--markdown", help="also write the printed tables to this file")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.child:  # A measurement in this fresh process: print its result as JSON.
    job = json.loads(args.child)
    lock = DeviceLock(job.get("lock"))
    if job["kind"] == "peak":
      import jax

      size = job["size"] or (2048 if jax.default_backend() == "cpu" else 8192)
      with lock.held():
        result = {"flops_per_s": peak_flops(job["dtype"], size), "matmul_size": size}
    elif job["kind"] == "ours":
      result = measure_ours(job["config"], job["overrides"], job["windows"], job["steps_per_window"],
                            job["samplers"], job["sample_num"], lock)
    else:
      result = measure_torch(job["config"], job["overrides"], job["mode"], job["windows"], job["steps_per_window"],
                             lock, job.get("samplers", ()), job.get("sample_num", 16))
    result["device_wait_s"] = lock.waited_s
    print("ROW " + json.dumps(result))
    return

  if args.quick and args.gpu_suite:
    sys.exit("--quick and --gpu_suite: choose one")
  suite = QUICK_OVERRIDES if args.quick else GPU_SUITE if args.gpu_suite else None
  if args.configs:
    names = args.configs.split(",")
    if suite and set(names) - set(suite):
      sys.exit(f"--configs: {sorted(set(names) - set(suite))} not in the suite's {list(suite)}")
  else:
    names = QUICK_CONFIGS if args.quick else list(suite) if suite else [n for names in FAMILY_CONFIGS.values()
                                                                         for n in names]
  if args.quick:
    args.windows, args.steps_per_window, args.sample_num = 1, 2, 2
  args.windows = args.windows or (3 if args.gpu_suite else 5)
  args.torch = args.torch if args.torch is not None else "eager" if args.quick else "eager,compile"
  args.sample_num = args.sample_num or (64 if args.gpu_suite else 16)
  dtypes = args.dtypes.split(",") if args.dtypes else [None]
  unknown = [v for v in (args.samplers or "").split(",") if v and v not in SAMPLE_VARIANTS]
  torch_modes = [m for m in args.torch.split(",") if m]
  if unknown:
    sys.exit(f"--samplers: unknown variant(s) {unknown}; known: {sorted(SAMPLE_VARIANTS)}")
  if any(m not in ("eager", "compile") for m in torch_modes):
    sys.exit(f"--torch: modes are eager and compile, got {args.torch!r}")
  if args.dtypes and any(d not in ("float32", "bfloat16") for d in dtypes):
    sys.exit(f"--dtypes: each is float32 or bfloat16, got {args.dtypes!r}")
  if torch_modes and not _torch_available():
    print("torch is not installed (pip install -e '.[bench]'): no torch columns", file=sys.stderr)
    torch_modes = []
  loadavg_before = _loadavg()
  if loadavg_before and float(loadavg_before[0]) > 0.5:
    print(f"warning: load average {loadavg_before[0]} before starting: timings may be low", file=sys.stderr)

  start = time.monotonic()
  stop = threading.Event()  # set by a failure without --keep_going: nothing more starts
  lock_dir = tempfile.TemporaryDirectory()
  lock_path = os.path.join(lock_dir.name, "device.lock") if args.jobs > 1 else None
  # Concurrent processes share the device and the cores: JAX then allocates as it goes rather than 75% of the
  # device up front, and torch.compile's workers take a share of the cores, leaving some to the one being timed.
  env = ({"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
          "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))} if args.jobs > 1 else {})

  def measure(label: str, job: dict) -> dict:
    """One measurement in its own process unless the budget is spent or a failure stopped the run; logs the
    running elapsed time. Returns {"result": ...} or {"status": ..., "error": ...}."""
    if stop.is_set():
      return {"status": "skipped", "error": "an earlier measurement failed"}
    remaining = args.budget_s - (time.monotonic() - start) if args.budget_s else None
    if remaining is not None and remaining <= 0:
      return {"status": "skipped", "error": f"--budget_s {args.budget_s:g} spent"}
    began = time.monotonic()
    try:
      outcome = {"result": _child(dict(job, lock=lock_path), remaining, env)}
      note = _time_note(outcome["result"])
    except MeasurementFailed as e:
      if e.status == "failed" and not args.keep_going:
        stop.set()
      outcome, note = {"status": e.status, "error": str(e)}, e.status
    print(f"[{time.monotonic() - start:5.0f} s] {label}: {time.monotonic() - began:.1f} s" + (f" ({note})" if note
          else ""), file=sys.stderr, flush=True)
    return outcome

  peaks, rows, incomplete = {}, [], []

  def outcome_of(future, **where) -> dict | None:
    """The future's result, or None after recording why not (and exiting on a failure without --keep_going)."""
    outcome = future.result()
    if "result" in outcome:
      return outcome["result"]
    incomplete.append(dict(where, status=outcome["status"], error=outcome["error"][-3000:]))
    if outcome["status"] == "failed" and not args.keep_going:
      sys.exit(outcome["error"])
    return None

  def write_report() -> str:
    report = {"loadavg_before": loadavg_before, "loadavg_after": _loadavg(), "elapsed_s": time.monotonic() - start,
              "peak": peaks, "rows": rows, "incomplete": incomplete}
    if args.markdown:
      _write(args.markdown, report_markdown(rows, torch_modes, peaks, incomplete) + "\n")
    return _write(args.out, json.dumps(report, indent=2))

  pool = concurrent.futures.ThreadPoolExecutor(args.jobs)
  try:
    peak_futures, groups = {}, []  # in order of priority: the pool starts them in this order
    for dtype in dtypes:
      for name in names:
        overrides = suite_overrides(name, args.quick)
        if args.batch_size or args.gpu_suite:
          overrides["train.batch_size"] = args.batch_size or GPU_SUITE[name][0]
        if dtype:
          overrides["model.dtype"] = dtype
        config = load_config(name, overrides)
        compute = config.model.dtype
        if args.samplers is not None:
          samplers = args.samplers.split(",")
        elif args.quick and name in QUICK_SAMPLERS:
          samplers = QUICK_SAMPLERS[name]
        elif args.gpu_suite:  # sampling speed in one dtype: the other's sampler compiles would cost about a minute
          samplers = GPU_SUITE[name][1] if dtype == dtypes[0] else []
        else:
          samplers = default_samplers(config)
        if compute not in peak_futures:
          peak_futures[compute] = pool.submit(measure, f"{compute} peak matmul",
                                              {"kind": "peak", "dtype": compute, "size": args.peak_size or
                                               (1024 if args.quick else None)})
        common = {"config": name, "overrides": overrides, "windows": args.windows,
                  "steps_per_window": args.steps_per_window, "sample_num": args.sample_num}
        ours, modes = [], {mode: [] for mode in torch_modes}
        for r in range(args.rounds):
          jobs = [(None, dict(common, kind="ours"))] + [(mode, dict(common, kind="torch", mode=mode))
                                                        for mode in torch_modes]
          for mode, job in (jobs if r % 2 == 0 else jobs[::-1]):  # a drift of the machine falls on both sides
            job["samplers"] = [s for s in samplers if s] if r == 0 else []
            label = f"{compute} {name} " + ("ours" if mode is None else f"torch {mode}") + (
                f" round {r + 1}" if args.rounds > 1 else "")
            (ours if mode is None else modes[mode]).append(pool.submit(measure, label, job))
        groups.append((name, compute, ours, modes))

    for name, dtype, ours, modes in groups:
      if dtype in peak_futures:
        peak = outcome_of(peak_futures.pop(dtype), config="matmul", dtype=dtype, measurement="peak")
        if peak:
          peaks[dtype] = peak
      row = combine_rounds([outcome_of(f, config=name, dtype=dtype, measurement="ours") for f in ours])
      results = {mode: combine_rounds([outcome_of(f, config=name, dtype=dtype, measurement=f"torch {mode}")
                                       for f in futures]) for mode, futures in modes.items()}
      if row:
        peak = peaks.get(dtype)
        row["peak_flops_per_s"] = peak["flops_per_s"] if peak else None
        row["mfu"] = row["achieved_flops_per_s"] / peak["flops_per_s"] if peak else None
        row["torch"] = {}
        for mode, result in results.items():
          if result:
            require_same_params(name, result["module"], row["params"], result["params"])
            if "unsupported" not in result:
              result["ours_per_torch"] = row["train_images_per_s"] / result["train_images_per_s"]
              result["ours_per_torch_rounds"] = [o / t for o, t in zip(row["train_images_per_s_rounds"],
                                                                       result["train_images_per_s_rounds"])]
            row["torch"][mode] = result
        rows.append(row)
      write_report()
  finally:
    pool.shutdown(cancel_futures=True)
    lock_dir.cleanup()

  print(report_markdown(rows, torch_modes, peaks, incomplete))
  print(f"wrote {write_report()} in {time.monotonic() - start:.0f} s", file=sys.stderr)
  failed = [f"{i['dtype']} {i['config']} {i['measurement']}" for i in incomplete if i["status"] == "failed"]
  if failed:
    sys.exit(f"{len(failed)} measurement(s) failed: {', '.join(failed)} (errors in the report's 'incomplete')")


if __name__ == "__main__":
  main()
