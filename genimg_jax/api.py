"""genimg from Python: load a config, train it, open a run's checkpoint, sample and evaluate.

The `genimg` commands are thin wrappers of these:

  config = api.load_config("configs/ddpm_digits.py", {"train.steps": 100})
  api.train(config, "runs/x")
  run = api.Run.load("runs/x")                # or checkpoint="best" / a step number
  images = run.sample(16, seed=0)             # [16, H, W, C] float32 in [-1, 1]
  report = run.evaluate(metrics="fid,bpd", num_samples=1000)
"""

import functools
from typing import Any, Iterator, Mapping, Sequence

import ml_collections
import numpy as np

from genimg_jax import config as config_lib
from genimg_jax import methods, seeds
from genimg_jax.errors import ConfigError
from genimg_jax.evaluation import suite
from genimg_jax.methods.base import Method, TrainState
from genimg_jax.parallel import functions, runtime
from genimg_jax.train import first_stage, trainer, workdir as workdir_lib


def load_config(path: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """A config file with dotted overrides, {"train.steps": 100, "model.ch_mult": (1, 2)}, checked like
  the command line's `--config.train.steps=100` (ConfigError naming the field)."""
  return config_lib.load(path, [f"--config.{field}={value}" for field, value in (overrides or {}).items()])


def train(config: ml_collections.ConfigDict, workdir: str, *, show_progress: bool = True) -> TrainState:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluating every
  config.eval.every steps when that is set; returns the final state.

  Sets up JAX for the config first (runtime.setup: the CPU device count, partitionable
  threefry), which takes effect only before the process's first JAX computation.
  """
  runtime.setup(config)
  first_stage.pin(config, workdir, create=True)  # A latent run copies its autoencoder into the workdir once.
  return trainer.train(config, workdir, show_progress=show_progress,
                       make_evaluation=functools.partial(suite.TrainingEvaluation, config, workdir))


class Run:
  """A trained run's checkpoint: its config, method, device mesh, state and step."""

  def __init__(self, config: ml_collections.ConfigDict, method: Method, mesh, state: TrainState, step: int):
    self.config, self.method, self.mesh, self.state, self.step = config, method, mesh, state, step

  @classmethod
  def load(cls, workdir: str, checkpoint: str | int = "latest",
           sample_overrides: Mapping[str, Any] | None = None, fields: Mapping[str, str] | None = None,
           trust_code: bool = False) -> "Run":
    """Reads workdir/config.json and the checkpoint ('latest', 'best' or a step number); changes no file.

    sample_overrides: {field: value} replacing config.sample fields (sampler, steps, eta, guidance);
    `fields` names them in error messages (the CLI passes its flags). trust_code: let config.json name
    code to import (`module:attribute`); without it such a config is a ConfigError (workdir.read_config).
    """
    config = workdir_lib.read_config(workdir, trust_code)
    for field, value in (sample_overrides or {}).items():
      if field not in config.get("sample", {}):
        known = ", ".join(sorted(config.get("sample", {}))) or "none"
        raise ConfigError((fields or {}).get(field, f"config.sample.{field}"),
                          f"the {config.method} method has no sample.{field} (its sample settings: {known})")
      config.sample[field] = value
    runtime.setup(config)
    first_stage.pin(config, workdir, create=False)
    method = methods.make(config)
    mesh, state, step = workdir_lib.restore(workdir, config, method, checkpoint)
    return cls(config, method, mesh, state, step)

  def classes(self, labels: str | Sequence[int] | None, field: str = "labels") -> tuple[int, ...] | None:
    """'all' | [classes] | None -> the classes a class-conditional method samples in turn;
    ConfigError naming `field` for an unconditional method or a class out of range."""
    if labels is None:
      return None
    num_classes = self.method.num_classes
    if not num_classes:
      raise ConfigError(field, "the model is not class-conditional")
    if isinstance(labels, str) and labels == "all":
      return tuple(range(num_classes))
    if isinstance(labels, str):
      try:
        labels = [int(label) for label in labels.split(",")]
      except ValueError:
        raise ConfigError(field, f"{labels!r} is not 'all' or comma-separated class numbers") from None
    outside = [label for label in labels if not 0 <= label < num_classes]
    if outside:
      raise ConfigError(field, f"classes {outside} are not in [0, {num_classes})")
    return tuple(int(label) for label in labels)

  def default_batch_size(self) -> int:
    return suite.settings(self.config).batch_size or self.config.train.batch_size

  def sample_batches(self, num: int, seed: int = 0, batch_size: int | None = None,
                     labels: str | Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """Yields the EMA model's images 0..num-1 in batches of batch_size (default: the eval batch),
    each float32 [B, H, W, C] in [-1, 1], on every process. Image i is drawn with key
    fold_in(sample key of `seed`, i), so the images do not depend on batch_size; a
    class-conditional method asks image i for labels[i % len(labels)] (default 'all')."""
    batch_size = min(batch_size or self.default_batch_size(), num)
    draw = functions.sampler(self.method, self.mesh, batch_size, self.classes(labels))
    key = seeds.root_keys(seed)["sample"]
    for start in range(0, num, batch_size):
      yield draw(self.state.ema_params, key, start)[:num - start]

  def sample(self, num: int, seed: int = 0, batch_size: int | None = None,
             labels: str | Sequence[int] | None = None) -> np.ndarray:
    """All of `sample_batches` at once: float32 [num, H, W, C] in [-1, 1]."""
    return np.concatenate(list(self.sample_batches(num, seed, batch_size, labels)))

  def evaluate(self, seed: int = 0, fields: Mapping[str, str] | None = None, **options) -> dict:
    """Evaluates the EMA parameters with config.eval's settings, `options` replacing them (metrics,
    num_samples, batch_size, feature_net, reference_split, inception_weights); writes nothing.

    Returns the report {'step', 'params', 'metrics': {name: values and how they were computed}};
    suite.write_report saves it, suite.table prints it.
    """
    settings = suite.settings(self.config)
    settings.best_metric = ""  # What training keeps checkpoints_best/ by; not an evaluation setting.
    unknown = sorted(set(options) - set(settings))
    if unknown:
      raise ConfigError(f"evaluate({unknown[0]}=...)", f"unknown option; eval options: {', '.join(sorted(settings))}")
    settings.update(options)
    evaluator = suite.Evaluator(self.config, self.method, self.mesh, settings, seed, fields)
    return evaluator(self.state.ema_params, self.step)
