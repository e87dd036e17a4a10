r"""Feature-extraction throughput of the evaluation's feature networks.

  python benchmarks/feature_speed.py [--batch_size 32] [--nets inception,classifier16]

For each network: compile seconds and images/s after compile (median of timed
windows, synchronised with block_until_ready) of the same jitted, mesh-sharded
function `genimg eval` runs (uint8 images in, features and logits out).
Weights are random (speed does not depend on them): InceptionV3 from its
initialiser, with uint8 inputs of --inception_input pixels resized to 299x299
inside; the classifier at each listed digits size. Prints a markdown table and
writes JSON (--out).
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _net(name: str, inception_input: int):
  """(FeatureNet with random weights, input shape (H, W, C), description)."""
  import jax
  import jax.numpy as jnp

  from genimg_jax.evaluation import classifier, features
  from genimg_jax.models import inception
  from genimg_jax.models.classifier import SmallClassifier

  if name == "inception":
    variables = jax.jit(inception.InceptionV3().init)(jax.random.PRNGKey(0),
                                                       jnp.zeros((1, 299, 299, 3), jnp.float32))
    side = inception_input
    return (features.FeatureNet("inception", "inception", variables, features.apply_inception),
            (side, side, 3), f"InceptionV3 (FID), {side}x{side}x3 -> 299x299")
  size = int(name.removeprefix("classifier"))
  params = SmallClassifier(10).init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))["params"]
  return (features.FeatureNet(name, name, {"params": params}, classifier.apply_fn(10)), (size, size, 1),
          f"classifier, {size}x{size}x1")


def measure(name: str, batch_size: int, windows: int, batches_per_window: int, inception_input: int) -> dict:
  import jax
  import numpy as np

  from genimg_jax.evaluation import features
  from genimg_jax.parallel import mesh as mesh_lib

  net, shape, description = _net(name, inception_input)
  mesh = mesh_lib.make_mesh()
  extractor = features.Extractor(net, mesh)
  images = mesh_lib.to_global(np.random.default_rng(0).integers(0, 256, (batch_size,) + shape, dtype=np.uint8), mesh)
  start = time.perf_counter()
  compiled = extractor.fn.jitted.lower(extractor.variables, images).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(extractor.variables, images))  # Warm-up, untimed.
  seconds = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(batches_per_window):
      out = compiled(extractor.variables, images)
    jax.block_until_ready(out)
    seconds.append((time.perf_counter() - start) / batches_per_window)
  batch_s = statistics.median(seconds)
  return {"net": name, "description": description, "device": jax.devices()[0].device_kind,
          "num_devices": jax.device_count(), "batch_size": batch_size, "compile_s": compile_s,
          "batch_s": batch_s, "images_per_s": batch_size / batch_s,
          "feature_dim": int(out["features"].shape[-1])}


def table(rows: list[dict]) -> str:
  lines = ["| feature net | features | device | batch | images/s | ms/batch | compile s |", "|" + "---|" * 7]
  for r in rows:
    lines.append(f"| {r['description']} | {r['feature_dim']} | {r['device']} x{r['num_devices']} | {r['batch_size']} | "
                 f"{r['images_per_s']:.1f} | {1000 * r['batch_s']:.1f} | {r['compile_s']:.1f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--nets", default="inception,classifier8,classifier16,classifier28")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--batches_per_window", type=int, default=3)
  parser.add_argument("--inception_input", type=int, default=32, help="side of the uint8 inputs (resized to 299)")
  parser.add_argument("--out", default="benchmarks/results/feature_speed.json")
  args = parser.parse_args()

  loadavg = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
  if loadavg and float(loadavg[0]) > 0.5:
    print(f"warning: load average {loadavg[0]} before starting: timings may be low", file=sys.stderr)
  rows = [measure(name, args.batch_size, args.windows, args.batches_per_window, args.inception_input)
          for name in args.nets.split(",")]
  print(table(rows))
  out = os.path.join(REPO, args.out) if not os.path.isabs(args.out) else args.out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"loadavg_before": loadavg, "rows": rows}, f, indent=2)
  print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
  main()
