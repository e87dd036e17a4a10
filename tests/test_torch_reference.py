"""The PyTorch references in benchmarks/torch_reference/ have our models' parameters, tensor by tensor in size,
and the diffusion reference's EDM and flow objectives are ours: the same loss on the same draws, the same
distributions of noise levels, times and dropped labels."""

import jax
import numpy as np
import pytest

from benchmarks.run import FAMILY_CONFIGS, load_config
from genimg_jax import methods
from genimg_jax.diffusion import edm, flow

torch = pytest.importorskip("torch")
from benchmarks import torch_reference  # noqa: E402
from benchmarks.torch_reference import diffusion as reference_diffusion  # noqa: E402


@pytest.mark.parametrize("name", [n for pair in FAMILY_CONFIGS.values() for n in pair] + ["dit_digits_cond"])
def test_reference_has_our_parameter_sizes(name):
  config = load_config(name, {})
  ours = jax.eval_shape(methods.make(config).init, jax.random.PRNGKey(0)).params
  with torch.device("meta"):  # sizes without values: initialising a CIFAR-10 UNet takes seconds on a CPU
    reference = torch_reference.build(config.method, config, torch.device("meta"))
  theirs = [p.numel() for m in reference.modules.values() for p in m.parameters() if p.requires_grad]
  assert reference.num_params == sum(x.size for x in jax.tree.leaves(ours))
  assert sorted(theirs) == sorted(x.size for x in jax.tree.leaves(ours))


# Stand-in networks, written once for jax and torch arrays: zero, and one that reads its input and noise label.
STAND_INS = {"zero": lambda x, label: 0.0 * x, "affine": lambda x, label: 0.7 * x - 0.3 * label[:, None, None, None]}


def _float64(a) -> torch.Tensor:
  return torch.tensor(np.asarray(a, np.float64))


def _network(stand_in):
  """The stand-in as the network of ours' loss contexts."""
  return lambda params, x, label, rng, labels: stand_in(x, label)


@pytest.mark.parametrize("stand_in", sorted(STAND_INS))
def test_edm_loss_is_ours_on_the_same_draws(stand_in):
  """Ours' draws (sigma, n) fed to the torch loss in float64 give our loss; with F = 0 both are the
  mean of lambda ||(c_skip - 1) x0 + c_skip sigma n||^2, computed here in float64."""
  x0 = jax.random.uniform(jax.random.PRNGKey(5), (6, 4, 4, 2), minval=-1, maxval=1)
  rng = jax.random.PRNGKey(7)
  sigma_rng, noise_rng, _ = jax.random.split(rng, 3)  # as edm_loss splits it
  sigma = edm.training_sigmas(sigma_rng, 6)
  n = jax.random.normal(noise_rng, x0.shape)
  ours, _ = edm.edm_loss(None, {"image": x0}, rng, ctx=edm.EDMContext(_network(STAND_INS[stand_in])))
  theirs = reference_diffusion.edm_loss(STAND_INS[stand_in], _float64(x0), _float64(sigma), _float64(n), 0.5)
  assert theirs.dtype == torch.float64
  assert float(theirs) == pytest.approx(float(ours), rel=1e-5)
  if stand_in == "zero":
    s64, n64, x64 = (np.asarray(a, np.float64) for a in (sigma, n, x0))
    c_skip = (0.25 / (s64**2 + 0.25))[:, None, None, None]
    err = (c_skip - 1) * x64 + c_skip * s64[:, None, None, None] * n64
    want = np.mean((s64**2 + 0.25) / (s64 * 0.5) ** 2 * np.mean(err**2, axis=(1, 2, 3)))
    assert float(theirs) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("stand_in", sorted(STAND_INS))
def test_flow_loss_is_ours_on_the_same_draws(stand_in):
  """Ours' draws (t, eps) fed to the torch loss in float64 give our loss; the torch network sees the noise
  label 999 t where ours' loss hands the network t; with v = 0 both are the mean of (eps - x0)^2."""
  x0 = jax.random.uniform(jax.random.PRNGKey(5), (6, 4, 4, 2), minval=-1, maxval=1)
  rng = jax.random.PRNGKey(8)
  t_rng, noise_rng, _ = jax.random.split(rng, 3)  # as flow_loss splits it
  t = flow.training_times(t_rng, 6, "uniform")
  eps = jax.random.normal(noise_rng, x0.shape)
  ours, _ = flow.flow_loss(None, {"image": x0}, rng, ctx=flow.FlowContext(_network(STAND_INS[stand_in])))
  network = lambda x, label: STAND_INS[stand_in](x, label / reference_diffusion.FLOW_TIME_SCALE)
  theirs = reference_diffusion.flow_loss(network, _float64(x0), _float64(t), _float64(eps))
  assert theirs.dtype == torch.float64
  assert float(theirs) == pytest.approx(float(ours), rel=1e-5)
  if stand_in == "zero":
    assert float(theirs) == pytest.approx(np.mean((np.asarray(eps, np.float64) - np.asarray(x0, np.float64)) ** 2),
                                          rel=1e-12)


class _Recorder(torch.nn.Module):
  """A stand-in network: zeros, recording the noise labels and labels it was given."""

  def forward(self, x, noise_label, labels):
    self.noise_label, self.labels = noise_label, labels
    return torch.zeros_like(x)


@pytest.mark.parametrize("process,time_schedule", [("edm", None), ("flow", "uniform"), ("flow", "logit_normal")])
def test_objectives_draw_noise_levels_and_drop_labels_as_ours(process, time_schedule):
  """ln sigma ~ N(-1.2, 1.2^2) (EDM: the network sees c_noise = ln(sigma) / 4), t uniform or logit-normal
  (flow: it sees 999 t), 10% of the labels replaced by the null label 10, the others kept."""
  torch.manual_seed(0)
  num = 20000
  recorder = _Recorder()
  if process == "edm":
    objective = reference_diffusion.EDMLoss(recorder, 0.5, -1.2, 1.2, num_classes=10, label_dropout=0.1)
  else:
    objective = reference_diffusion.FlowLoss(recorder, time_schedule, num_classes=10, label_dropout=0.1)
  labels = torch.randint(0, 10, (num,))
  objective(torch.zeros(num, 1, 1, 1), labels)
  noise_label = recorder.noise_label.numpy().astype(np.float64)
  if process == "edm":
    assert np.mean(4 * noise_label) == pytest.approx(-1.2, abs=0.03)
    assert np.std(4 * noise_label) == pytest.approx(1.2, rel=0.03)
  else:
    t = noise_label / 999.0
    assert np.all((t > 0) & (t < 1))
    if time_schedule == "uniform":
      assert np.mean(t) == pytest.approx(0.5, abs=0.01) and np.var(t) == pytest.approx(1 / 12, rel=0.03)
    else:
      assert np.mean(np.log(t / (1 - t))) == pytest.approx(0.0, abs=0.03)
      assert np.std(np.log(t / (1 - t))) == pytest.approx(1.0, rel=0.03)
  dropped = recorder.labels == 10
  assert float(dropped.double().mean()) == pytest.approx(0.1, abs=0.01)
  assert torch.equal(recorder.labels[~dropped], labels[~dropped])


def test_an_unconditional_objective_hands_the_network_no_labels():
  recorder = _Recorder()
  reference_diffusion.FlowLoss(recorder, "uniform")(torch.zeros(4, 2, 2, 1), torch.zeros(4, dtype=torch.long))
  assert recorder.labels is None
