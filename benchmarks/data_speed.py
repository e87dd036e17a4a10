r"""Input-pipeline throughput next to what the train steps consume.

  python benchmarks/data_speed.py [--npz ../shared/data/cifar10_test_first1000.npz] [--batch_size 64]

Images/s the grain training pipeline delivers (shuffle, decode, per-image
preprocessing, batching; median of timed windows after a warm-up) for:
digits 16x16x1 (the offline data set), 32x32x3 and 64x64x3 user data prepared
from --npz (64x64 upsampled at preparation; random images when the file is
missing), and CelebA-style 218x178 -> crop 140 -> 64x64 resized on the fly
(in-memory source, so no decoding). Each with threads (num_workers=0) and with
worker processes, delivering float32 in [-1, 1] (what the library does, on the
host) and, for the decision, uint8 (conversion left to the device). Next to
them: the train-step images/s of the configs at that size, read from
benchmarks/results/speed.json. Prints a markdown table and writes JSON (--out).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _throughput(dataset, batch_size: int, windows: int, batches_per_window: int) -> float:
  it = iter(dataset)
  for _ in range(5):  # Warm-up: worker start-up, first reads.
    next(it)
  rates = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(batches_per_window):
      next(it)
    rates.append(batches_per_window * batch_size / (time.perf_counter() - start))
  return statistics.median(rates)


class InMemory:
  """A random-access source of uint8 images [n, H, W, C] held in memory."""

  def __init__(self, images):
    self.images = images

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": 0}


def _uint8_variant(source, data, batch_size: int):
  """The training pipeline up to batching, with images left uint8 (for the host-vs-device decision)."""
  import grain

  from genimg_jax.data import pipeline

  ds = pipeline._per_image(grain.MapDataset.source(source).shuffle(seed=0).repeat(None), data)
  ds = ds.batch(batch_size, drop_remainder=True)  # Sources here hold only 'image' and 'label'.
  if data.num_workers:
    return ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=data.prefetch_batches))


def _consumed(size: int) -> list[str]:
  path = os.path.join(REPO, "benchmarks", "results", "speed.json")
  if not os.path.exists(path):
    return []
  rows = json.load(open(path))["rows"]
  sizes = {"ddpm_digits": 16, "ddpm_cifar10": 32}
  return [f"{r['config']} {r['train_images_per_s']:.1f}" for r in rows if sizes.get(r["config"]) == size]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--npz", default=os.path.join(REPO, "..", "shared", "data", "cifar10_test_first1000.npz"))
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--batches_per_window", type=int, default=20)
  parser.add_argument("--out", default="benchmarks/results/data_speed.json")
  args = parser.parse_args()

  import numpy as np
  import PIL.Image
  from absl import flags

  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags.
  from genimg_jax import config as config_lib
  from genimg_jax.data import datasets, pipeline

  data_dir = tempfile.mkdtemp(prefix="genimg_data_speed_")
  npz_note = args.npz
  if not os.path.exists(args.npz):
    npz_note = "random images (no --npz file)"
    args.npz = os.path.join(data_dir, "random.npz")
    np.savez(args.npz, images=np.random.default_rng(0).integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8))
  base = np.load(args.npz)["images"]
  celeb_like = np.stack([np.asarray(PIL.Image.fromarray(im).resize((178, 218)))
                         for im in base[:256]])

  cases = [
      ("digits 16x16x1", 16, dict(name="digits", image_size=16, channels=1), None),
      ("npz 32x32x3", 32, dict(name="npz", path=args.npz, image_size=32, channels=3, holdout_fraction=0.0,
                               eval_split="train"), None),
      ("npz 64x64x3 (upsampled at preparation)", 64, dict(name="npz", path=args.npz, image_size=64, channels=3,
                                                          holdout_fraction=0.0, eval_split="train"), None),
      ("218x178 -> crop 140 -> 64x64 on the fly", 64, dict(name="celeb_a", image_size=64, channels=3,
                                                            crop_size=140, eval_split="validation"), celeb_like),
  ]
  rows = []
  for label, size, fields, in_memory in cases:
    config = config_lib.load(os.path.join(REPO, "configs", "ddpm_digits.py"), [f"--config.data.data_dir={data_dir}"])
    config.unlock()
    config.data.update(fields)
    source = InMemory(in_memory) if in_memory is not None else datasets.open_split(config.data, "train")
    for workers in (0, args.workers):
      config.data.num_workers = workers
      for dtype in ("float32", "uint8"):
        if dtype == "float32":
          ds = pipeline.train_dataset(source, config.data, seed=0, local_batch_size=args.batch_size,
                                      process_index=0, process_count=1)
        else:
          ds = _uint8_variant(source, config.data, args.batch_size)
        rate = _throughput(ds, args.batch_size, args.windows, args.batches_per_window)
        rows.append({"data": label, "size": size, "workers": workers, "dtype": dtype, "images_per_s": rate,
                     "train_step_consumes": _consumed(size)})
        print(f"measured {label} workers={workers} {dtype}: {rate:.0f} img/s", file=sys.stderr)

  lines = ["| data | workers | delivers | pipeline img/s | train step img/s at this size |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['data']} | {r['workers']} | {r['dtype']} | {r['images_per_s']:.0f} | "
                 f"{', '.join(r['train_step_consumes']) or '-'} |")
  print("\n".join(lines))
  out = os.path.join(REPO, args.out) if not os.path.isabs(args.out) else args.out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"npz": npz_note, "batch_size": args.batch_size, "cpu_count": os.cpu_count(),
               "loadavg": open("/proc/loadavg").read().split()[:3], "rows": rows}, f, indent=2)
  print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
  main()
