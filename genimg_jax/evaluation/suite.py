"""The evaluation suite: sample, extract features on the device, compute metrics, report.

Used by `genimg eval` and, every config.eval.every steps, by the trainer. Each
reported number states how it was computed: the feature network, the number of
samples, the reference split, the sampler settings and the seed.
"""

import json
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from genimg_jax import config as config_lib
from genimg_jax import images as images_lib
from genimg_jax import seeds
from genimg_jax.data import datasets
from genimg_jax.errors import ConfigError
from genimg_jax.files import atomic_open
from genimg_jax.evaluation import features, held_out, inception_weights, metrics, reconstruction, reference
from genimg_jax.methods.base import Method
from genimg_jax.parallel import functions
from genimg_jax.parallel import mesh as mesh_lib

SAMPLE_METRICS = ("fid", "kid", "is", "pr", "acc")
# rfid: FID of an autoencoder's reconstructions of data.eval_split against that split.
FEATURE_METRICS = SAMPLE_METRICS + ("rfid",)
METRICS = FEATURE_METRICS + ("bpd",)
# Scalars (see `scalars`) where larger is better; for all others smaller is better.
HIGHER_IS_BETTER = ("is", "precision", "recall", "class_accuracy", "psnr_db", "ssim")
KID_SUBSET_SIZE, KID_SUBSETS = 1000, 100
IS_SPLITS = 10
PR_NEIGHBOURS = 3


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.eval over the defaults (runs saved before the section existed have none)."""
  merged = config_lib.base_config().eval
  if "eval" in config:
    merged.update(config.eval.to_dict())
  return merged


def parse_metrics(text: str, field: str = "config.eval.metrics") -> tuple[str, ...]:
  """'fid,kid' -> ('fid', 'kid'); ConfigError naming `field` for an empty list or an unknown name."""
  names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
  unknown = [name for name in names if name not in METRICS]
  if not names or unknown:
    raise ConfigError(field, f"unknown metric(s) {unknown} in {text!r}; choose from {', '.join(METRICS)}")
  return names


def validate(config: ml_collections.ConfigDict, options: ml_collections.ConfigDict,
             fields: dict[str, str] | None = None) -> tuple[str, ...]:
  """Checks an eval section; returns its metrics. `fields` renames fields in messages (CLI flags)."""
  name = lambda field: (fields or {}).get(field, f"config.eval.{field}")
  chosen = parse_metrics(options.metrics, name("metrics"))
  for field in ("every", "batch_size"):
    if options[field] < 0:
      raise ConfigError(name(field), f"must be >= 0, got {options[field]}")
  if options.num_samples < 2:
    raise ConfigError(name("num_samples"), f"must be >= 2, got {options.num_samples}")
  if "is" in chosen and options.num_samples < IS_SPLITS:
    raise ConfigError(name("num_samples"), f"the Inception Score needs at least {IS_SPLITS} samples "
                      f"(one per split), got {options.num_samples}")
  features.resolve(options.feature_net, config.data, name("feature_net"))
  split = options.reference_split or config.data.train_split
  if split not in datasets.splits_of(config.data):
    raise ConfigError(name("reference_split"), f"{config.data.name} has splits "
                      f"{datasets.splits_of(config.data)}, not {split!r}")
  if options.best_metric:
    producers = {"fid": "fid", "kid": "kid", "is": "is", "precision": "pr", "recall": "pr", "class_accuracy": "acc",
                 "rfid": "rfid"}
    needed = producers.get(options.best_metric, "bpd")  # Other names are the method's eval_step metrics.
    if needed not in chosen:
      raise ConfigError(name("best_metric"), f"{options.best_metric!r} needs metric {needed!r} in "
                        f"eval.metrics ({options.metrics!r})")
  return chosen


def metric_value(values: dict[str, float], name: str) -> float:
  """values[name]; ConfigError naming config.eval.best_metric if the evaluation did not produce it."""
  if name not in values:
    raise ConfigError("config.eval.best_metric", f"{name!r} is not among the evaluated numbers {sorted(values)}")
  return values[name]


def _sampler_settings(config: ml_collections.ConfigDict, method: Method) -> dict:
  """The config's `sample` section (the method's sampler settings), the network evaluations per image, and
  the network passes per image (two per evaluation under classifier-free guidance)."""
  return dict(config.sample.to_dict() if "sample" in config else {}, nfe=method.sample_nfe,
              network_passes=method.sample_network_passes)


class Evaluator:
  """Evaluates parameters of one run; the feature network and reference are built on first use.

  seed: generated image j uses fold_in(root_keys(seed)['sample'], j) (functions.sampler); held-out
  batches use root_keys(seed)['eval'] (see held_out.evaluate); KID subsets use seed.
  """

  def __init__(self, config: ml_collections.ConfigDict, method: Method, mesh: Mesh,
               options: ml_collections.ConfigDict, seed: int, fields: dict[str, str] | None = None):
    self.metrics = validate(config, options, fields)
    if "bpd" in self.metrics and method.eval_step is None:
      raise ConfigError((fields or {}).get("metrics", "config.eval.metrics"),
                        f"bpd needs a held-out likelihood, which the {config.method} method does not have; "
                        f"choose from {', '.join(SAMPLE_METRICS)}")
    if "acc" in self.metrics and not method.num_classes:
      raise ConfigError((fields or {}).get("metrics", "config.eval.metrics"),
                        "acc (the classes of generated images) needs a class-conditional model")
    if "rfid" in self.metrics and method.reconstruct is None:
      raise ConfigError((fields or {}).get("metrics", "config.eval.metrics"),
                        f"rfid (FID of reconstructions) needs an autoencoder; the {config.method} method has none")
    self.config, self.method, self.mesh, self.options, self.seed = config, method, mesh, options, seed
    self.batch_size = options.batch_size or config.train.batch_size
    self.local_batch = mesh_lib.local_batch_size(self.batch_size, mesh, (fields or {}).get(
        "batch_size", "config.eval.batch_size"))
    self.split = options.reference_split or config.data.train_split
    self._net = self._extractor = self._reference = self._sample = None

  def prepare(self) -> None:
    """Builds the feature network if a metric needs it, and the reference features and the sampler if a
    sample metric does (also done on first use; call it early to fail before training on missing weights)."""
    if self._net is None and any(name in FEATURE_METRICS for name in self.metrics):
      weights = self.options.inception_weights or inception_weights.default_path(
          datasets.resolve_data_dir(self.config.data.data_dir))
      self._net = features.make(self.options.feature_net, self.config.data, weights)
      self._extractor = features.Extractor(self._net, self.mesh)
    if self._reference is None and any(name in SAMPLE_METRICS for name in self.metrics):
      self._reference = reference.get(self.config.data, self.split, self._net, self._extractor, self.mesh,
                                      self.batch_size)
      self._sample = functions.sampler(self.method, self.mesh, self.batch_size)

  def generated_features(self, params) -> dict[str, np.ndarray]:
    """Features of options.num_samples images drawn with method.sample, batch by batch."""
    self.prepare()
    key = seeds.root_keys(self.seed)["sample"]
    share = slice(jax.process_index() * self.local_batch, (jax.process_index() + 1) * self.local_batch)
    num = self.options.num_samples
    batches = ((images_lib.float_to_uint8(self._sample(params, key, start))[share], self.local_batch)
               for start in range(0, num, self.batch_size))
    out = features.extract(self._extractor, batches, self.local_batch)
    return {name: value[:num] for name, value in out.items()}

  def __call__(self, params, step: int) -> dict:
    """{'step', 'params', 'metrics': {name: {values..., how it was computed}}} for these parameters."""
    report = {"step": step, "params": "ema", "metrics": {}}
    results = report["metrics"]
    if any(name in SAMPLE_METRICS for name in self.metrics):
      generated = self.generated_features(params)
      ref = self._reference
      how = {"feature_net": self._net.name, "num_samples": int(generated["features"].shape[0]),
             "reference": ref.description, "sampler": _sampler_settings(self.config, self.method), "seed": self.seed}
      if "fid" in self.metrics:
        mu, sigma = metrics.feature_statistics(generated["features"])
        results["fid"] = dict(value=metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma), **how)
      if "kid" in self.metrics:
        mean, std = metrics.kid(generated["features"], ref.features, subset_size=KID_SUBSET_SIZE,
                                num_subsets=KID_SUBSETS, seed=self.seed)
        results["kid"] = dict(mean=mean, std=std, subset_size=min(KID_SUBSET_SIZE, len(ref.features),
                                                                  how["num_samples"]),
                              num_subsets=KID_SUBSETS, **how)
      if "is" in self.metrics:
        mean, std = metrics.inception_score(metrics.softmax(generated["logits"]), splits=IS_SPLITS)
        results["is"] = dict(mean=mean, std=std, splits=IS_SPLITS, **dict(how, reference="none (logits only)"))
      if "pr" in self.metrics:
        precision, recall = metrics.precision_recall(ref.features, generated["features"], k=PR_NEIGHBOURS)
        results["pr"] = dict(precision=precision, recall=recall, k=PR_NEIGHBOURS, **how)
      if "acc" in self.metrics:
        results["acc"] = dict(value=self._class_accuracy(generated["logits"]),
                              **dict(how, reference="the requested classes"))
    if "rfid" in self.metrics:
      results["rfid"] = self._reconstruction_fid(params)
    if "bpd" in self.metrics:
      held = held_out.evaluate(self.config, self.method, self.mesh, params, seeds.root_keys(self.seed)["eval"])
      results["bpd"] = dict(held, seed=self.seed)
    return report

  def _reconstruction_fid(self, params) -> dict:
    """rFID: the posterior-mean reconstructions of data.eval_split against that split's features, with the
    latents' per-channel mean and std over the split."""
    self.prepare()
    split = self.config.data.eval_split
    trip = reconstruction.round_trip(self.config.data, split, self.method, self.mesh, params, self._extractor,
                                     self.batch_size)
    ref = reference.get(self.config.data, split, self._net, self._extractor, self.mesh, self.batch_size)
    mu, sigma = metrics.feature_statistics(trip.features["features"])
    return {"value": metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma),
            "latent_mean": trip.latent_mean.tolist(), "latent_std": trip.latent_std.tolist(),
            "feature_net": self._net.name, "num_samples": int(trip.features["features"].shape[0]),
            "reference": ref.description, "reconstruction": "posterior mean, decoded", "seed": self.seed}

  def _class_accuracy(self, logits: np.ndarray) -> float:
    """The fraction of generated images the feature net classifies as the class they were drawn for
    (image j asks for class j % num_classes, functions.sampler's default)."""
    if logits.shape[1] != self.method.num_classes:
      raise ConfigError("config.eval.feature_net", f"acc needs a feature net that classifies the model's "
                        f"{self.method.num_classes} classes; {self._net.name} has {logits.shape[1]}")
    requested = np.arange(len(logits)) % self.method.num_classes
    return float(np.mean(np.argmax(logits, axis=1) == requested))


def scalars(report: dict) -> dict[str, float]:
  """The report's headline numbers: fid, kid, kid_std, is, is_std, precision, recall, class_accuracy, rfid
  with latent_mean_c<k> and latent_std_c<k> per latent channel k, and every held-out eval_step metric by
  its own name."""
  results, out = report["metrics"], {}
  if "fid" in results:
    out["fid"] = results["fid"]["value"]
  for name in ("kid", "is"):
    if name in results:
      out[name], out[f"{name}_std"] = results[name]["mean"], results[name]["std"]
  if "pr" in results:
    out["precision"], out["recall"] = results["pr"]["precision"], results["pr"]["recall"]
  if "acc" in results:
    out["class_accuracy"] = results["acc"]["value"]
  if "rfid" in results:
    out["rfid"] = results["rfid"]["value"]
    for name in ("latent_mean", "latent_std"):
      out.update({f"{name}_c{k}": value for k, value in enumerate(results["rfid"][name])})
  for name, value in results.get("bpd", {}).items():
    if isinstance(value, float) and name not in out:
      out[name] = value
  return out


class TrainingEvaluation:
  """The evaluation a training run does every config.eval.every steps (trainer.Evaluation):
  evaluates the parameters, writes workdir/eval/eval_<step>.json, returns the headline numbers."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, method: Method, mesh: Mesh):
    options = settings(config)
    self.every, self.best_metric = options.every, options.best_metric
    self.higher_is_better = options.best_metric in HIGHER_IS_BETTER
    self._evaluator = Evaluator(config, method, mesh, options, config.seed)
    self._workdir = workdir

  def prepare(self) -> None:
    self._evaluator.prepare()

  def __call__(self, params, step: int) -> tuple[dict[str, float], str]:
    """({name: value} as `scalars` gives them, the report's path); ConfigError if best_metric is not
    among them."""
    report = self._evaluator(params, step)
    values = scalars(report)
    if self.best_metric:
      metric_value(values, self.best_metric)
    return values, write_report(self._workdir, report)


def report_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "eval", f"eval_{step:07d}.json")


def write_report(workdir: str, report: dict) -> str:
  """Writes workdir/eval/eval_<step>.json (process 0), keeping metrics of that step computed earlier
  and not recomputed now. Returns the path."""
  path = report_path(workdir, report["step"])
  if jax.process_index() == 0:
    merged = dict(report, metrics=dict(report["metrics"]))
    if os.path.isfile(path):
      with open(path) as f:
        merged["metrics"] = dict(json.load(f).get("metrics", {}), **report["metrics"])
    with atomic_open(path) as f:
      json.dump(merged, f, indent=2)
  return path


def _format(value) -> str:
  return f"{value:.6g}" if isinstance(value, float) else str(value)


def table(report: dict) -> str:
  """A markdown table of the report: one row per number, with how it was computed."""
  lines = [f"step {report['step']} ({report['params']} params)",
           "| metric | value | feature net | samples | reference | sampler | seed |", "|" + "---|" * 7]
  for name, entry in report["metrics"].items():
    if name == "bpd":
      for key, value in entry.items():
        if isinstance(value, float):
          lines.append(f"| {key} | {_format(value)} | - | {entry['num_examples']} (held out) | "
                       f"{entry['split']} | - | {entry['seed']} |")
      continue
    if name == "rfid":
      for label, key in (("rfid", "value"), ("latent mean", "latent_mean"), ("latent std", "latent_std")):
        value = entry[key] if key == "value" else "[" + ", ".join(f"{v:.4g}" for v in entry[key]) + "]"
        lines.append(f"| {label} | {_format(value)} | {entry['feature_net']} | {entry['num_samples']} | "
                     f"{entry['reference']} | {entry['reconstruction']} | {entry['seed']} |")
      continue
    sampler = " ".join(f"{k}={v}" for k, v in entry["sampler"].items()) or "-"
    values = {"fid": [("fid", "value")], "kid": [("kid", "mean"), ("kid std", "std")],
              "is": [("is", "mean"), ("is std", "std")], "pr": [("precision", "precision"), ("recall", "recall")],
              "acc": [("class accuracy", "value")]}
    for label, key in values[name]:
      lines.append(f"| {label} | {_format(entry[key])} | {entry['feature_net']} | {entry['num_samples']} | "
                   f"{entry['reference']} | {sampler} | {entry['seed']} |")
  return "\n".join(lines)
