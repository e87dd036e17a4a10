"""The InceptionV3 port against pytorch-fid's network with the same random weights.

Skipped, with the reason, where torch or pytorch-fid is not installed.
"""

import sys

import numpy as np
import pytest

from genimg_jax import cli
from genimg_jax.errors import DataError
from genimg_jax.evaluation import inception_weights
from genimg_jax.models import inception


def _import_pytorch_fid(torch):
  """pytorch_fid.inception, or None.

  torchvision's PyPI wheels are built for a CUDA torch: beside a CPU-only torch
  their C++ ops do not load and the import stops registering fakes of the two
  NMS ops. pytorch-fid needs only torchvision's Python model code, so those two
  schemas are declared and the import is tried once more.
  """
  try:
    import pytorch_fid.inception
  except ImportError:
    return None
  except RuntimeError as e:
    if "torchvision::nms does not exist" not in str(e):
      raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "pytorch_fid"))]:
      del sys.modules[name]
    for op in ("nms", "qnms"):
      torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import pytorch_fid.inception
  return pytorch_fid.inception


def _torch_modules():
  torch = pytest.importorskip("torch", reason="torch is not installed: the InceptionV3 equivalence check is skipped")
  fid_inception = _import_pytorch_fid(torch)
  if fid_inception is None:
    pytest.skip("pytorch-fid is not installed: the InceptionV3 equivalence check is skipped")
  return torch, fid_inception


def _randomize(torch, net, seed: int) -> None:
  """He-normal convolutions and random batch norm statistics, so every parameter matters."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in net.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if p.ndim >= 2:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
      elif name.endswith("running_var") or name.endswith("bn.weight"):
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def random_pytorch_fid(tmp_path_factory):
  """(pytorch-fid InceptionV3 with random weights, its fc layer, the weights saved as a .pth)."""
  torch, fid_inception = _torch_modules()
  source = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  _randomize(torch, source, seed=0)
  state = source.state_dict()
  original = fid_inception.load_state_dict_from_url
  fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state  # No download.
  try:
    net = fid_inception.InceptionV3([3]).eval()
  finally:
    fid_inception.load_state_dict_from_url = original
  pth = tmp_path_factory.mktemp("inception") / "random.pth"
  torch.save(state, pth)
  return net, source.fc.eval(), str(pth)


def test_features_equal_pytorch_fid(random_pytorch_fid, tmp_path):
  import jax
  import torch

  net, fc, pth = random_pytorch_fid
  npz = str(tmp_path / "inception.npz")
  assert cli.main(["eval", "convert-inception", "--pth", pth, "--out", npz]) == 0
  assert len(np.load(npz).files) > 300
  variables = inception_weights.load(npz)
  images = np.random.default_rng(0).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    pool = net(x)[0][:, :, 0, 0]
    expected = {"pool": pool.numpy(), "logits": fc(pool).numpy(),
                "logits_unbiased": (pool @ fc.weight.T).numpy()}
  ours = jax.jit(lambda v, u: inception.InceptionV3().apply(v, inception.preprocess(u)))(variables, images)
  for key, want in expected.items():
    got = np.asarray(ours[key])
    relative = np.max(np.abs(got - want)) / np.max(np.abs(want))
    print(f"InceptionV3 {key}: max |ours - pytorch-fid| / max |pytorch-fid| = {relative:.2e}")
    assert relative < 1e-4, (key, relative)
  assert np.std(expected["pool"]) > 1e-3  # The random weights give features that vary.


def test_resize_equals_torch_interpolate_without_antialias():
  torch, _ = _torch_modules()
  images = np.random.default_rng(1).random((2, 301, 517, 3)).astype(np.float32)
  ours = np.asarray(inception.resize_bilinear(images, 299))
  theirs = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2), size=(299, 299),
                                           mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_bilinear_matrix_rows_sum_to_one_and_upsample_ramps_exactly():
  weights = inception.bilinear_matrix(7, 299)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
  ramp = weights @ np.arange(7.0)
  src = np.clip((np.arange(299) + 0.5) * 7 / 299 - 0.5, 0, 6)  # Linear data is reproduced.
  np.testing.assert_allclose(ramp, src, atol=1e-6)


def test_missing_weights_say_where_to_get_them(tmp_path):
  path = str(tmp_path / "nowhere" / "inception_v3_fid.npz")
  with pytest.raises(DataError) as error:
    inception_weights.load(path)
  message = str(error.value)
  assert path in message and inception_weights.PTH_URL in message
  assert f"genimg eval convert-inception --pth {inception_weights.PTH_NAME} --out {path}" in message


def test_wrong_weights_name_the_problem(tmp_path):
  path = str(tmp_path / "bad.npz")
  np.savez(path, **{"params/fc/kernel": np.zeros((3, 3), np.float32)})
  with pytest.raises(DataError, match=r"not the FID InceptionV3 weights .*params/fc/kernel: shape \(3, 3\)"):
    inception_weights.load(path)
