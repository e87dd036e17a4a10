"""The docs run as written: every command in README.md, docs/*.md and benchmarks/README.md, checked against the
code without running it.

- Every `genimg ...` command, in a shell code block or in inline code (with `\\` continuations, `&&`/`;`/`|`
  chains, a leading `$` and `VAR=value` assignments), and the `genimg train` arguments given to a launch/
  script, is parsed by the CLI's own argument parser, as `genimg` would parse it. Inline code that names a
  command without flags (`genimg sample`) must name a real command.
- Its `--config.X=value` / `--config.X value` overrides are applied to the config file named by `--config`
  with the CLI's own loader: the file must exist, X must be a field of it and the value must parse as the
  field's type.
- `genimg sample` and `genimg eval` on `--workdir .../<name>` are checked against configs/<name>.py when it
  exists: their sampler flags must be fields of it, a diffusion sampler must be one of its process's, and
  `--metrics` must name known metrics.
- Inline `--config.X=...` and `section.field` fragments in prose must name a field of at least one config.
- `python benchmarks/run.py` commands must name configs and sampler variants the suite knows.
- Every relative link (and its #anchor) resolves, and every path in inline code under genimg_jax/, configs/,
  launch/, tests/, benchmarks/ or docs/ (or a genimg_jax package such as diffusion/) exists; `path: name`
  must name something the file defines.

Nothing is compiled or trained. Nothing is skipped: a placeholder such as `...` in a command fails, so the
docs write commands whole (or name the command alone).
"""

import argparse
import contextlib
import functools
import importlib.util
import io
import os
import pathlib
import re
import shlex

import pytest

from genimg_jax import cli
from genimg_jax import config as config_lib
from genimg_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
GUIDES = ("cli", "data", "diffusion", "gan", "vae", "autoregressive", "evaluation", "scaling", "reliability",
          "design")
README_MAX_LINES = 250

SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^([ \t]*)```([\w+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)`(?!`)((?:[^`\n]|\n(?![ \t]*\n))+?)`(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {">", ">>", "<", ">&", "<&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# launch/ scripts whose arguments are `genimg train`'s, and how many of their own come first.
LAUNCHERS = {"launch/local.sh": 1, "launch/slurm.sbatch": 0, "launch/tpu_pod.sh": 0}
# Inline code that may be a command worth checking.
COMMAND_LIKE = re.compile(r"(^|[\s$=])(genimg(\s|$)|python3? (-m genimg_jax\.cli|benchmarks/)|launch/)")
# Paths in inline code: first component, and where it is looked up (besides the document's own folder).
PATH_ROOTS = {"genimg_jax": REPO, "configs": REPO, "launch": REPO, "tests": REPO, "benchmarks": REPO, "docs": REPO}
PACKAGE_ROOTS = ("diffusion", "methods", "losses", "models", "data", "train", "parallel", "evaluation")
PATH_SPAN = re.compile(r"^([\w.-]+(?:/[\w.{},-]*)+)(?::\s*(\w+))?$")
FILE_NAME = re.compile(r"\.(py|md|json|jsonl|png|npz|sh|sbatch|txt|pth)$")
FIELD_SPAN = re.compile(r"^(?:--config\.)?([a-z_][a-z0-9_]*)\.([a-z0-9_.]+)(?:[= ].*)?$", re.S)


# ---- Extraction. ------------------------------------------------------------------------------

def strip_comment(line: str) -> str:
  """`line` without a shell comment: a `#` that starts a word outside quotes, to the end."""
  quote = None
  for i, char in enumerate(line):
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char == "#" and (i == 0 or line[i - 1].isspace()):
      return line[:i]
  return line


def simple_commands(line: str) -> list[list[str]]:
  """The words of each simple command on one shell line (comments, redirections, `$` prompts removed)."""
  lexer = shlex.shlex(strip_comment(line), posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  lexer.commenters = ""
  commands, words, skip = [], [], False
  for token in lexer:
    if skip:
      skip = False
    elif token in SEPARATORS:
      commands.append(words)
      words = []
    elif token in REDIRECTIONS:
      skip = True
    else:
      words.append(token)
  commands.append(words)
  result = []
  for words in commands:
    while words and (words[0] == "$" or ASSIGNMENT.match(words[0])):
      words = words[1:]
    if words:
      result.append(words)
  return result


def shell_lines(body: str) -> list[tuple[int, str]]:
  """(line offset, logical line) of a shell block, `\\` continuations joined."""
  lines, current, start = [], "", 0
  for offset, raw in enumerate(body.split("\n")):
    if not current:
      start = offset
    if raw.rstrip().endswith("\\"):
      current += raw.rstrip()[:-1] + " "
      continue
    lines.append((start, current + raw))
    current = ""
  if current:
    lines.append((start, current))
  return lines


def snippets(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
  """([(line, shell line)] of the shell code blocks, [(line, span)] of the inline code outside blocks)."""
  shell, blanked = [], text
  for match in FENCE.finditer(text):
    first = text.count("\n", 0, match.start(3)) + 1
    if match.group(2) in SHELL_LANGUAGES:
      shell += [(first + offset, line) for offset, line in shell_lines(match.group(3))]
    block = match.group(0)
    blanked = blanked.replace(block, "\n" * block.count("\n"), 1)
  inline = [(blanked.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " ")) for m in INLINE.finditer(blanked)]
  return shell, inline


# ---- What the code accepts. -------------------------------------------------------------------

@functools.cache


@functools.cache
def all_configs() -> dict[str, object]:
  return {path.stem: config_lib.load_file(str(path)) for path in sorted((REPO / "configs").glob("*.py"))}


def has_field(config, dotted: str) -> bool:
  node = config
  for key in dotted.split("."):
    if not hasattr(node, "keys") or key not in node:
      return False
    node = node[key]
  return True


@functools.cache
def sections() -> frozenset:
  return frozenset(k for c in all_configs().values() for k, v in c.items() if hasattr(v, "keys"))


def diffusion_samplers(config) -> set[str]:
  """The sampler names of a diffusion config's process, from the process it builds (no network is run)."""
  from genimg_jax.diffusion.process import PROCESSES

  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  return set(PROCESSES.resolve(config.diffusion.process)(config, None, image_shape).samplers)


def parse(argv: list[str]) -> tuple[argparse.Namespace | None, list[str], str]:
  """(args, the arguments left for the config loader, error) as `cli.main` parses `argv`."""
  stderr = io.StringIO()
  try:
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
      args, rest = cli.parser().parse_known_args(argv)
  except SystemExit as e:
    if e.code == 0:  # --help
      return None, [], ""
    return None, [], stderr.getvalue().strip().splitlines()[-1]
  if args.command not in ("train", "data", "config") and rest:
    return None, [], f"unrecognized arguments: {' '.join(rest)}"
  return args, rest, ""


def check_mention(words: list[str]) -> str:
  """'' if `genimg w1 w2 ...` (no flags) names a command or command group of the CLI, else the problem."""
  current = cli.parser()
  for word in words:
    subparsers = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers or word not in subparsers[0].choices:
      return f"no command {word!r} in 'genimg {' '.join(words)}'"
    current = subparsers[0].choices[word]
  return ""


def check_genimg(argv: list[str]) -> list[str]:
  """The problems of one `genimg` command line (its words after `genimg`)."""
  if not argv:  # the program's name
    return []
  if not any(word.startswith("-") for word in argv):
    problem = check_mention(argv)
    return [problem] if problem else []
  args, rest, error = parse(argv)
  if error:
    return [error]
  if args is None:
    return []
  problems = []
  if getattr(args, "config", None):
    path = REPO / args.config
    try:
      config_lib.load(str(path), rest)
    except UserError as e:
      problems.append(str(e))
  if args.command in ("sample", "eval") and args.workdir:
    problems += check_on_workdir(args)
  if args.command == "eval" and args.metrics:
    from genimg_jax.evaluation import suite

    problems += [f"--metrics: unknown metric {m!r}" for m in args.metrics.split(",") if m not in suite.METRICS]
  return problems


def check_on_workdir(args: argparse.Namespace) -> list[str]:
  """The sampler flags of `genimg sample/eval --workdir .../<name>` against configs/<name>.py, if there is one."""
  config = all_configs().get(os.path.basename(args.workdir.rstrip("/")))
  if config is None:
    return []
  config = config_lib.from_json(config_lib.to_json(config))  # a copy
  problems = []
  for flag in cli.SAMPLER_FLAGS:
    value = getattr(args, flag, None)
    if value is not None:
      try:
        config_lib.apply_override(config, f"sample.{flag}", str(value))
      except UserError as e:
        problems.append(f"--{flag}: {e}")
  if problems or config.get("method") != "diffusion" or ":" in config.sample.sampler:
    return problems
  try:
    names = diffusion_samplers(config)
  except UserError as e:
    return [str(e)]
  if config.sample.sampler not in names:
    problems.append(f"--sampler {config.sample.sampler}: not a sampler of process {config.diffusion.process!r} "
                    f"({', '.join(sorted(names))})")
  return problems


@functools.cache
def benchmark_suite():
  spec = importlib.util.spec_from_file_location("_benchmarks_run", REPO / "benchmarks" / "run.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def flag_value(words: list[str], flag: str) -> str | None:
  for i, word in enumerate(words):
    if word == flag and i + 1 < len(words):
      return words[i + 1]
    if word.startswith(flag + "="):
      return word[len(flag) + 1:]
  return None


def check_benchmark(words: list[str]) -> list[str]:
  """`python benchmarks/run.py ...`: its --configs and --samplers name what the suite knows."""
  suite, problems = benchmark_suite(), []
  for name in filter(None, (flag_value(words, "--configs") or "").split(",")):
    if name not in suite.CONFIG_VARIANTS and not (REPO / "configs" / f"{name}.py").exists():
      problems.append(f"--configs: no config {name!r}")
  for name in filter(None, (flag_value(words, "--samplers") or "").split(",")):
    if name not in suite.SAMPLE_VARIANTS:
      problems.append(f"--samplers: no variant {name!r}")
  return problems


def check_command(words: list[str]) -> list[str]:
  """The problems of one simple command, if it is one this test knows; [] otherwise."""
  if words[0] == "genimg":
    return check_genimg(words[1:])
  if words[0] in ("python", "python3") and words[1:3] == ["-m", "genimg_jax.cli"]:
    return check_genimg(words[3:])
  for i, word in enumerate(words):
    if word in LAUNCHERS:
      return check_genimg(["train"] + words[i + 1 + LAUNCHERS[word]:])
  if words[0] in ("python", "python3") and words[1:2] == ["benchmarks/run.py"]:
    return check_benchmark(words)
  return []


def check_fragment(span: str) -> list[str]:
  """Inline `--config.X=...` or `section.field`: X must be a field of at least one config."""
  match = FIELD_SPAN.match(span)
  if not match or FILE_NAME.search(span) or (not span.startswith("--config.") and match.group(1) not in sections()):
    return []
  field = f"{match.group(1)}.{match.group(2)}"
  if any(has_field(c, field) for c in all_configs().values()):
    return []
  return [f"no config has the field {field!r}"]


# ---- Links and paths. -------------------------------------------------------------------------

def slug(heading: str) -> str:
  """GitHub's anchor of a heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  text = FENCE.sub("", path.read_text())
  return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def check_link(target: str, document: pathlib.Path) -> list[str]:
  if re.match(r"^[a-z]+:", target):
    return []
  file, _, anchor = target.partition("#")
  path = (document.parent / file).resolve() if file else document
  if not path.exists():
    return [f"link {target}: no such file"]
  if anchor and path.suffix == ".md" and anchor not in anchors(path):
    return [f"link {target}: no heading #{anchor} in {path.relative_to(REPO)}"]
  return []


def check_path(span: str, document: pathlib.Path) -> list[str]:
  """A path in inline code under a known root must exist (and `path: name` must define name)."""
  match = PATH_SPAN.match(span.strip())
  if not match:
    return []
  path, name = match.groups()
  first = path.split("/")[0]
  if first in PATH_ROOTS:
    bases = [REPO]
  elif first in PACKAGE_ROOTS:
    bases = [REPO / "genimg_jax"]
  elif (document.parent / first).exists() and document.parent != REPO:
    bases = [document.parent]
  else:
    return []
  stems = re.match(r"^(.*)\{([^}]*)\}(.*)$", path)
  candidates = [stems.group(1) + ext + stems.group(3) for ext in stems.group(2).split(",")] if stems else [path]
  problems = []
  for candidate in candidates:
    found = [base / candidate for base in bases if (base / candidate).exists()]
    if not found:
      problems.append(f"no such path {candidate!r}")
    elif name and found[0].is_file():
      defined = re.search(rf"^(def|class)\s+{name}\b|^{name}\s*[:=]", found[0].read_text(), re.M)
      if not defined:
        problems.append(f"{candidate} defines no {name!r}")
  return problems


# ---- The check of one document. ---------------------------------------------------------------

def problems_in(text: str, document: pathlib.Path) -> list[str]:
  """Every problem of a Markdown document, as 'line N: `snippet`: problem'."""
  shell, inline = snippets(text)
  problems = []

  def note(line, snippet, found):
    problems.extend(f"{document.name}:{line}: `{snippet}`: {p}" for p in found)

  def note_commands(line, code, shown):
    """The problems of every command in `code`; shown(words) is the snippet a problem names."""
    try:
      commands = simple_commands(code)
    except ValueError as e:
      note(line, code, [f"not a shell line ({e})"])
      return
    for words in commands:
      note(line, shown(words), check_command(words))

  for line, code in shell:
    note_commands(line, code, " ".join)
  for line, span in inline:
    if COMMAND_LIKE.search(span):
      note_commands(line, span, lambda words, span=span: span)
    else:
      note(line, span, check_fragment(span) + check_path(span, document))
  for match in LINK.finditer(FENCE.sub("", text)):
    note("-", match.group(1), check_link(match.group(1), document))
  return problems


def commands_in(text: str) -> list[list[str]]:
  """Every simple command of the document that check_command checks."""
  shell, inline = snippets(text)
  lines = [code for _, code in shell] + [span for _, span in inline if COMMAND_LIKE.search(span)]
  return [words for code in lines for words in simple_commands(code)
          if words[0] in ("genimg", "python", "python3") or any(w in LAUNCHERS for w in words)]


# ---- Tests. -----------------------------------------------------------------------------------

@pytest.mark.parametrize("document", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_path_and_link_of_the_docs_is_real(document):
  problems = problems_in(document.read_text(), document)
  assert not problems, "\n".join(problems)


def test_the_docs_are_all_there():
  """The guides exist, the README links each, stays a page, and lists every config."""
  readme = (REPO / "README.md").read_text()
  assert len(readme.splitlines()) <= README_MAX_LINES
  for guide in GUIDES:
    assert (REPO / "docs" / f"{guide}.md").exists(), guide
    assert f"docs/{guide}.md" in readme, f"README does not link docs/{guide}.md"
  assert "benchmarks/README.md" in readme
  for config in sorted((REPO / "configs").glob("*.py")):
    assert f"configs/{config.name}" in readme, f"README's table of families does not list configs/{config.name}"


def test_the_docs_hold_enough_commands_to_check():
  """Guards the extraction itself: the docs show every command, many times."""
  commands = [words for doc in DOCS for words in commands_in(doc.read_text())]
  genimg = [words[1] for words in commands if words[0] == "genimg" and len(words) > 1]
  assert len(genimg) >= 50, len(genimg)
  assert {"train", "sample", "eval", "data", "config", "plot"} <= set(genimg)


# ---- The checks fail when they should. --------------------------------------------------------

def test_extraction_joins_continuations_and_splits_chains():
  text = ("Run `genimg sample --workdir runs/a --out g.png` or:\n\n"
          "```bash\n"
          "$ XLA_FLAGS=--xla_force_host_platform_device_count=8 genimg train --config configs/ddpm_digits.py \\\n"
          "    --workdir w   # a comment, with a quote's mark\n"
          ". .venv/bin/activate && genimg config show --config configs/vae_digits.py > out.txt\n"
          "```\n")
  assert commands_in(text) == [
      ["genimg", "train", "--config", "configs/ddpm_digits.py", "--workdir", "w"],
      ["genimg", "config", "show", "--config", "configs/vae_digits.py"],
      ["genimg", "sample", "--workdir", "runs/a", "--out", "g.png"]]
  assert not problems_in(text, REPO / "docs" / "x.md")


@pytest.mark.parametrize("command, expected", [
    ("genimg train --config configs/ddpm_digits.py --workdir w --config.train.stepz=1", "train.stepz"),
    ("genimg train --config configs/ddpm_digits.py --workdir w --config.train.steps many", "cannot parse"),
    ("genimg train --config configs/no_such.py --workdir w", "no such config file"),
    ("genimg sample --workdir runs/ddpm_digits --out g.png --no_such_flag", "unrecognized arguments"),
    ("genimg sample --workdir runs/ddpm_digits --out g.png --config.sample.steps=5", "unrecognized arguments"),
    ("genimg sample --workdir runs/ddpm_digits", "required"),
    ("genimg trian --config configs/ddpm_digits.py --workdir w", "invalid choice"),
    ("genimg sample --workdir runs/flow_digits --out g.png --sampler ddim", "not a sampler of process 'flow'"),
    ("genimg sample --workdir runs/vae_digits --out g.png --sampler ddim", "sample.sampler"),
    ("genimg eval --workdir runs/ddpm_digits --metrics fid,fidd", "fidd"),
    ("launch/local.sh 2 --config configs/ddpm_digits.py --workdir w --config.mesh.fsdpp=2", "mesh.fsdpp"),
    ("python benchmarks/run.py --configs ddpm_digitz --samplers ddim-50", "ddpm_digitz"),
    ("genimg sample --workdir runs/ddpm_digits --out g.png ...", "unrecognized arguments: ..."),
])
def test_a_wrong_command_is_caught(command, expected):
  problems = problems_in(f"```bash\n{command}\n```\n", REPO / "docs" / "x.md")
  assert problems and expected in problems[0], problems


@pytest.mark.parametrize("text, expected", [
    ("Name the command: `genimg sampel`.", "no command 'sampel'"),
    ("Override `--config.sample.stepz=5`.", "sample.stepz"),
    ("The field `diffusion.predictoin`.", "diffusion.predictoin"),
    ("See [the guide](nope.md).", "no such file"),
    ("See [the guide](diffusion.md#no-such-heading).", "no heading"),
    ("In `diffusion/no_such.py`.", "no such path"),
    ("In `methods/diffusion.py: NO_SUCH_REGISTRY`.", "defines no"),
])
def test_a_wrong_mention_is_caught(text, expected):
  problems = problems_in(text, REPO / "docs" / "x.md")
  assert problems and expected in problems[0], problems
