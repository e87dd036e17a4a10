"""Every genimg_jax module imports only its own layer and the layers ALLOWED lists for it, function-level imports too.

The table: every layer imports base; models, losses and data import nothing more; diffusion (noise processes,
their objectives, samplers, guidance, likelihoods) imports models and losses; methods imports models, losses and
diffusion; parallel imports data and methods; train imports data, methods and parallel; evaluation, beside train
(neither imports the other), imports data, methods, models and parallel; the commands (cli, api, plots) import
any layer.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "genimg_jax"
BASE = {"errors", "files", "registry", "seeds", "images", "config"}
# Layer -> the layers its modules may import (besides their own).
ALLOWED = {
    "base": {"base"},
    "models": {"base"},
    "losses": {"base"},
    "diffusion": {"base", "models", "losses"},
    "methods": {"base", "models", "losses", "diffusion"},
    "data": {"base"},
    "parallel": {"base", "data", "methods"},
    "train": {"base", "data", "methods", "parallel"},
    "evaluation": {"base", "data", "methods", "models", "parallel"},
    "commands": {"base", "data", "methods", "models", "losses", "diffusion", "parallel", "train", "evaluation"},
}
COMMANDS = {"cli", "api", "plots"}


def layer_of(dotted: str) -> str:
  """genimg_jax.<first>[...] -> its layer."""
  first = dotted.split(".")[1] if "." in dotted else ""
  if first in BASE:
    return "base"
  if first in COMMANDS:
    return "commands"
  assert first in ALLOWED, f"{dotted}: a module of no layer; add it to tests/test_import_layers.py"
  return first


def imported_modules(path: pathlib.Path) -> set[str]:
  """Every genimg_jax module `path` imports, as dotted names (`from genimg_jax import x` -> genimg_jax.x)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names if alias.name.startswith("genimg_jax.")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "genimg_jax":
      if node.module == "genimg_jax":
        names |= {f"genimg_jax.{alias.name}" for alias in node.names}
      else:
        names.add(node.module)
  return names


def test_every_module_imports_only_the_layers_below_it():
  modules = sorted(PACKAGE.rglob("*.py"))
  assert len(modules) > 40
  wrong = []
  for path in modules:
    dotted = ".".join(("genimg_jax",) + path.relative_to(PACKAGE).with_suffix("").parts)
    own = layer_of(dotted) if dotted != "genimg_jax.__init__" else "base"
    for name in imported_modules(path):
      other = layer_of(name)
      if other != own and other not in ALLOWED[own]:
        wrong.append(f"{path.relative_to(PACKAGE.parent)} ({own}) imports {name} ({other})")
  assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_violation(tmp_path):
  """The parser finds imports at any depth and names both layers."""
  module = tmp_path / "m.py"
  module.write_text("def f():\n  from genimg_jax.evaluation import suite\n  import genimg_jax.train.trainer\n")
  assert imported_modules(module) == {"genimg_jax.evaluation", "genimg_jax.train.trainer"}
  assert layer_of("genimg_jax.evaluation") == "evaluation" and "evaluation" not in ALLOWED["train"]
