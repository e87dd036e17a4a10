"""The PyTorch references in benchmarks/torch_reference/ have our models' parameters, tensor by tensor in size."""

import jax
import pytest

from benchmarks.run import FAMILY_CONFIGS, load_config
from genimg_jax import methods

torch = pytest.importorskip("torch")
from benchmarks import torch_reference  # noqa: E402


@pytest.mark.parametrize("name", [n for pair in FAMILY_CONFIGS.values() for n in pair])
def test_reference_has_our_parameter_sizes(name):
  config = load_config(name, {})
  ours = jax.eval_shape(methods.make(config).init, jax.random.PRNGKey(0)).params
  reference = torch_reference.build(config.method, config, torch.device("cpu"))
  theirs = [p.numel() for m in reference.modules.values() for p in m.parameters() if p.requires_grad]
  assert reference.num_params == sum(x.size for x in jax.tree.leaves(ours))
  assert sorted(theirs) == sorted(x.size for x in jax.tree.leaves(ours))
