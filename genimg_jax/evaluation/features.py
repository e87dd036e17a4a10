"""Feature networks by name, and feature extraction on the device mesh in batches.

A feature network maps uint8 images [N, H, W, C] to {'features': [N, D],
'logits': [N, K]} float32: the features feed FID, KID and precision/recall, the
logits' softmax feeds the Inception Score.
"""

import dataclasses
import hashlib
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from genimg_jax.errors import ConfigError
from genimg_jax.evaluation import classifier, inception_weights
from genimg_jax.models import inception
from genimg_jax.parallel import distributed
from genimg_jax.parallel import mesh as mesh_lib

FEATURE_NETS = ("auto", "inception", "classifier")
# Data sets whose FID-style numbers use the offline classifier under feature_net=auto.
CLASSIFIER_DATASETS = ("digits", "mnist", "fashion_mnist")


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """name: says which network and which weights (printed beside every number).
  key: a short file-name-safe id of the same, for cache files.
  apply(variables, uint8 images) -> {'features', 'logits'}, pure and jittable."""

  name: str
  key: str
  variables: Any
  apply: Callable[[Any, jax.Array], dict[str, jax.Array]]


def apply_inception(variables, images_uint8):
  """InceptionV3 on uint8 images [N, H, W, C] -> {'features': pool [N, 2048], 'logits': unbiased [N, 1008]}."""
  out = inception.InceptionV3().apply(variables, inception.preprocess(images_uint8))
  return {"features": out["pool"], "logits": out["logits_unbiased"]}


def inception_net(weights_path: str) -> FeatureNet:
  """pytorch-fid's InceptionV3 (2048-d pool features, 1008 unbiased logits) from converted weights."""
  variables = inception_weights.load(weights_path)
  with open(weights_path, "rb") as f:
    digest = hashlib.file_digest(f, "sha256").hexdigest()[:10]
  return FeatureNet(f"inception-v3-fid[pool3 2048-d, sha256 {digest}]", f"inception-{digest}", variables,
                    apply_inception)


def classifier_net(data: ml_collections.ConfigDict) -> FeatureNet:
  """The project's classifier for config.data (trained and cached on first use)."""
  trained = classifier.get(data)
  digest = trained.name.rsplit("sha256 ", 1)[1].rstrip("]")
  return FeatureNet(trained.name, f"classifier-{digest}", {"params": trained.params},
                    classifier.apply_fn(trained.num_classes))


def resolve(feature_net: str, data: ml_collections.ConfigDict, field: str = "config.eval.feature_net") -> str:
  """'inception' or 'classifier': auto picks the classifier for CLASSIFIER_DATASETS."""
  if feature_net not in FEATURE_NETS:
    raise ConfigError(field, f"unknown feature network {feature_net!r}; choose one of {FEATURE_NETS}")
  if feature_net == "auto":
    return "classifier" if data.name in CLASSIFIER_DATASETS else "inception"
  return feature_net


def make(feature_net: str, data: ml_collections.ConfigDict, inception_path: str) -> FeatureNet:
  """The feature network named by feature_net (see `resolve`) for config.data."""
  if resolve(feature_net, data) == "classifier":
    return classifier_net(data)
  return inception_net(inception_path)


class Extractor:
  """Features of global batches on a mesh: each process hands in its share of a batch.

  __call__(local uint8 [global_batch / processes, H, W, C]) -> {'features': [global_batch, D],
  'logits': [global_batch, K]} float32 NumPy, the same on every process; batch
  rows are split over the mesh's devices.
  """

  def __init__(self, net: FeatureNet, mesh: Mesh):
    self._mesh = mesh
    self.variables = jax.device_put(net.variables, mesh_lib.replicated(mesh))
    self.fn = distributed.CompiledTogether(jax.jit(
        net.apply, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
        out_shardings=mesh_lib.replicated(mesh)), "feature net")

  def __call__(self, local_images: np.ndarray) -> dict[str, np.ndarray]:
    out = self.fn(self.variables, mesh_lib.to_global(local_images, self._mesh))
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def extract(extractor: Extractor, batches: Iterable[tuple[np.ndarray, int]], local_batch: int) -> dict[str, np.ndarray]:
  """Features of (local uint8 batch [local_batch, ...], number of real rows) pairs, padding rows dropped.

  Every process must give the same number of real rows per batch; the result
  holds each batch's rows process by process.
  """
  outputs = {}
  for images, valid in batches:
    out = extractor(images)
    keep = np.tile(np.arange(local_batch) < valid, out["features"].shape[0] // local_batch)
    for name, value in out.items():
      outputs.setdefault(name, []).append(value[keep])
  return {name: np.concatenate(parts) for name, parts in outputs.items()}


def pad_batch(images: np.ndarray, size: int) -> np.ndarray:
  """images [n <= size, ...] padded to [size, ...] by repeating the last row."""
  if images.shape[0] == size:
    return images
  return np.concatenate([images, np.repeat(images[-1:], size - images.shape[0], axis=0)])
