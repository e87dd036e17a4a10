"""Shared test helpers: a tiny diffusion config, and a script entry point for subprocess runs.

As a script (used where a test needs its own device count):
  python tests/helpers.py DATA_DIR WORKDIR OUT.npz STEPS
trains the tiny config and saves its final TrainState, flattened, to OUT.npz.
"""

import glob
import os
import re
import struct
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_CONFIG = os.path.join(REPO, "configs", "ddpm_digits.py")


# ddpm_digits shrunk for tests: 8x8 images, a 2-level UNet, T=100, batch 16.
TINY_OVERRIDES = {
    "data.image_size": 8,
    "model.ch": 16,
    "model.ch_mult": (1, 2),
    "model.num_res_blocks": 1,
    "model.attn_resolutions": (4,),
    "model.norm_groups": 4,
    "model.dropout": 0.1,
    "diffusion.num_timesteps": 100,
    "optimizer.warmup_steps": 10,
    "train.batch_size": 16,
    "train.log_every": 5,
    "train.checkpoint_every": 10,
    "train.num_samples": 8,
    "sample.sampler": "ddim",
    "sample.steps": 5,
}


def tiny_args(data_dir: str, steps: int = 20, seed: int = 0) -> list[str]:
  """The tiny config as `--config.x=y` command-line overrides of configs/ddpm_digits.py."""
  fields = dict(TINY_OVERRIDES, **{"data.data_dir": data_dir, "train.steps": steps, "seed": seed})
  return [f"--config.{k}={v}" for k, v in fields.items()]


def tiny_config(data_dir: str, steps: int = 20, seed: int = 0):
  """The tiny config as a locked ConfigDict."""
  from genimg_jax import config as config_lib

  return config_lib.load(DIGITS_CONFIG, tiny_args(data_dir, steps, seed))


def readme_block(first_line: str, language: str = "python", document: str = "README.md") -> str:
  """The one fenced `language` block of `document` (README.md, or a guide as "docs/diffusion.md") that starts
  with `first_line`."""
  text = open(os.path.join(REPO, document)).read()
  blocks = re.findall(rf"```{language}\n({re.escape(first_line)}\n.*?)```", text, flags=re.S)
  assert len(blocks) == 1, f"{document} must show one {language} block starting {first_line!r}"
  return blocks[0]


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from the TensorBoard event files of a run."""
  from tensorboardX.proto import event_pb2

  scalars = {}
  for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.*"))):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def flat_params(tree) -> dict[str, np.ndarray]:
  """{path: numpy array} for every leaf of a pytree, path as jax.tree_util.keystr writes it."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def main(data_dir: str, workdir: str, out: str, steps: str) -> None:
  from genimg_jax.parallel import runtime
  from genimg_jax.train import trainer

  config = tiny_config(data_dir, steps=int(steps))
  runtime.setup(config)
  state = trainer.train(config, workdir, show_progress=False)
  np.savez(out, num_devices=jax.device_count(), **flat_params(state))


def assert_states_close(got: dict, want: dict, rtol: float = 1e-5):
  """Every array within rtol of the largest magnitude of its counterpart.

  Left out: the attention's key bias (qkv bias [1]) and its Adam moments. Adding a
  constant to every key's logit leaves the softmax unchanged, so its gradient is zero
  in exact arithmetic; Adam normalises the float rounding noise of that zero into
  learning-rate-sized steps, which differ with any change of summation order.
  """
  assert got.keys() == want.keys()
  for k in want:
    a, b = got[k], want[k]
    if k.endswith("['qkv']['bias']"):
      a, b = a[[0, 2]], b[[0, 2]]
    scale = max(float(np.abs(b).max()), 1e-12)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale, err_msg=k)


if __name__ == "__main__":
  main(*sys.argv[1:])
