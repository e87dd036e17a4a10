r"""Each XLA:CPU lever on our train step, next to the defaults, side by side in one run.

  python benchmarks/cpu_levers.py                                        # every lever on LEVER_CONFIGS
  python benchmarks/cpu_levers.py --levers onednn,no_xnnpack --configs ddpm_digits --rounds 2
  python benchmarks/cpu_levers.py --quick --levers onednn --configs vae_digits   # a smoke run

A lever is an XLA flag of the installed jaxlib (added to the environment's XLA_FLAGS, read when the CPU backend
starts) or a config override. Each measurement is benchmarks/run.py's (run.measure_ours: the train step on a
synthetic batch, median of timed windows) in a fresh process. Per config and round the defaults are measured
first and last, the levers in between, the levers' order reversed every other round; a lever's ratio is its
images/s over the mean of the two default measurements around it. A lever the compiler rejects is reported as
failed, with the reason, and the run goes on. Prints markdown and writes JSON (--out).
"""

import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run  # noqa: E402  (the script's own directory is not a package root)

LEVER_CONFIGS = ["ddpm_digits", "dit_digits", "vae_digits", "igpt_digits"]
# name: (XLA flags, config overrides, what it does)
LEVERS = {
    "onednn": ("--xla_cpu_use_onednn=true", {}, "oneDNN thunks for matmul and convolution fusions"),
    "onednn_custom_call": ("--xla_cpu_experimental_onednn_custom_call=true", {}, "oneDNN custom calls"),
    "no_xnnpack": ("--xla_cpu_use_xnnpack=false", {}, "XNNPACK off (on by default)"),
    "xnn_fusions": ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce", {},
                    "XNNPACK fusions of dots, elementwise ops and reductions"),
    "xnn_graph_greedy": ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", {},
                         "greedy XNNPACK subgraphs"),
    "ynn_fusions": ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce", {}, "YNNPACK fusions"),
    "vector_width_512": ("--xla_cpu_prefer_vector_width=512", {}, "AVX-512 vectors in generated code"),
    "eigen_one_thread": ("--xla_cpu_multi_thread_eigen=false", {}, "Eigen's convolutions and matmuls on one thread"),
    "concurrency_scheduler": ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED", {},
                              "the scheduler that orders independent thunks for concurrency"),
    "no_all_reduce_combiner": ("--xla_disable_hlo_passes=all-reduce-combiner", {},
                               "one all-reduce per gradient, each as soon as it is computed, not one combined"),
    "legacy_fusion_emitters": ("--xla_cpu_use_fusion_emitters=false", {},
                               "elementwise and reduction fusions through the older LLVM IR emitters"),
    "fast_runtime_preset": ("--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME", {},
                            "the optimisation preset for run time over compile time"),
    "tiling_propagation": ("--xla_cpu_experimental_enable_tiling_propagation=true", {}, "tiling propagation"),
    "copy_region_analysis": ("--xla_cpu_copy_insertion_use_region_analysis=true", {},
                             "region analysis in copy insertion (fewer copies)"),
    "onednn_fusions": ("--xla_cpu_experimental_onednn_fusion_type=dot,eltwise", {},
                       "oneDNN fusions of dots with their elementwise consumers"),
    "fast_math": ("--xla_cpu_enable_fast_math=true", {}, "fast math (changes results: measured, never a default)"),
    "one_device": ("", {"mesh.cpu_devices": 1}, "one CPU device for both cores (default: one per core)"),
    "fsdp": ("", {"mesh.fsdp": 2}, "the state sharded over the 2 devices: each updates half the parameters, "
             "gradients reduce-scattered and parameters all-gathered (default: replicated, every device updates all)"),
}


def measure(name: str, lever: str | None, quick: bool, windows: int, steps_per_window: int) -> dict:
  """One measurement of our train step in a fresh process: its row, or {"failed": reason}."""
  flags, overrides = ("", {}) if lever is None else LEVERS[lever][:2]
  overrides = dict(run.suite_overrides(name, quick), **overrides)
  job = {"kind": "ours", "config": name, "overrides": overrides, "windows": windows,
         "steps_per_window": steps_per_window, "samplers": [], "sample_num": 1}
  try:
    # After the environment's own XLA_FLAGS (a device count, say), which the defaults are measured with too.
    return run._child(job, env_overrides={"XLA_FLAGS": " ".join(filter(None, [os.environ.get("XLA_FLAGS"), flags]))})
  except run.MeasurementFailed as e:  # XLA names a flag it rejects on one line of its log
    lines = [line for line in str(e).splitlines() if line.strip()]
    reason = next((line for line in lines if re.search(r"(?i)unknown flag|illegal value|error", line)), lines[-1])
    return {"failed": reason.strip()[:300]}


def summarise(measurements: list[dict], levers: list[str]) -> dict:
  """Per lever: every round's ratio to the mean of that round's two default measurements, and their median."""
  out = {}
  for lever in levers:
    ratios, rates, failed = [], [], None
    for m in measurements:
      row = m["levers"][lever]
      if "failed" in row:
        failed = row["failed"]
        continue
      default = statistics.mean(r["train_images_per_s"] for r in m["defaults"])
      ratios.append(row["train_images_per_s"] / default)
      rates.append(row["train_images_per_s"])
    out[lever] = ({"failed": failed} if not ratios else
                  {"images_per_s": statistics.median(rates), "ratio": statistics.median(ratios), "rounds": ratios})
  return out


def table(report: dict) -> str:
  """Markdown: one row per lever, a column per config (ratio to the defaults, every round's in brackets)."""
  configs = list(report["configs"])
  defaults = [statistics.median(r["train_images_per_s"] for m in report["configs"][c]["rounds"] for r in m["defaults"])
              for c in configs]
  lines = ["| lever | XLA flag or override | " + " | ".join(configs) + " |",
           "|---|---|" + "---|" * len(configs),
           "| defaults (img/s) | - | " + " | ".join(f"{d:.0f}" for d in defaults) + " |"]
  for lever in report["levers"]:
    flags, overrides, _ = LEVERS[lever]
    cells = []
    for c in configs:
      s = report["configs"][c]["summary"][lever]
      cells.append("failed" if "failed" in s else
                   f"{s['ratio']:.2f}" + (f" ({', '.join(f'{r:.2f}' for r in s['rounds'])})"
                                          if len(s["rounds"]) > 1 else ""))
    what = f"`{flags}`" if flags else ", ".join(f"`{k}={v}`" for k, v in overrides.items())
    lines.append(f"| {lever} | {what} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--levers", help=f"comma-separated (default: all of {','.join(LEVERS)})")
  parser.add_argument("--configs", help=f"comma-separated (default: {','.join(LEVER_CONFIGS)})")
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--steps_per_window", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="run.py's QUICK_OVERRIDES shrink each config")
  parser.add_argument("--out", default="benchmarks/results/cpu_levers.json")
  args = parser.parse_args()
  levers = args.levers.split(",") if args.levers else list(LEVERS)
  names = args.configs.split(",") if args.configs else LEVER_CONFIGS
  if set(levers) - set(LEVERS):
    sys.exit(f"--levers: unknown {sorted(set(levers) - set(LEVERS))}; known: {list(LEVERS)}")
  if args.quick and set(names) - set(run.QUICK_OVERRIDES):
    sys.exit(f"--quick: no QUICK_OVERRIDES for {sorted(set(names) - set(run.QUICK_OVERRIDES))}")
  report = {"loadavg_before": run._loadavg(), "levers": levers, "rounds": args.rounds, "configs": {},
            "what": {lever: LEVERS[lever][2] for lever in levers}}
  for name in names:
    rounds = []
    for r in range(args.rounds):
      order = levers if r % 2 == 0 else levers[::-1]
      first = measure(name, None, args.quick, args.windows, args.steps_per_window)
      done = {lever: measure(name, lever, args.quick, args.windows, args.steps_per_window) for lever in order}
      last = measure(name, None, args.quick, args.windows, args.steps_per_window)
      for default in (first, last):
        if "failed" in default:
          sys.exit(f"{name}: the default measurement failed: {default['failed']}")
      rounds.append({"defaults": [first, last], "levers": done})
    report["configs"][name] = {"rounds": rounds, "summary": summarise(rounds, levers)}
    print(f"{name} done", file=sys.stderr, flush=True)
  report["loadavg_after"] = run._loadavg()
  print(table(report))
  run._write(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
