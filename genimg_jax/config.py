"""Config files, command-line overrides and the checks shared by every method.

A config file defines `get_config() -> ml_collections.ConfigDict`. Overrides are
`--config.section.field=value`; the value is parsed by the type of the field it
replaces. Anything unknown or ill-typed raises ConfigError naming the field.
"""

import ast
import importlib.util
import json
import os
import traceback
from typing import Any, Sequence

import ml_collections

from genimg_jax.errors import ConfigError, UserError
from genimg_jax.registry import is_import_path


def base_config() -> ml_collections.ConfigDict:
  """The sections every method shares; a method adds its own (model, optimizer, ...)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.deterministic = True  # XLA deterministic ops on GPU (set before JAX starts).
  c.method = ""

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"
  c.data.data_dir = ""  # "" -> $GENIMG_DATA_DIR, else ~/tensorflow_datasets
  c.data.image_size = 16
  c.data.channels = 1  # must match the data set
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.path = ""  # data.name folder | npz: the folder of images or the .npz file
  c.data.crop_size = 0  # center crop before resizing to image_size; 0: the largest square
  c.data.holdout_fraction = 0.05  # folder | npz: share of the images held out as split 'test'
  c.data.skip_corrupt = False  # folder | npz: leave unreadable images out (warning) instead of failing
  c.data.random_flip = False
  c.data.dequantize = False  # add uniform noise of one 8-bit level to the [-1, 1] images
  c.data.num_workers = 0  # worker processes reading and decoding; 0: threads of this process
  c.data.prefetch_batches = 4  # batches read ahead of the device

  # The device mesh: data x fsdp. Parameters, EMA and optimizer state are sharded over
  # fsdp (arrays of at least fsdp_min_size elements); batches over all devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = 1  # 1: pure data parallelism (replicated state)
  c.mesh.fsdp_min_size = 2**14
  # CPU only: how many devices the host's cores are split into (XLA:CPU runs a step on one
  # device with little intra-op parallelism, so one device per core trains most models
  # faster, see benchmarks/README.md; the DCGAN digits configs pin 1). 0: one per core, reduced
  # to the largest count that divides the global batch sizes and mesh.fsdp. Results are
  # bitwise reproducible for a fixed count: set it (e.g. 1) to reproduce a run on a machine
  # with another number of cores.
  # XLA_FLAGS (--xla_force_host_platform_device_count) or JAX_NUM_CPU_DEVICES take precedence.
  c.mesh.cpu_devices = 0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 64  # global, over all devices and processes
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.sample_every = 0  # 0: only at the end
  c.train.num_samples = 64
  c.train.eval_batches = 0  # eval-split batches averaged by `genimg eval`; 0: the whole split
  # Updates with a NaN/Inf loss, metric or parameter are skipped; this many in a row stop the run.
  c.train.max_consecutive_nonfinite = 5

  # Sample-quality and held-out metrics: `genimg eval`, and during training every eval.every steps.
  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0  # steps between evaluations while training; 0: none
  # comma-separated: fid, kid, is, pr (precision/recall), acc (class-conditional: the feature net's class
  # of each generated image against the one asked for), bpd (held-out eval_step)
  c.eval.metrics = "bpd"
  c.eval.num_samples = 10000  # generated images for fid, kid, is, pr
  c.eval.batch_size = 0  # global batch for sampling and features; 0: train.batch_size
  c.eval.feature_net = "auto"  # inception | classifier | auto (classifier for digits/mnist/fashion_mnist)
  c.eval.reference_split = ""  # the data split generated images are compared with; "": data.train_split
  c.eval.inception_weights = ""  # converted .npz; "": <data dir>/genimg_feature_nets/inception_v3_fid.npz
  c.eval.best_metric = ""  # keep checkpoints_best/ at the best value of this metric (e.g. fid); "": none

  c.debug = ml_collections.ConfigDict()
  c.debug.nans = False  # jax_debug_nans: stop at the first op that produces a NaN, and name it
  c.debug.inject_nan_at_steps = ()  # test hook: NaN batches at these steps (0-based update index)
  return c


def _where_in(path: str, error: BaseException) -> str:
  """'path:line' of the innermost traceback frame in the config file `path` (the file alone if none)."""
  same = lambda filename: bool(filename) and os.path.abspath(filename) == os.path.abspath(path)
  if isinstance(error, SyntaxError) and same(error.filename) and error.lineno:
    return f"{path}:{error.lineno}"
  frames = [f for f in traceback.extract_tb(error.__traceback__) if same(f.filename)]
  return f"{path}:{frames[-1].lineno}" if frames else path


def _run_user_code(path: str, what: str, function):
  """function(), with any exception but a UserError turned into a ConfigError naming the file and line."""
  try:
    return function()
  except UserError:
    raise
  except Exception as e:  # The user's own code fails in any way; say where, in one line.
    if isinstance(e, SyntaxError):
      raise ConfigError("--config", f"{_where_in(path, e)}: {type(e).__name__}: {e.msg}") from None
    message = (str(e).splitlines() or [""])[0][:200]
    raise ConfigError("--config", f"{_where_in(path, e)}: {what} raised {type(e).__name__}: {message}") from None


def load_file(path: str) -> ml_collections.ConfigDict:
  """Runs a config file's get_config(); raises ConfigError naming the file (and line) on failure."""
  if not os.path.isfile(path):
    raise ConfigError("--config", f"no such config file: {path}")
  spec = importlib.util.spec_from_file_location("_genimg_user_config", path)
  module = importlib.util.module_from_spec(spec)
  _run_user_code(path, "the config file", lambda: spec.loader.exec_module(module))
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError("--config", f"{path} defines no get_config()")
  config = _run_user_code(path, "get_config()", module.get_config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError("--config", f"get_config() in {path} returned {type(config).__name__}, "
                      "not an ml_collections.ConfigDict")
  return config


def _parse_value(field: str, text: str, current: Any) -> Any:
  """Parses `text` as the type of `current`."""
  try:
    if isinstance(current, bool):
      lowered = text.lower()
      if lowered not in ("true", "false", "1", "0"):
        raise ValueError("expected true or false")
      return lowered in ("true", "1")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
    if isinstance(current, (tuple, list)):
      value = ast.literal_eval(text)
      value = value if isinstance(value, (tuple, list)) else (value,)
      return type(current)(value)
    if current is None:
      try:
        return ast.literal_eval(text)
      except (ValueError, SyntaxError):
        return text
  except (ValueError, SyntaxError) as e:
    raise ConfigError(f"config.{field}", f"cannot parse {text!r} as {type(current).__name__} "
                      f"(the field's type): {e}") from None
  raise ConfigError(f"config.{field}", f"cannot override a field of type {type(current).__name__}")


def apply_override(config: ml_collections.ConfigDict, field: str, text: str) -> None:
  """Sets config.<field> (dotted path) from the string `text`, in place."""
  *parents, leaf = field.split(".")
  node = config
  for depth, key in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      raise ConfigError(f"config.{field}", f"unknown field {'.'.join(parents[:depth + 1])!r}")
    node = node[key]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
    raise ConfigError(f"config.{field}", f"unknown field; known here: {known}")
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(f"config.{field}", "is a section; override one of its fields")
  value = _parse_value(field, text, current)
  try:
    node[leaf] = value
  except TypeError as e:
    raise ConfigError(f"config.{field}", f"wrong type: {e}") from None


def load(path: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Loads a config file and applies `--config.a.b=value` overrides, in order."""
  config = load_file(path)
  config.lock()
  args = list(overrides)
  while args:
    arg = args.pop(0)
    if not arg.startswith("--config."):
      raise ConfigError(arg, "unknown argument")
    field, sep, text = arg[len("--config."):].partition("=")
    if not sep:
      if not args:
        raise ConfigError(f"config.{field}", "missing value")
      text = args.pop(0)
    apply_override(config, field, text)
  return config


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as indented JSON (tuples become lists)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def from_json(text: str) -> ml_collections.ConfigDict:
  """Inverse of to_json (lists become tuples, as configs write them)."""
  return ml_collections.ConfigDict(_tuples(json.loads(text)))


def import_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, str]]:
  """[(dotted field, value)] of every value (in tuples too) that names code to import, `module:attribute`."""
  found = []
  for key, value in config.items():
    field = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      found += import_paths(value, f"{field}.")
    else:
      found += [(field, v) for v in (value if isinstance(value, (tuple, list)) else (value,)) if is_import_path(v)]
  return found


def require(ok: bool, field: str, message: str) -> None:
  """Raises ConfigError(field, message) unless ok."""
  if not ok:
    raise ConfigError(f"config.{field}", message)


def validate_common(config: ml_collections.ConfigDict) -> None:
  """Checks the shared sections; a method checks its own in its factory."""
  require(isinstance(config.seed, int) and config.seed >= 0, "seed", "must be an integer >= 0")
  for field in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                "num_samples", "max_consecutive_nonfinite"):
    require(config.train[field] > 0, f"train.{field}", f"must be > 0, got {config.train[field]}")
  for field in ("sample_every", "eval_batches"):
    require(config.train[field] >= 0, f"train.{field}", f"must be >= 0, got {config.train[field]}")
  require(config.data.image_size > 0, "data.image_size", "must be > 0")
  require(config.data.prefetch_batches >= 0, "data.prefetch_batches", "must be >= 0")
  require(config.data.crop_size >= 0, "data.crop_size", "must be >= 0")
  require(config.mesh.fsdp >= 1, "mesh.fsdp", "must be >= 1")
  require(config.mesh.fsdp_min_size >= 0, "mesh.fsdp_min_size", "must be >= 0")
  require(config.mesh.cpu_devices >= 0, "mesh.cpu_devices", "must be >= 0 (0: one per core)")
  require(0.0 <= config.data.holdout_fraction < 1.0, "data.holdout_fraction", "must be in [0, 1)")
  require(config.data.num_workers >= 0, "data.num_workers", "must be >= 0")
  require(config.data.channels in (1, 3), "data.channels", "must be 1 or 3")
