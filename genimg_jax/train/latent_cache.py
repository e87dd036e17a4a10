"""Latents of a data split, encoded once by a first-stage autoencoder and cached next to the data set.

A cache is a folder <data dir>/genimg_latents/<data set>-<split>-<data key>-<params hash>/ holding
  latents.npy  float32 [N, V, h, w, c]: the encoder's posterior mean of each image (V = 2 with
               data.random_flip: the image and its mirror image; else V = 1), not normalised;
  labels.npy   int32 [N];
  meta.json    the data key, the autoencoder's parameter hash, N, V, and the per-channel mean and
               standard deviation of the latents over all N V views (float64 sums).
A tokenizer's (methods/maskgit.py) cache holds its tokens instead: latents.npy int32 [N, V, h, w], and no
mean or standard deviation (empty lists).
The data key hashes what decides the images (data set, path, split, size, crop, hold-out share, flip);
the parameter hash is the autoencoder's (methods/latent.py). The folder is written under a temporary
name and renamed when complete, so a cache is whole or absent. A different autoencoder gets its own
folder; encoding again says so in one line. latents.npy is memory-mapped, so a large split is not read
into memory.
"""

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Callable

import grain
import jax
import ml_collections
import numpy as np

from genimg_jax.data import datasets, pipeline
from genimg_jax.errors import DataError
from genimg_jax.parallel import distributed

FORMAT = 1
KEY_FIELDS = ("name", "path", "image_size", "channels", "crop_size", "holdout_fraction", "random_flip")


def data_key(data: ml_collections.ConfigDict, split: str) -> str:
  """sha256 (hex) of the config.data fields that decide the images of `split`, and the cache format."""
  fields = {field: data[field] for field in KEY_FIELDS}
  return hashlib.sha256(json.dumps(dict(fields, split=split, format=FORMAT), sort_keys=True).encode()).hexdigest()


def cache_dir(data: ml_collections.ConfigDict, split: str, params_hash: str) -> str:
  """Where the latents of `split` under the autoencoder with `params_hash` are cached."""
  name = data.name.replace("/", "_").replace(":", "_")
  root = os.path.join(datasets.resolve_data_dir(data.data_dir), "genimg_latents")
  return os.path.join(root, f"{name}-{split}-{data_key(data, split)[:12]}-{params_hash[:12]}")


@dataclasses.dataclass(frozen=True)
class Cached:
  """An opened cache: latents float32 [N, V, h, w, c] (memory-mapped), labels int32 [N], the per-channel
  mean and std float32 [c] over all views, and its folder."""

  latents: np.ndarray
  labels: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  directory: str


def _read(directory: str, key: str, params_hash: str, count: int) -> Cached | None:
  """The cache in `directory` if it is complete and made from these images by this autoencoder, else None."""
  try:
    with open(os.path.join(directory, "meta.json")) as f:
      meta = json.load(f)
    latents = np.load(os.path.join(directory, "latents.npy"), mmap_mode="r", allow_pickle=False)
    labels = np.load(os.path.join(directory, "labels.npy"), allow_pickle=False)
  except (OSError, ValueError):
    return None
  if (meta.get("data_key"), meta.get("params_hash"), meta.get("num_examples")) != (key, params_hash, count) \
      or latents.shape[0] != count or labels.shape != (count,):
    return None
  return Cached(latents, labels, np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32), directory)


def _encode_all(source, data: ml_collections.ConfigDict, encode: Callable, params, directory: str,
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Encodes every image of `source` (preprocessed as config.data says, never dequantized) into `directory`;
  returns the per-channel mean and std [c] float64 of float latents ([0] arrays for integer tokens)."""
  views = 2 if data.random_flip else 1
  images = pipeline.eval_dataset(source, data, local_batch_size=1, process_index=0, process_count=1)
  count = len(images)
  encode_jit = jax.jit(encode)
  first = jax.eval_shape(encode, params, jax.ShapeDtypeStruct((batch_size,) + images[0]["image"].shape[1:],
                                                               np.float32))
  floating = np.issubdtype(first.dtype, np.floating)
  latents = np.lib.format.open_memmap(os.path.join(directory, "latents.npy"), mode="w+",
                                      dtype=np.float32 if floating else np.int32,
                                      shape=(count, views) + tuple(first.shape[1:]))
  labels = np.zeros((count,), np.int32)
  channels = first.shape[-1] if floating else 0
  total, total_sq = np.zeros(channels), np.zeros(channels)
  batches = images.batch(batch_size).to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
  for index, batch in enumerate(batches):
    x = batch["image"][:, 0]
    start, size = index * batch_size, x.shape[0]
    padded = np.concatenate([x, np.zeros((batch_size - size,) + x.shape[1:], x.dtype)]) if size < batch_size else x
    for view in range(views):
      z = np.asarray(encode_jit(params, padded[:, :, ::-1] if view else padded))[:size]
      latents[start:start + size, view] = z
      if floating:
        z = z.astype(np.float64)
        total += z.sum(axis=(0, 1, 2))
        total_sq += (z * z).sum(axis=(0, 1, 2))
    labels[start:start + size] = batch["label"][:, 0]
  latents.flush()
  np.save(os.path.join(directory, "labels.npy"), labels)
  n = max(1, count * views * int(np.prod(first.shape[1:-1])))
  mean = total / n
  return mean, np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))


def encoded(data: ml_collections.ConfigDict, split: str, encode: Callable, params, params_hash: str,
            batch_size: int = 64, encoding: str = "posterior mean") -> Cached:
  """The cached latents of `split`, encoding them first if there is no cache for these images and this
  autoencoder (one line on stderr says so, and why).

  encode(params, images [B, H, W, C] float32 in [-1, 1]) -> latents [B, h, w, c] float32 (the posterior
  mean) or tokens [B, h, w] int32 (a tokenizer's); params: the autoencoder's, hashed as `params_hash`;
  encoding: what meta.json records the latents to be. Process 0 encodes on its first device and writes; the
  others wait and read.
  """
  source = datasets.open_split(data, split)
  key, directory = data_key(data, split), cache_dir(data, split, params_hash)
  cached = _read(directory, key, params_hash, len(source))
  if cached is not None:
    return cached
  if jax.process_index() == 0:
    others = [path for path in glob.glob(directory.rsplit("-", 1)[0] + "-*") if path != directory
              and not os.path.basename(path).startswith(".")]
    why = (f"the cached latents {', '.join(sorted(others))} were encoded by another autoencoder"
           if others else "no cached latents yet" if not os.path.exists(directory) else "the cache is incomplete")
    print(f"encoding {data.name} {split} ({len(source)} images) with the autoencoder {params_hash[:12]} "
          f"({why}) -> {directory}", file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    building = tempfile.mkdtemp(dir=os.path.dirname(directory), prefix=f".{os.path.basename(directory)}.")
    try:
      mean, std = _encode_all(source, data, encode, params, building, batch_size)
      with open(os.path.join(building, "meta.json"), "w") as f:
        json.dump({"data_key": key, "params_hash": params_hash, "num_examples": len(source),
                   "views": 2 if data.random_flip else 1, "encoding": encoding,
                   "mean": mean.tolist(), "std": std.tolist()}, f, indent=2)
      shutil.rmtree(directory, ignore_errors=True)
      os.replace(building, directory)
    finally:
      shutil.rmtree(building, ignore_errors=True)
  distributed.barrier(f"latents {directory}")
  cached = _read(directory, key, params_hash, len(source))
  if cached is None:
    raise DataError(directory, "the latent cache could not be read back after encoding")
  return cached


class LatentSource:
  """Random access to a cache's examples: {'latent': float32 [V, h, w, c], 'label': int32}; the memory map is
  opened on first use (so worker processes open their own)."""

  def __init__(self, directory: str, count: int):
    self._directory, self._count, self._latents = directory, count, None

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int):
    if self._latents is None:
      # Read threads call this at once: the labels are set before the latents that say both are there.
      labels = np.load(os.path.join(self._directory, "labels.npy"), allow_pickle=False)
      latents = np.load(os.path.join(self._directory, "latents.npy"), mmap_mode="r", allow_pickle=False)
      self._labels = labels
      self._latents = latents
    return {"latent": np.asarray(self._latents[index]), "label": self._labels[index]}

  def __getstate__(self):
    return {"_directory": self._directory, "_count": self._count, "_latents": None}


@dataclasses.dataclass(frozen=True)
class PickView(grain.transforms.RandomMap):
  """{'latent': [V, ...], 'label'} -> {'image': one of the V views at random (its dtype), 'label': int32}: with
  data.random_flip, the latent of the image or of its mirror image with probability 1/2 each."""

  def random_map(self, element, rng: np.random.Generator):
    latent = element["latent"]
    view = int(rng.integers(latent.shape[0])) if latent.shape[0] > 1 else 0
    return {"image": np.asarray(latent[view]), "label": np.int32(element["label"])}


def train_dataset(cached: Cached, data: ml_collections.ConfigDict, *, seed: int, local_batch_size: int,
                  process_index: int, process_count: int, start_batch: int = 0) -> grain.IterDataset:
  """pipeline.train_dataset for cached latents: the same seeded order and per-process blocks, each batch
  {'image': float32 [local_batch_size, h, w, c] (not normalised), 'label': int32 [local_batch_size]}."""
  ds = grain.MapDataset.source(LatentSource(cached.directory, len(cached.labels))).shuffle(seed=seed).repeat(None)
  ds = ds.random_map(PickView(), seed=seed + 1)
  ds = pipeline.ProcessBlocks(ds, local_batch_size, process_index, process_count, start_batch)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  if data.num_workers:
    return ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.num_workers, per_worker_buffer_size=max(1, data.prefetch_batches)))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=data.prefetch_batches))
