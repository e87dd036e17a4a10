"""grain pipelines: a seeded, per-process-sharded, checkpointable stream of batches."""

import dataclasses

import grain
import ml_collections
import numpy as np

from genimg_jax.data import datasets, preprocess
from genimg_jax.images import uint8_to_float


@dataclasses.dataclass(frozen=True)
class CenterCropResize(grain.transforms.Map):
  """element['image'] uint8 [H, W, C] -> uint8 [size, size, C] (preprocess.center_crop_resize)."""

  size: int
  crop_size: int

  def map(self, element):
    image = preprocess.center_crop_resize(np.asarray(element["image"]), self.size, self.crop_size)
    return dict(element, image=image)


@dataclasses.dataclass(frozen=True)
class ToModelInput(grain.transforms.Map):
  """{'image': uint8 [H,W,C], 'label': int (absent: 0), ...} -> {'image': float32 [-1,1], 'label': int32}."""

  def map(self, element):
    return {"image": uint8_to_float(np.asarray(element["image"])),
            "label": np.int32(element.get("label", 0))}


@dataclasses.dataclass(frozen=True)
class RandomHorizontalFlip(grain.transforms.RandomMap):
  """Flips element['image'] [H, W, C] left-right with probability 1/2."""

  def random_map(self, element, rng: np.random.Generator):
    if rng.random() < 0.5:
      element = dict(element, image=element["image"][:, ::-1])
    return element


@dataclasses.dataclass(frozen=True)
class UniformDequantize(grain.transforms.RandomMap):
  """Adds (u - 1/2) / 127.5, u ~ U[0, 1) per value, to float32 images in [-1, 1].

  Pixel value k maps to k / 127.5 - 1, so each value spreads uniformly over its own
  8-bit bin [k - 1/2, k + 1/2] / 127.5 - 1, the bins the discrete likelihoods use.
  """

  def random_map(self, element, rng: np.random.Generator):
    image = element["image"]
    noise = (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) / np.float32(127.5)
    return dict(element, image=image + noise)


def _per_image(ds, data: ml_collections.ConfigDict):
  if datasets.needs_resize(data):
    ds = ds.map(CenterCropResize(data.image_size, data.crop_size))
  return ds


class ProcessBlocks(grain.MapDataset):
  """This process's part of a stream cut into global batches.

  Global batch b holds elements [b * B, (b + 1) * B) of `parent` (B = local_batch_size
  * process_count); process p takes the contiguous block [p * L, (p + 1) * L) of each,
  L = local_batch_size, starting at global batch `start_batch`. Concatenating the
  processes' local batches in process order gives the global batch, so the global
  batch does not depend on the number of processes.
  """

  def __init__(self, parent: grain.MapDataset, local_batch_size: int, process_index: int,
               process_count: int, start_batch: int = 0):
    super().__init__(parent)
    self._local, self._index, self._count, self._start = local_batch_size, process_index, process_count, start_batch
    blocks = len(parent) // (local_batch_size * process_count) - start_batch
    self._length = max(0, blocks) * local_batch_size

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, offset = divmod(index, self._local)
    return self._parent[(self._start + batch) * self._local * self._count + self._index * self._local + offset]

  def __str__(self) -> str:
    return f"ProcessBlocks(local={self._local}, process={self._index}/{self._count}, start={self._start})"


def train_dataset(source, data: ml_collections.ConfigDict, *, seed: int, local_batch_size: int,
                  process_index: int, process_count: int, start_batch: int = 0) -> grain.IterDataset:
  """An endless stream of batches for this process, from global batch `start_batch` on.

  The global stream is a pure function of (seed, epoch, position): the whole split
  is shuffled with a new permutation each epoch, and per image, as config.data
  says: center crop + resize, random flip, uniform dequantization (random draws
  keyed by the element's global position). Global batch b is its next
  local_batch_size * process_count elements and process p takes block p of it
  (ProcessBlocks), so the global batches are the same for any process count.
  Reading runs in data.num_workers worker processes (0: two threads of this one)
  up to data.prefetch_batches batches ahead; the order does not depend on either.
  Each batch is a dict of numpy arrays: 'image' [local_batch_size, H, W, C] float32
  in [-1, 1] (wider by half a level with dequantize), 'label' [local_batch_size] int32.
  """
  ds = _per_image(grain.MapDataset.source(source).shuffle(seed=seed).repeat(None), data)
  if data.random_flip:
    ds = ds.random_map(RandomHorizontalFlip(), seed=seed + 1)
  ds = ds.map(ToModelInput())
  if data.dequantize:
    ds = ds.random_map(UniformDequantize(), seed=seed + 2)
  ds = ProcessBlocks(ds, local_batch_size, process_index, process_count, start_batch)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  if data.num_workers:
    # Each worker reads every num_workers-th batch; mp_prefetch interleaves them back in order.
    return ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.num_workers, per_worker_buffer_size=max(1, data.prefetch_batches)))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=data.prefetch_batches))


def eval_dataset(source, data: ml_collections.ConfigDict, *, local_batch_size: int, process_index: int,
                 process_count: int) -> grain.MapDataset:
  """One pass over a split in file order in full global batches, this process's block of each.

  Images are cropped and resized as in `train_dataset`, never flipped or
  dequantized; a last partial global batch is dropped.
  """
  ds = _per_image(grain.MapDataset.source(source), data).map(ToModelInput())
  return ProcessBlocks(ds, local_batch_size, process_index, process_count).batch(local_batch_size)
