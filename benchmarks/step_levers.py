r"""Two changes to the train step's code, each next to today's step, side by side in one process.

  python benchmarks/step_levers.py                                # LEVER_CONFIGS, 3 rounds
  python benchmarks/step_levers.py --configs vae_digits --rounds 1 --quick   # a smoke run

- flat_all_reduce: the step under `jax.shard_map` over the data axis, the gradients all-reduced as one flattened
  vector (one `pmean`) in place of the partitioner's all-reduce of every parameter (one operand each, which
  XLA:CPU's collectives meet one at a time). Inside the map each device draws its noise with
  fold_in(step key, device index), so the random stream then depends on the device count; shard_map checks
  (check_vma) that the new state and the metrics are the same on every device, i.e. that every gradient was
  reduced.
- flat_optimizer: `optax.flatten` around the method's optimizer: its update runs over one vector of all parameters
  (fewer, larger loops; the optimizer state is then one vector per moment).

Each variant is compiled once; per round the three are timed in turn (benchmarks/run.py's windows of steps on a
synthetic batch), the order reversed every other round, and a variant's ratio is its median images/s over the
default's. Only methods trained through methods.base.gradient_step take the flat all-reduce (not the GANs).
Prints markdown and writes JSON (--out).
"""

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run  # noqa: E402  (the script's own directory is not a package root)

LEVER_CONFIGS = ["ddpm_digits", "dit_digits", "vae_digits", "igpt_digits"]
VARIANTS = ("default", "flat_all_reduce", "flat_optimizer")
# The method modules that bind base.gradient_step or base.make_optimizer under their own names.
METHOD_MODULES = ("base", "diffusion", "vae", "autoregressive", "autoregressive_tokens", "latent", "maskgit",
                  "autoencoder", "gan")


def _patched(name: str, replacement):
  """Patches `name` in every method module that binds it."""
  stack = contextlib.ExitStack()
  for module in METHOD_MODULES:
    mod = importlib.import_module(f"genimg_jax.methods.{module}")
    if hasattr(mod, name):
      stack.enter_context(mock.patch.object(mod, name, replacement))
  return stack


def flat_optimizer():
  """make_optimizer with optax.flatten around its transformation, patched in while a method is built."""
  import optax

  from genimg_jax.methods import base

  make = base.make_optimizer

  def flat_make(opt, field="optimizer"):
    tx, learning_rate = make(opt, field)
    return optax.flatten(tx), learning_rate

  return _patched("make_optimizer", flat_make)


def flat_all_reduce_step(method, mesh, state, batch, key):
  """`steps.guarded_step` of `method` under shard_map over the data axis, compiled: gradients and metrics
  averaged over the devices with one pmean each."""
  import jax
  from jax.flatten_util import ravel_pytree
  from jax.sharding import PartitionSpec as P

  from genimg_jax.methods import base
  from genimg_jax.train import steps

  reduce_then_step = base.gradient_step

  def gradient_step(state, grads, metrics, *args, **kwargs):
    flat, unravel = ravel_pytree(grads)
    metrics = jax.tree.map(lambda m: jax.lax.pmean(m, "data"), metrics)
    return reduce_then_step(state, unravel(jax.lax.pmean(flat, "data")), metrics, *args, **kwargs)

  guarded = steps.guarded_step(method)

  def local(state, batch, key):
    return guarded(state, batch, jax.random.fold_in(key, jax.lax.axis_index("data")))

  mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), jax.tree.map(lambda _: P("data"), batch), P()),
                         out_specs=(P(), P()))
  with _patched("gradient_step", gradient_step):  # while tracing
    return jax.jit(mapped, donate_argnums=0).lower(state, batch, key).compile()


def measure(name: str, quick: bool, rounds: int, windows: int, steps_per_window: int) -> dict:
  """Every variant of `name`'s train step, compiled once and timed in `rounds` alternating rounds."""
  import jax

  from genimg_jax.parallel import mesh as mesh_lib

  overrides = run.suite_overrides(name, quick)
  built, compiled = {}, {}
  for variant in VARIANTS:
    with flat_optimizer() if variant == "flat_optimizer" else contextlib.nullcontext():
      built[variant] = run.build_ours(name, overrides)
    b = built[variant]
    if variant == "flat_all_reduce":
      compiled[variant] = flat_all_reduce_step(b.method, mesh_lib.make_mesh(), b.state, b.batch, b.keys["train"])
    else:
      compiled[variant] = b.train_step.jitted.lower(b.state, b.batch, b.keys["train"]).compile()
  states = {v: jax.block_until_ready(compiled[v](b.state, b.batch, b.keys["train"])[0]) for v, b in built.items()}
  rates = {v: [] for v in VARIANTS}
  for r in range(rounds):
    for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
      b = built[variant]
      states[variant], step_s = run.time_train_step(compiled[variant], states[variant], b.batch, b.keys["train"],
                                                     windows, steps_per_window)
      rates[variant].append(b.config.train.batch_size / step_s)
  default = statistics.median(rates["default"])
  return {"devices": jax.device_count(), "images_per_s": rates,
          "ratio": {v: statistics.median(rates[v]) / default for v in VARIANTS}}


def table(report: dict) -> str:
  """Markdown: the default's median images/s, then each variant's ratio to it, a column per config."""
  configs = list(report["configs"])
  defaults = [statistics.median(report["configs"][c]["images_per_s"]["default"]) for c in configs]
  lines = ["| variant | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs),
           "| default (img/s) | " + " | ".join(f"{d:.0f}" for d in defaults) + " |"]
  for variant in VARIANTS[1:]:
    lines.append(f"| {variant} | " + " | ".join(f"{report['configs'][c]['ratio'][variant]:.2f}" for c in configs)
                 + " |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", help=f"comma-separated (default: {','.join(LEVER_CONFIGS)})")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--steps_per_window", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="run.py's QUICK_OVERRIDES shrink each config")
  parser.add_argument("--out", default="benchmarks/results/step_levers.json")
  args = parser.parse_args()
  names = args.configs.split(",") if args.configs else LEVER_CONFIGS
  if args.quick and set(names) - set(run.QUICK_OVERRIDES):
    sys.exit(f"--quick: no QUICK_OVERRIDES for {sorted(set(names) - set(run.QUICK_OVERRIDES))}")
  report = {"loadavg_before": run._loadavg(), "rounds": args.rounds, "configs": {}}
  for name in names:
    # Each config in its own process, as run.py measures: its compiled programs and threads its own.
    job = {"config": name, "quick": args.quick, "rounds": args.rounds, "windows": args.windows,
           "steps_per_window": args.steps_per_window}
    report["configs"][name] = run._child(job, script=__file__)
    print(f"{name} done", file=sys.stderr, flush=True)
  report["loadavg_after"] = run._loadavg()
  print(table(report))
  run._write(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--child":  # run._child's protocol: the result after 'ROW '
    job = json.loads(sys.argv[2])
    print("ROW " + json.dumps(measure(job["config"], job["quick"], job["rounds"], job["windows"],
                                      job["steps_per_window"])))
  else:
    main()
