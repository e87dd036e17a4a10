"""The FID InceptionV3 weights: converting pytorch-fid's .pth once, loading the .npz without pickle.

pytorch-fid's file holds the 2015-12-05 TensorFlow FID weights as a PyTorch state
dict. `genimg eval convert-inception --pth FILE --out FILE.npz` (needs torch for
this step only) writes them as a plain .npz with one array per flax variable,
named 'params/Mixed_5b/branch1x1/conv/kernel', 'batch_stats/.../bn/mean', ...
"""

import os
from typing import Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from genimg_jax.errors import DataError
from genimg_jax.evaluation import cache
from genimg_jax.models.inception import INPUT_SIZE, InceptionV3

PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"
PTH_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PTH_NAME}"
NPZ_NAME = "inception_v3_fid.npz"


def default_path(data_dir: str) -> str:
  """Where the converted weights are looked for by default: <data dir>/genimg_feature_nets/inception_v3_fid.npz."""
  return os.path.join(data_dir, cache.FEATURE_NETS_DIR, NPZ_NAME)


def how_to_get(out_path: str) -> str:
  """The steps that put the converted weights at out_path."""
  return (f"download {PTH_NAME} from {PTH_URL} (pytorch-fid's FID weights), then convert it once with "
          f"`genimg eval convert-inception --pth {PTH_NAME} --out {out_path}` (needs `pip install torch`)")


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """{flat name: shape} of every variable of InceptionV3."""
  abstract = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(abstract, sep="/").items()}


def _check(flat: Mapping[str, np.ndarray], where: str) -> None:
  expected = expected_shapes()
  problems = [f"{k}: shape {tuple(flat[k].shape)}, expected {expected[k]}"
              for k in sorted(expected.keys() & flat.keys()) if tuple(flat[k].shape) != expected[k]]
  problems += [f"{k}: unexpected" for k in sorted(flat.keys() - expected.keys())]
  problems += [f"{k}: missing" for k in sorted(expected.keys() - flat.keys())]
  if problems:
    raise DataError(where, f"not the FID InceptionV3 weights ({len(problems)} problem(s): "
                    f"{'; '.join(problems[:5])})")


def from_torch_state(state: Mapping[str, np.ndarray], where: str = "state dict") -> dict[str, np.ndarray]:
  """pytorch-fid's state dict (as numpy arrays) -> {flat flax name: float32 array}.

  Conv kernels [O, I, kh, kw] become [kh, kw, I, O], the classifier's [1008, 2048]
  becomes [2048, 1008]; batch norm weight/bias/running_mean/running_var become
  scale/bias/mean/var; num_batches_tracked is dropped. Raises DataError naming
  `where` when the names or shapes are not those of the FID InceptionV3.
  """
  renames = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
  flat = {}
  for name, value in state.items():
    *path, leaf = name.split(".")
    value = np.asarray(value, np.float32)
    if leaf == "num_batches_tracked":
      continue
    if path and path[-1] == "bn":
      collection = "batch_stats" if leaf.startswith("running_") else "params"
      flat["/".join([collection, *path, renames[leaf]])] = value
    elif leaf == "weight":
      kernel = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
      flat["/".join(["params", *path, "kernel"])] = kernel
    else:
      flat["/".join(["params", *path, leaf])] = value
  _check(flat, where)
  return flat


def convert_pth(pth_path: str, out_path: str) -> int:
  """Converts pytorch-fid's .pth (loaded with weights_only=True) to a plain .npz; returns the array count."""
  try:
    import torch
  except ImportError:
    raise DataError("--pth", "converting the .pth needs PyTorch once: pip install torch") from None
  if not os.path.isfile(pth_path):
    raise DataError(pth_path, f"no such file; {how_to_get(out_path)}")
  state = torch.load(pth_path, map_location="cpu", weights_only=True)
  flat = from_torch_state({k: v.numpy() for k, v in state.items()}, pth_path)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  np.savez(out_path, **flat)
  return len(flat)


def load(path: str) -> dict:
  """The InceptionV3 variables {'params': ..., 'batch_stats': ...} from a converted .npz (no pickle).

  Raises DataError when the file is missing (saying where to get the weights and
  how to convert them) or does not hold the FID InceptionV3's variables.
  """
  if not os.path.isfile(path):
    raise DataError(path, f"the FID InceptionV3 weights are missing: {how_to_get(path)}")
  with np.load(path, allow_pickle=False) as data:
    flat = {k: data[k] for k in data.files}
  _check(flat, path)
  return flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
