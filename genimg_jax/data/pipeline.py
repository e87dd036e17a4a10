"""grain pipelines: a seeded, per-process-sharded, checkpointable stream of batches."""

import dataclasses

import grain
import numpy as np

from genimg_jax.images import uint8_to_float


@dataclasses.dataclass(frozen=True)
class ToModelInput(grain.transforms.Map):
  """{'image': uint8 [H,W,C], 'label': int} -> {'image': float32 [-1,1], 'label': int32}."""

  def map(self, element):
    return {"image": uint8_to_float(np.asarray(element["image"])),
            "label": np.int32(element["label"])}


@dataclasses.dataclass(frozen=True)
class RandomHorizontalFlip(grain.transforms.RandomMap):
  """Flips element['image'] [H, W, C] left-right with probability 1/2."""

  def random_map(self, element, rng: np.random.Generator):
    if rng.random() < 0.5:
      element = dict(element, image=element["image"][:, ::-1])
    return element


def train_dataset(source, *, seed: int, local_batch_size: int, process_index: int,
                  process_count: int, random_flip: bool, prefetch_batches: int = 4) -> grain.IterDataset:
  """An endless stream of batches for this process.

  The order is a pure function of (seed, epoch, position): the whole split is
  shuffled with a new permutation each epoch, then process p takes every
  `process_count`-th element starting at p. Two threads read ahead up to
  `prefetch_batches` batches while the device computes. Each batch is a dict of numpy arrays:
  'image' [local_batch_size, H, W, C] float32 in [-1, 1], 'label' [local_batch_size] int32.
  """
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = ds[process_index::process_count]
  if random_flip:
    ds = ds.random_map(RandomHorizontalFlip(), seed=seed + 1)
  ds = ds.map(ToModelInput()).batch(local_batch_size, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch_batches))


def eval_dataset(source, *, local_batch_size: int, process_index: int,
                 process_count: int) -> grain.MapDataset:
  """One pass over a split in file order, this process's share, in full batches only.

  Elements as in `train_dataset`; a last partial batch is dropped.
  """
  ds = grain.MapDataset.source(source)[process_index::process_count]
  return ds.map(ToModelInput()).batch(local_batch_size, drop_remainder=True)
