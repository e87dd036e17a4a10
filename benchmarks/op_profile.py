r"""Where a train step's time goes: our compiled step's per-op profile next to torch's profiler on the same model.

  python benchmarks/op_profile.py                                  # PROFILE_CONFIGS, one family each
  python benchmarks/op_profile.py --configs ddpm_digits,igpt_digits --steps 10
  python benchmarks/op_profile.py --quick                          # shrunk configs (run.py's QUICK_OVERRIDES)

Each side runs in a fresh process on the same synthetic batch as benchmarks/run.py (run.build_ours,
run.build_torch): two untimed steps, then --steps steps under the profiler.

- Ours: `jax.profiler.trace`; each XLA:CPU thunk's duration (trace events with an `hlo_op`) is mapped to its
  instruction in the compiled step's HLO and summed by CATEGORIES: the instruction's opcode, the opcodes of a
  fusion's computation, and the model op it came from (its metadata's op_name, where `jvp(` marks the forward
  pass, `transpose(` the backward pass, and neither the update: optimizer, clipping, EMA, the non-finite guard).
  Control-flow thunks (call, while, conditional) hold others and are not counted themselves. Milliseconds are
  per step and per device: the devices run their shares of the batch at once, one per core by default.
- Torch eager: `torch.profiler` on the CPU; each top-level op (forward ops, the autograd engine's backward
  nodes, the optimizer's step) is put in a category by its name, with its children's time.

Prints one markdown table per config (category, ours ms, torch ms, ours/torch, ops per step) and writes JSON
(--out) and the tables (--markdown).
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run  # noqa: E402  (the script's own directory is not a package root)

PROFILE_CONFIGS = ["ddpm_digits", "dit_digits", "dcgan_digits", "vae_digits", "igpt_digits"]
CATEGORIES = ("convolution", "matmul", "normalization", "attention", "elementwise", "layout", "update",
              "collective", "other")
CONTROL_FLOW = {"call", "while", "conditional"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][a-z0-9\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")
LAYOUT_OPCODES = {"copy", "transpose", "concatenate", "pad", "slice", "dynamic-slice", "dynamic-update-slice",
                  "broadcast", "reshape", "bitcast", "gather", "scatter", "reverse", "iota", "copy-start",
                  "copy-done"}
COLLECTIVE_OPCODES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
                      "all-reduce-start", "all-reduce-done", "all-gather-start", "all-gather-done"}


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
  """{instruction name: {"opcode", "computation", "calls", "op_name"}} of an HLO module's text."""
  instructions, computation = {}, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      computation = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, opcode, rest = match.groups()
    calls = re.search(r"calls=%?([\w.\-]+)", rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    instructions[name] = {"opcode": opcode, "computation": computation, "calls": calls and calls.group(1),
                          "op_name": op_name.group(1) if op_name else ""}
  return instructions


def _op_name(inst: dict, instructions: dict[str, dict]) -> str:
  """The instruction's op_name, or for a fusion without one (XNNPACK's and YNNPACK's) its computation's most
  common one."""
  if inst["op_name"] or not inst["calls"]:
    return inst["op_name"]
  inner = collections.Counter(i["op_name"] for i in instructions.values()
                              if i["computation"] == inst["calls"] and i["op_name"])
  return inner.most_common(1)[0][0] if inner else ""


def hlo_category(name: str, instructions: dict[str, dict]) -> str:
  """The CATEGORIES entry of an XLA instruction (see the module docstring); 'other' for an unknown name."""
  inst = instructions.get(name)
  if inst is None:
    return "other"
  opcodes = {inst["opcode"]}
  if inst["calls"]:
    opcodes |= {i["opcode"] for i in instructions.values() if i["computation"] == inst["calls"]}
  op_name = _op_name(inst, instructions)
  if opcodes & COLLECTIVE_OPCODES:
    return "collective"
  if "convolution" in opcodes:
    return "convolution"
  if "dot" in opcodes:
    return "matmul"
  if "/attention/" in op_name:  # the models' named scope around scores, softmax and values
    return "attention"
  if re.search(r"/(\w*Norm(_\d+)?|ln_\w+)/", op_name):  # a norm module (not jit(_normal), random draws)
    return "normalization"
  if not re.search(r"/([A-Z]|jvp\(|transpose\()", op_name):  # outside the model and its derivatives
    return "update"
  if opcodes - {"parameter", "tuple", "get-tuple-element", "constant"} <= LAYOUT_OPCODES | {"fusion"}:
    return "layout"
  return "elementwise"


def torch_category(name: str) -> str:
  """The CATEGORIES entry of a top-level torch profiler event: a forward aten op, a backward node
  ('autograd::engine::evaluate_function: XBackward0') or the optimizer's step."""
  lower = name.lower()
  if "optimizer" in lower or "foreach" in lower or "clip_grad" in lower:
    return "update"
  if "attention" in lower:
    return "attention"
  if "conv" in lower:
    return "convolution"
  if re.search(r"\b(aten::)?(mm|addmm|bmm|baddbmm|matmul|linear|einsum)\b|\b(mm|addmm|bmm|baddbmm)backward", lower):
    return "matmul"
  if "norm" in lower:
    return "normalization"
  if re.search(r"copy|contiguous|permute|transpose|clone|cat\b|catbackward|pad|view|reshape|expand|slice|select|"
               r"stack|split|unbind|chunk", lower):
    return "layout"
  return "elementwise"


def _summary(totals: dict, counts: dict, steps: int, divisor: int, wall_s: float, unprofiled_s: float) -> dict:
  per_step = {c: totals.get(c, 0.0) / steps / divisor * 1e3 for c in CATEGORIES}
  return {"ms_per_step": per_step, "ops_per_step": {c: counts.get(c, 0) / steps / divisor for c in CATEGORIES},
          "op_ms_per_step": sum(per_step.values()), "wall_ms_per_step": wall_s / steps * 1e3,
          "unprofiled_wall_ms_per_step": unprofiled_s / steps * 1e3}


def profile_ours(name: str, overrides: dict, steps: int) -> dict:
  """Our compiled train step's thunk time per category, per step and device (milliseconds)."""
  import jax

  # The persistent cache's key leaves out HLO metadata: a cached program may name the ops of older code.
  jax.config.update("jax_enable_compilation_cache", False)
  config, _, state, batch, keys, train_step = run.build_ours(name, overrides)
  compiled = train_step.jitted.lower(state, batch, keys["train"]).compile()
  instructions = hlo_instructions(compiled.as_text())
  module = compiled.runtime_executable().hlo_modules()[0].name

  def run_steps(num: int) -> float:
    nonlocal state
    start = time.perf_counter()
    for _ in range(num):
      state, metrics = compiled(state, batch, keys["train"])
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start

  run_steps(2)
  unprofiled_s = run_steps(steps)
  trace_dir = tempfile.mkdtemp()
  with jax.profiler.trace(trace_dir):
    wall_s = run_steps(steps)
  totals, counts, ops = collections.Counter(), collections.Counter(), collections.Counter()
  path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get("hlo_module") != module or "hlo_op" not in stats:
          continue
        op = stats["hlo_op"]
        if instructions.get(op, {}).get("opcode") in CONTROL_FLOW:
          continue
        category = hlo_category(op, instructions)
        totals[category] += event.duration_ns * 1e-9
        counts[category] += 1
        ops[op] += event.duration_ns * 1e-9
  top = [{"op": op, "category": hlo_category(op, instructions), "ms_per_step": s / steps / jax.device_count() * 1e3,
          "op_name": instructions.get(op, {}).get("op_name", "")} for op, s in ops.most_common(15)]
  return dict(_summary(totals, counts, steps, jax.device_count(), wall_s, unprofiled_s), devices=jax.device_count(),
              batch_size=config.train.batch_size, top_ops=top)


def _count(event) -> int:
  """A torch profiler event and all its descendants."""
  return 1 + sum(_count(child) for child in event.cpu_children)


def profile_torch(name: str, overrides: dict, steps: int) -> dict:
  """The torch reference's eager step time per category of its top-level ops, per step (milliseconds)."""
  import torch
  from torch.profiler import ProfilerActivity, profile

  config, reference, images, labels, _ = run.build_torch(name, overrides, "eager")

  def run_steps(num: int) -> float:
    start = time.perf_counter()
    for _ in range(num):
      loss = reference.train_step(images, labels)
    loss.item()  # waits for the device
    return time.perf_counter() - start

  run_steps(2)
  unprofiled_s = run_steps(steps)
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    wall_s = run_steps(steps)
  totals, counts, ops = collections.Counter(), collections.Counter(), collections.Counter()
  for event in prof.events():
    if event.cpu_parent is not None:
      continue
    category = torch_category(event.name)
    totals[category] += event.cpu_time_total * 1e-6
    counts[category] += _count(event)
    ops[event.name] += event.cpu_time_total * 1e-6
  top = [{"op": op, "category": torch_category(op), "ms_per_step": s / steps * 1e3} for op, s in ops.most_common(15)]
  return dict(_summary(totals, counts, steps, 1, wall_s, unprofiled_s), threads=torch.get_num_threads(),
              batch_size=config.train.batch_size, top_ops=top)


def table(name: str, ours: dict, torch_side: dict | None) -> str:
  """One config's markdown table: milliseconds and ops per step of each category, ours next to torch's."""
  lines = [f"### {name}", "", "| category | ours ms | torch ms | ours/torch time | ours thunks | torch ops |",
           "|---|---|---|---|---|---|"]
  rows = [(c, ours["ms_per_step"][c], torch_side and torch_side["ms_per_step"][c], ours["ops_per_step"][c],
           torch_side and torch_side["ops_per_step"][c]) for c in CATEGORIES]
  rows += [(label, ours[key], torch_side and torch_side[key], None, None) for label, key in [
      ("all ops", "op_ms_per_step"), ("step (wall, profiled)", "wall_ms_per_step"),
      ("step (wall, not profiled)", "unprofiled_wall_ms_per_step")]]
  for category, ms, torch_ms, n, torch_n in rows:
    if not ms and not torch_ms:
      continue
    ratio = f"{ms / torch_ms:.2f}" if torch_ms else "-"
    torch_cell = f"{torch_ms:.1f}" if torch_ms is not None else "-"
    lines.append(f"| {category} | {ms:.1f} | {torch_cell} | {ratio} | {'' if n is None else f'{n:.0f}'} | "
                 f"{'' if torch_n is None else f'{torch_n:.0f}'} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", help=f"comma-separated configs (default: {','.join(PROFILE_CONFIGS)})")
  parser.add_argument("--steps", type=int, default=5, help="profiled steps after two untimed ones")
  parser.add_argument("--torch", default="eager", choices=["eager", ""], help="'' for ours alone")
  parser.add_argument("--quick", action="store_true", help="run.py's QUICK_OVERRIDES shrink each config")
  parser.add_argument("--out", default="benchmarks/results/op_profile.json")
  parser.add_argument("--markdown", help="also write the printed tables to this file")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    job = json.loads(args.child)
    side = profile_ours if job["kind"] == "ours" else profile_torch
    print("ROW " + json.dumps(side(job["config"], job["overrides"], job["steps"])))
    return

  names = args.configs.split(",") if args.configs else PROFILE_CONFIGS
  unknown = [n for n in names if n not in run.CONFIG_VARIANTS and not os.path.exists(
      os.path.join(run.REPO, "configs", f"{n}.py"))]
  if unknown:
    sys.exit(f"--configs: no config {unknown} in configs/ or run.py's CONFIG_VARIANTS")
  if args.quick and set(names) - set(run.QUICK_OVERRIDES):
    sys.exit(f"--quick: no QUICK_OVERRIDES for {sorted(set(names) - set(run.QUICK_OVERRIDES))}")
  if args.torch and not run._torch_available():
    sys.exit("--torch eager needs torch (pip install -e '.[bench]'); --torch '' profiles ours alone")
  report = {"steps": args.steps, "loadavg_before": run._loadavg(), "configs": {}}
  tables = []
  for name in names:
    overrides = run.suite_overrides(name, args.quick)
    job = {"config": name, "overrides": overrides, "steps": args.steps}
    entry = {"ours": run._child(dict(job, kind="ours"), script=__file__)}
    if args.torch:
      entry["torch_eager"] = run._child(dict(job, kind="torch"), script=__file__)
    report["configs"][name] = entry
    tables.append(table(name, entry["ours"], entry.get("torch_eager")))
    print(tables[-1] + "\n", flush=True)
  report["loadavg_after"] = run._loadavg()
  run._write(args.out, json.dumps(report, indent=1))
  if args.markdown:
    run._write(args.markdown, "\n\n".join(tables) + "\n")


if __name__ == "__main__":
  main()
