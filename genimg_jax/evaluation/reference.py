"""Features of a data split, computed once per feature network and cached as .npz in the data dir.

<data dir>/genimg_reference_stats/<data set key>-<split>-<feature net key>.npz
holds 'features' [N, D] and 'logits' [N, K] float32, and the FID statistics
'mu' [D] and 'sigma' [D, D] float64.
"""

import dataclasses
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from genimg_jax import images as images_lib
from genimg_jax.data import datasets, pipeline
from genimg_jax.evaluation import cache, features, metrics
from genimg_jax.parallel import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class Reference:
  """A split's features and statistics; `description` says which split of which data set."""

  features: np.ndarray
  logits: np.ndarray
  mu: np.ndarray
  sigma: np.ndarray
  description: str
  path: str


def cache_path(data: ml_collections.ConfigDict, split: str, net: features.FeatureNet) -> str:
  return os.path.join(cache.data_dir(data), cache.REFERENCE_DIR, f"{cache.dataset_key(data)}-{split}-{net.key}.npz")


def _local_batches(data, split: str, local_batch: int):
  """This process's images of the split as (uint8 [local_batch, H, W, C], real rows) pairs.

  Process p reads every P-th image from p; each reads the same count, N // P.
  """
  source = datasets.open_split(data, split)
  count = len(source) // jax.process_count()
  ds = pipeline.eval_dataset(source, data, local_batch_size=1, process_index=jax.process_index(),
                             process_count=jax.process_count())
  for start in range(0, count, local_batch):
    stop = min(start + local_batch, count)
    images = images_lib.float_to_uint8(np.concatenate([ds[i]["image"] for i in range(start, stop)]))
    yield features.pad_batch(images, local_batch), stop - start


def get(data: ml_collections.ConfigDict, split: str, net: features.FeatureNet, extractor: features.Extractor,
        mesh: Mesh, batch_size: int) -> Reference:
  """The reference features of data[split] under `net`, from the cache or computed in global batches of
  batch_size (and cached)."""
  path = cache_path(data, split, net)
  description = f"{data.name} {split} {data.image_size}x{data.image_size}"
  if os.path.isfile(path):
    stored = cache.load_npz(path)
  else:
    local_batch = mesh_lib.local_batch_size(batch_size, mesh, "config.eval.batch_size")
    stored = features.extract(extractor, _local_batches(data, split, local_batch), local_batch)
    stored["mu"], stored["sigma"] = metrics.feature_statistics(stored["features"])
    cache.save_npz(path, **stored)
  return Reference(stored["features"], stored["logits"], stored["mu"], stored["sigma"],
                   f"{description} ({stored['features'].shape[0]} images)", path)
