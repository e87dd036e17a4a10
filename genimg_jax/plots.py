"""`genimg plot`: the training loss and every evaluated metric of a run against the step, as PNGs."""

import glob
import json
import os

from genimg_jax.errors import CheckpointError, UserError
from genimg_jax.evaluation import suite
from genimg_jax.files import atomic_open
from genimg_jax.train.writer import metrics_path

Series = dict[str, dict[int, float]]  # name -> {step: value}


def training_series(workdir: str) -> Series:
  """Every scalar of workdir/metrics.jsonl by step; the last line of a step wins (a resumed run
  logs again the steps after its last checkpoint)."""
  path = metrics_path(workdir)
  if not os.path.isfile(path):
    raise CheckpointError(workdir, "no metrics.jsonl here: is this a `genimg train` workdir?")
  series: Series = {}
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      try:
        row = json.loads(line)
        step = int(row.pop("step"))
      except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}:{number}", f"not a metrics line ({e})") from None
      for name, value in row.items():
        if value is not None:
          series.setdefault(name, {})[step] = float(value)
  return series


def eval_series(workdir: str) -> Series:
  """The headline numbers (suite.scalars) of every workdir/eval/eval_<step>.json by step."""
  series: Series = {}
  for path in sorted(glob.glob(os.path.join(workdir, "eval", "eval_*.json"))):
    with open(path) as f:
      report = json.load(f)
    for name, value in suite.scalars(report).items():
      series.setdefault(name, {})[int(report["step"])] = value
  return series


def _figure(pyplot, path: str, curves: Series, ylabel: str, errors: Series | None = None) -> str:
  figure, axes = pyplot.subplots(figsize=(6, 4), dpi=100)
  for name, points in sorted(curves.items()):
    steps = sorted(points)
    values = [points[s] for s in steps]
    spread = [errors[name].get(s, 0.0) for s in steps] if errors and name in errors else None
    axes.errorbar(steps, values, yerr=spread, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
  axes.set_xlabel("step")
  axes.set_ylabel(ylabel)
  axes.grid(alpha=0.3)
  if len(curves) > 1:
    axes.legend()
  figure.tight_layout()
  with atomic_open(path, "wb") as f:
    figure.savefig(f, format="png")
  pyplot.close(figure)
  return path


def plot_run(workdir: str, out_dir: str | None = None) -> list[str]:
  """Writes loss.png (every logged *loss scalar) and <metric>_vs_step.png for each evaluated
  metric (kid and is with their std as error bars) into out_dir (default workdir/plots).
  Returns the paths written. Needs matplotlib (the `plot` extra)."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
  except ImportError:
    raise UserError("genimg plot", "needs matplotlib: pip install 'genimg_jax[plot]'") from None
  out_dir = out_dir or os.path.join(workdir, "plots")
  losses = {name: points for name, points in training_series(workdir).items() if name.endswith("loss")}
  paths = [_figure(pyplot, os.path.join(out_dir, "loss.png"), losses, "loss")] if losses else []
  evaluated = eval_series(workdir)
  errors = {name[:-len("_std")]: points for name, points in evaluated.items() if name.endswith("_std")}
  for name, points in sorted(evaluated.items()):
    if not name.endswith("_std"):
      paths.append(_figure(pyplot, os.path.join(out_dir, f"{name}_vs_step.png"), {name: points}, name, errors))
  return paths
