"""The PyTorch references in benchmarks/torch_reference/ have our models' parameters, tensor by tensor in size,
and the diffusion reference's objectives are ours: the same loss on the same draws (EDM, flow, MeanFlow with its
torch.func.jvp target, consistency training, shortcut models; MeanFlow's against a closed form too), the same
distributions of noise levels, times and dropped labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.run import DIT_DIGITS, FAMILY_CONFIGS, load_config
from genimg_jax import methods
from genimg_jax.diffusion import consistency, edm, flow, meanflow, shortcut

torch = pytest.importorskip("torch")
from benchmarks import torch_reference  # noqa: E402
from benchmarks.torch_reference import diffusion as reference_diffusion  # noqa: E402


# Besides the suite's configs: the class-conditional DiT and MeanFlow, the CIFAR-10 MeanFlow and consistency
# UNets, and the DiT with a second time input.
EXTRA_CONFIGS = [("dit_digits_cond", {}), ("meanflow_digits_cond", {}), ("meanflow_cifar10", {}),
                 ("consistency_cifar10", {}), ("meanflow_digits", DIT_DIGITS), ("shortcut_digits", DIT_DIGITS)]


@pytest.mark.parametrize("name,overrides", [(n, {}) for names in FAMILY_CONFIGS.values() for n in names]
                         + EXTRA_CONFIGS)
def test_reference_has_our_parameter_sizes(name, overrides):
  config = load_config(name, overrides)
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


def _meanflow_stand_in(x, label):
  """u(z, r, t) = 0.5 z^2 t - 0.3 z (t - r) + 0.2 t^2 from the noise label (t, t - r): not linear in z or t."""
  t, gap = label[:, 0][:, None, None, None], label[:, 1][:, None, None, None]
  return 0.5 * x * x * t - 0.3 * x * gap + 0.2 * t * t


def test_meanflow_loss_is_ours_on_the_same_draws_and_its_jvp_target_the_closed_form():
  """Ours' draws (r, t, eps) fed to the torch loss in float64 give our loss (ours' jax.jvp target against
  torch.func.jvp's); both are the closed form, du/dt = z v t + z^2 / 2 - 0.3 (v (t - r) + z) + 0.4 t, with the
  adaptive weight 1 / (||delta||^2 + c)^p, in float64."""
  x0 = jax.random.uniform(jax.random.PRNGKey(5), (6, 4, 4, 2), minval=-1, maxval=1)
  rng = jax.random.PRNGKey(9)
  t_rng, noise_rng, _ = jax.random.split(rng, 3)  # as meanflow_loss splits it
  ctx = meanflow.MeanFlowContext(lambda params, z, r, t, rng, labels=None:
                                 _meanflow_stand_in(z, meanflow.noise_labels(r, t)))
  r, t = meanflow.training_times(t_rng, 6)  # ctx's defaults
  eps = jax.random.normal(noise_rng, x0.shape)
  assert np.any(np.asarray(r) < np.asarray(t)), "draws with r < t: the jvp term counts"
  ours, _ = meanflow.meanflow_loss(None, {"image": x0}, rng, ctx=ctx)
  theirs = reference_diffusion.meanflow_loss(_meanflow_stand_in, _float64(x0), _float64(r), _float64(t),
                                             _float64(eps), ctx.p, ctx.c)
  assert theirs.dtype == torch.float64
  assert float(theirs) == pytest.approx(float(ours), rel=1e-5)

  x, r, t, eps = (np.asarray(a, np.float64) for a in (x0, r, t, eps))
  r, t = r[:, None, None, None], t[:, None, None, None]
  z, v = (1 - t) * x + t * eps, eps - x
  u = 0.5 * z * z * t - 0.3 * z * (t - r) + 0.2 * t * t
  du_dt = z * v * t + 0.5 * z * z - 0.3 * (v * (t - r) + z) + 0.4 * t
  squared = np.sum((u - (v - (t - r) * du_dt)) ** 2, axis=(1, 2, 3))
  want = np.mean(squared / (squared + ctx.c) ** ctx.p) / x[0].size
  assert float(theirs) == pytest.approx(want, rel=1e-10)


def test_meanflow_guided_velocity_is_ours():
  """The guided field with omega = 2, kappa = 0.5 inside t <= 0.5, and the plain velocity for null labels."""
  z = jax.random.normal(jax.random.PRNGKey(1), (8, 2, 2, 1))
  velocity = jax.random.normal(jax.random.PRNGKey(2), z.shape)
  t = jnp.linspace(0.05, 0.95, 8)
  labels = jnp.array([0, 3, 10, 7, 10, 2, 1, 10])
  guide = lambda z, t, labels: 0.6 * z * t[:, None, None, None] + 0.1 * labels[:, None, None, None]
  ctx = meanflow.MeanFlowContext(None, guide=lambda params, z, t, labels: guide(z, t, labels), guidance=2.0,
                                 kappa=0.5, interval=(0.0, 0.5), null_label=10)
  ours = meanflow.guided_velocity(None, ctx, z, t, velocity, labels)
  theirs = reference_diffusion.meanflow_guided_velocity(guide, _float64(z), _float64(t), _float64(velocity),
                                                        torch.tensor(np.asarray(labels)), 10, 2.0, 0.5, (0.0, 0.5))
  np.testing.assert_allclose(theirs.numpy(), np.asarray(ours), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(ours), np.asarray(velocity))  # guidance changed some rows


def test_meanflow_times_are_drawn_as_ours():
  """(r, t) from the torch sampler and ours: the same means of t and r and fraction of r = t, r <= t."""
  kwargs = dict(schedule="logit_normal", t_mean=-0.6, t_std=1.6, r_mean=-4.0, r_std=1.6, equal_fraction=0.25)
  for pairs in meanflow.TIME_PAIRS:
    r, t = (a.numpy().astype(np.float64) for a in reference_diffusion.meanflow_training_times(
        40000, torch.device("cpu"), pairs=pairs, **kwargs))
    r_ours, t_ours = (np.asarray(a, np.float64) for a in meanflow.training_times(
        jax.random.PRNGKey(0), 40000, pairs=pairs, **kwargs))
    assert np.all(r <= t)
    assert np.mean(t) == pytest.approx(np.mean(t_ours), abs=0.01), pairs
    assert np.mean(r) == pytest.approx(np.mean(r_ours), abs=0.01), pairs
    assert np.mean(r == t) == pytest.approx(np.mean(r_ours == t_ours), abs=0.01), pairs


def test_consistency_loss_is_ours_on_the_same_draws_and_its_levels_are_ours():
  """Ours' draws (level pair, z) at the curriculum's first N = 11 levels fed to the torch loss in float64
  give our loss; the torch levels and their probabilities are ours."""
  x0 = jax.random.uniform(jax.random.PRNGKey(5), (6, 4, 4, 2), minval=-1, maxval=1)
  rng = jax.random.PRNGKey(10)
  stand_in = lambda x, c_noise: 0.7 * x - 0.3 * c_noise[:, None, None, None] + 0.2 * x * x
  ctx = consistency.ConsistencyContext(lambda params, x_in, c, rng, labels=None: stand_in(x_in, c), huber_c=0.05,
                                       total_steps=1200, s0=10, s1=40)
  level_rng, noise_rng, _ = jax.random.split(rng, 3)  # as consistency_loss splits it
  n = consistency.num_scales(0, ctx.total_steps, ctx.s0, ctx.s1)
  assert int(n) == 11
  sigmas = consistency.karras_levels(n, ctx.s1 + 1)
  i = jax.random.categorical(level_rng, consistency.level_log_weights(sigmas, n), shape=(6,))
  z = jax.random.normal(noise_rng, x0.shape)
  ours, _ = consistency.consistency_loss(None, {"image": x0}, rng, ctx=ctx, step=jnp.int32(0))
  theirs = reference_diffusion.consistency_loss(stand_in, stand_in, _float64(x0), _float64(sigmas[i]),
                                                _float64(sigmas[i + 1]), _float64(z), 0.05, 0.5, 0.002)
  assert theirs.dtype == torch.float64
  assert float(theirs) == pytest.approx(float(ours), rel=1e-5)

  levels, probabilities = reference_diffusion.consistency_levels(11, -1.1, 2.0, 0.002, 80.0, 7.0)
  np.testing.assert_allclose(levels, np.asarray(sigmas[:11]), rtol=1e-5)
  weights = np.exp(np.asarray(consistency.level_log_weights(sigmas, n), np.float64)[:10])
  np.testing.assert_allclose(probabilities, weights / weights.sum(), rtol=1e-4)


class _DropoutRecorder(torch.nn.Module):
  """A network with dropout that records each call's mask."""

  def __init__(self):
    super().__init__()
    self.dropout, self.masks = torch.nn.Dropout(0.5), []

  def forward(self, x, noise_label, labels):
    mask = self.dropout(torch.ones_like(x))
    self.masks.append(mask)
    return mask * x


def test_the_consistency_teacher_sees_the_student_s_dropout_masks():
  torch.manual_seed(0)
  recorder = _DropoutRecorder()
  sigmas, probabilities = reference_diffusion.consistency_levels(11, -1.1, 2.0, 0.002, 80.0, 7.0)
  objective = reference_diffusion.ConsistencyLoss(recorder, sigmas, probabilities, 0.05, 0.5, 0.002)
  for _ in range(2):
    objective(torch.randn(4, 3, 3, 2), torch.zeros(4, dtype=torch.long))
  student, teacher, next_student, _ = recorder.masks
  assert torch.equal(student, teacher) and not torch.equal(student, next_student)
  assert 0.3 < float((student == 0).double().mean()) < 0.7


def test_shortcut_loss_is_ours_on_the_same_draws():
  """Ours' draws (t, eps, the self-consistency rows' t and 2d) fed to the torch loss in float64 give our loss:
  4 of 16 rows self-consistency, M = 8, the torch network seeing 999 (t, d)."""
  x0 = jax.random.uniform(jax.random.PRNGKey(5), (16, 4, 4, 2), minval=-1, maxval=1)
  rng = jax.random.PRNGKey(11)

  def stand_in(x, label):
    t, d = label[:, 0][:, None, None, None], label[:, 1][:, None, None, None]
    return 0.7 * x - 3e-4 * t + 2e-4 * d * x + 0.2 * x * x

  network = lambda params, x, t, d, rng, labels=None: stand_in(x, shortcut.noise_labels(t, d))
  ctx = shortcut.ShortcutContext(network, network, fraction=0.25, max_steps=8, clip=4.0)
  t_rng, noise_rng, _ = jax.random.split(rng, 3)  # as shortcut_loss splits it
  t = flow.training_times(t_rng, 16)
  eps = jax.random.normal(noise_rng, x0.shape)
  t_sc, big = shortcut.self_consistency_times(jax.random.fold_in(t_rng, 1), 4, 8)
  ours, _ = shortcut.shortcut_loss(None, {"image": x0}, rng, ctx=ctx)
  theirs = reference_diffusion.shortcut_loss(stand_in, stand_in, _float64(x0), _float64(t), _float64(eps),
                                             _float64(t_sc), _float64(big), 8, 4.0)
  assert theirs.dtype == torch.float64
  assert float(theirs) == pytest.approx(float(ours), rel=1e-5)


def test_shortcut_rows_are_drawn_as_ours():
  """The torch objective's network call: rows [:n] at ours' big steps 2d with t on the grid 1 - k 2d,
  t - 2d >= 0, every grid point drawn; rows [n:] at d = 0."""
  torch.manual_seed(0)
  recorder = _Recorder()
  objective = reference_diffusion.ShortcutLoss(recorder, "uniform", 0.25, 8, 4.0)
  num, n = 4000, 1000
  objective(torch.zeros(num, 1, 1, 1), torch.zeros(num, dtype=torch.long))
  t, d = (recorder.noise_label.numpy().astype(np.float64) / 999.0).T
  np.testing.assert_allclose(d[:n], shortcut.big_steps(n, 8), rtol=1e-6)
  assert np.all(d[n:] == 0)
  k = (1.0 - t[:n]) / d[:n]
  np.testing.assert_allclose(k, np.round(k), atol=1e-4)
  assert np.all(t[:n] - d[:n] >= -1e-6)
  for big in (0.25, 0.5, 1.0):
    assert set(np.round(k[d[:n] == big]).astype(int)) == set(range(int(1 / big)))


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


@pytest.mark.parametrize("name,variant", [("ddpm_digits", "ddim-10"), ("edm_digits", "edm-heun-3"),
                                          ("flow_digits", "flow-euler-5")])
def test_the_reference_samplers_make_our_samplers_network_passes(name, variant):
  """Each sampler the speed suite times on torch runs the network as often as ours (its NFE), and draws images of
  the config's shape; a variant of another process is not the reference's (None)."""
  from benchmarks.run import QUICK_UNET, SAMPLE_VARIANTS

  config = load_config(name, QUICK_UNET)
  reference = torch_reference.build(config.method, config, torch.device("cpu"))
  calls = []
  reference.modules["model"].register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
  images = reference.sample(variant, 2)
  nfe = methods.make(load_config(name, dict(QUICK_UNET, **SAMPLE_VARIANTS[variant]))).sample_nfe
  assert len(calls) == nfe and set(calls) == {2}
  size = config.data.image_size
  assert images.shape == (2, size, size, config.data.channels) and torch.isfinite(images).all()
  assert reference.sample("meanflow-1", 2) is None
  other = {"ddpm_digits": "flow-euler-5", "edm_digits": "ddim-10", "flow_digits": "edm-heun-3"}[name]
  assert reference.sample(other, 2) is None


def test_the_reference_cached_decoder_gives_the_full_forward_pass_logits():
  """The Transformer reference's cached sampler (timed next to ours): one pass per token, and at every position
  the logits the teacher-forced forward pass gives for the tokens it drew."""
  from benchmarks.torch_reference import autoregressive as reference_autoregressive

  config = load_config("igpt_digits", {"data.image_size": 4, "model.width": 32, "model.num_layers": 2})
  reference = torch_reference.build(config.method, config, torch.device("cpu"))
  model = reference.modules["model"].eval()
  torch.nn.init.normal_(model.head.weight, generator=torch.Generator().manual_seed(0))  # zero at init: uniform
  step_logits = []
  hook = model.head.register_forward_hook(lambda module, args, out: step_logits.append(out))
  tokens = reference_autoregressive.sample_tokens(model, 3, None, torch.Generator().manual_seed(1))
  hook.remove()
  assert tokens.shape == (3, 16) and len(step_logits) == 16 and len(set(tokens.flatten().tolist())) > 3
  with torch.no_grad():
    full = model(tokens)
  torch.testing.assert_close(torch.cat(step_logits, dim=1), full, atol=1e-5, rtol=1e-5)
  images = reference.sample("cached", 2)
  assert images.shape == (2, 4, 4, 1) and images.min() >= -1 and images.max() <= 1
  assert reference.sample("uncached", 2) is None
