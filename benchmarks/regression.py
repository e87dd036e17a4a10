r"""The train step of today's code next to a recorded reference commit, side by side in one run.

  python benchmarks/regression.py                                   # REFERENCE, the default configs, 3 rounds
  python benchmarks/regression.py --reference 7495a11 --configs ddpm_digits --rounds 5
  python benchmarks/regression.py --reference HEAD --configs vae_digits --rounds 1 --quick   # a smoke test

The reference is checked out with `git worktree` into a temporary folder. Each round runs that tree's own
`benchmarks/run.py --configs ... --torch '' --samplers ''` (the train step on synthetic batches, each config
in a fresh process; the same flags and JSON rows in both trees), once in the reference tree and once in
this one, the order alternating between rounds so a drift of the machine's speed falls on both. The table
gives each tree's median images/s over the rounds, the ratio today/reference of the medians, every round's
ratio, and peak memory. Writes JSON (--out) and prints markdown.

REFERENCE is 7495a11 (2026-11-23), the last commit before the command line, the structure and the diffusion
package work: the code the ddpm_digits step was once measured faster on (1.37 against 1.20 steps/s, one
run each). The digits configs' models and optimizers are the same in both trees (only their sampling and
docstrings changed since), so the rows compare the same step.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = "7495a11"
DEFAULT_CONFIGS = ("ddpm_digits", "vae_digits", "dcgan_digits", "igpt_digits")


def _git(*args: str, cwd: str = REPO) -> str:
  result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f"git {' '.join(args)} failed: {result.stderr.strip()}")
  return result.stdout.strip()


def _loadavg() -> list[str] | None:
  return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None


def run_suite(tree: str, configs: list[str], out: str, passthrough: list[str]) -> dict[str, dict]:
  """`benchmarks/run.py` of `tree` (its own package first on the path): {config: its row}."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  command = [sys.executable, os.path.join("benchmarks", "run.py"), "--configs", ",".join(configs), "--torch", "",
             "--samplers", "", "--out", out, *passthrough]
  result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f"{' '.join(command)} (in {tree}) failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
  with open(out) as f:
    return {row["config"]: row for row in json.load(f)["rows"]}


def summarise(rounds: list[dict[str, dict[str, dict]]], configs: list[str]) -> list[dict]:
  """Per config: each tree's median images/s and peak memory over the rounds, their ratio, every round's."""
  rows = []
  for config in configs:
    speed = {tree: [r[tree][config]["train_images_per_s"] for r in rounds] for tree in ("today", "reference")}
    memory = {tree: max(r[tree][config].get("peak_memory_MiB") or 0.0 for r in rounds) for tree in speed}
    median = {tree: statistics.median(values) for tree, values in speed.items()}
    rows.append({"config": config, "today_images_per_s": median["today"],
                 "reference_images_per_s": median["reference"], "ratio": median["today"] / median["reference"],
                 "round_ratios": [t / r for t, r in zip(speed["today"], speed["reference"])],
                 "today_peak_memory_MiB": memory["today"], "reference_peak_memory_MiB": memory["reference"],
                 "today_all": speed["today"], "reference_all": speed["reference"]})
  return rows


def table(report: dict) -> str:
  lines = [f"today {report['today']['commit'][:10]}{' (uncommitted changes)' if report['today']['dirty'] else ''} "
           f"vs reference {report['reference'][:10]}; {report['rounds']} rounds; load average "
           f"{report['loadavg_before']} before, {report['loadavg_after']} after.", "",
           "| config | today img/s | reference img/s | today/reference | each round | today peak MiB | "
           "reference peak MiB |", "|---|---|---|---|---|---|---|"]
  for r in report["rows"]:
    rounds = ", ".join(f"{x:.2f}" for x in r["round_ratios"])
    lines.append(f"| {r['config']} | {r['today_images_per_s']:.0f} | {r['reference_images_per_s']:.0f} | "
                 f"{r['ratio']:.2f} | {rounds} | {r['today_peak_memory_MiB']:.0f} | "
                 f"{r['reference_peak_memory_MiB']:.0f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", default=REFERENCE, help=f"the commit to compare with (default {REFERENCE})")
  parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated configs of both trees")
  parser.add_argument("--rounds", type=int, default=3, help="runs of each tree, alternating")
  parser.add_argument("--quick", action="store_true", help="run.py --quick in both trees (a smoke test)")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "regression.json"))
  args = parser.parse_args()
  if args.rounds < 1:
    parser.error("--rounds: must be >= 1")
  configs = [c for c in args.configs.split(",") if c]
  commit = _git("rev-parse", "--verify", f"{args.reference}^{{commit}}")
  passthrough = ["--quick"] if args.quick else []

  scratch = tempfile.mkdtemp(prefix="genimg_regression_")
  reference_tree = os.path.join(scratch, "reference")
  _git("worktree", "add", "--detach", reference_tree, commit)
  loadavg_before = _loadavg()
  try:
    rounds = []
    for i in range(args.rounds):
      order = ("reference", "today") if i % 2 == 0 else ("today", "reference")
      measured = {}
      for tree in order:
        print(f"round {i + 1}/{args.rounds}: {tree}", file=sys.stderr)
        measured[tree] = run_suite(reference_tree if tree == "reference" else REPO, configs,
                                   os.path.join(scratch, f"{tree}-{i}.json"), passthrough)
      rounds.append(measured)
  finally:
    _git("worktree", "remove", "--force", reference_tree)
    shutil.rmtree(scratch, ignore_errors=True)

  report = {"reference": commit, "today": {"commit": _git("rev-parse", "HEAD"),
                                           "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))},
            "configs": configs, "rounds": args.rounds, "quick": args.quick, "loadavg_before": loadavg_before,
            "loadavg_after": _loadavg(), "rows": summarise(rounds, configs)}
  markdown = table(report)
  print(markdown)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
