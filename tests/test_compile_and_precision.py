"""Every family's digits config through the real trainer: the train step compiles once, and
bfloat16 compute trains to the float32 loss.

One run per (family, dtype): 50 steps of the digits config (the UNet, VAE and Transformer on
8x8 digits, the first two with two resolution levels, to keep the suite short), logging every 10 steps. The
float32 run also counts XLA lowerings: none may happen after the first step (the step,
the input pipeline's global arrays, logging and a checkpoint at step 20 included).
"""

import os

import jax
import pytest

from genimg_jax import config as config_lib
from genimg_jax.train import steps as steps_lib
from genimg_jax.train import trainer
from helpers import REPO, read_scalars

STEPS = 50
LOG_EVERY = 10
CONFIGS = ("ddpm_digits", "vae_digits", "igpt_digits", "dcgan_digits")
# Two resolution levels at 8x8 instead of three at 16x16: compilation dominates this module's time.
SMALLER = {"ddpm_digits": {"data.image_size": 8, "model.ch_mult": (1, 2), "train.batch_size": 16,
                           "sample.sampler": "ddim", "sample.steps": 2},
           "vae_digits": {"data.image_size": 8, "model.ch_mult": (1, 2)},
           "igpt_digits": {"data.image_size": 8, "train.batch_size": 16}}
# Lowering a function to MLIR happens once per compilation, a persistent-cache hit included.
LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


def _config(name: str, data_dir: str, dtype: str):
  fields = {"data.data_dir": data_dir, "model.dtype": dtype, "train.steps": STEPS, "train.batch_size": 32,
            "train.log_every": LOG_EVERY, "train.checkpoint_every": 20, "train.num_samples": 4}
  fields.update(SMALLER.get(name, {}))
  return config_lib.load(os.path.join(REPO, "configs", f"{name}.py"), [f"--config.{k}={v}" for k, v in fields.items()])


class _CountingTrainStep:
  """Wraps steps.jit_train_step: keeps the jitted step and the lowering count at each of its calls."""

  def __init__(self, monkeypatch):
    self.lowerings = 0
    self.at_call = []
    self.jitted = None
    real = steps_lib.jit_train_step

    def make(*args, **kwargs):
      self.jitted = real(*args, **kwargs)

      def call(*a):
        self.at_call.append(self.lowerings)
        return self.jitted(*a)

      return call

    monkeypatch.setattr(steps_lib, "jit_train_step", make)

  def listen(self, event: str, duration_secs: float, **kwargs):
    del duration_secs, kwargs
    if event == LOWERING_EVENT:
      self.lowerings += 1


@pytest.fixture(scope="module")
def final_losses(data_dir, tmp_path_factory):
  """{(config, dtype): mean training loss over steps 41-50}; also checks compilation (float32 runs)."""
  losses, problems = {}, []
  for name in CONFIGS:
    for dtype in ("float32", "bfloat16"):
      workdir = str(tmp_path_factory.mktemp(f"{name}_{dtype}"))
      with pytest.MonkeyPatch.context() as monkeypatch:
        counter = _CountingTrainStep(monkeypatch)
        jax.monitoring.register_event_duration_secs_listener(counter.listen)
        try:
          trainer.train(_config(name, data_dir, dtype), workdir, show_progress=False)
        finally:
          jax.monitoring.unregister_event_duration_listener(counter.listen)
      if dtype == "float32":
        first = counter.at_call[1] - counter.at_call[0]
        after_first = counter.at_call[-1] - counter.at_call[1]
        variants = counter.jitted.jitted._cache_size()
        if not first:
          problems.append(f"{name}: no lowering seen during the first step: the counter is broken")
        if after_first or variants != 1:
          problems.append(f"{name}: {after_first} lowerings during steps 2-{STEPS - 1}, "
                          f"{variants} compiled train-step variants")
      losses[(name, dtype)] = dict(read_scalars(workdir)["loss"])[STEPS]
  return losses, problems


def test_no_recompilation_after_the_first_step(final_losses):
  _, problems = final_losses
  assert not problems, problems


@pytest.mark.parametrize("name", CONFIGS)
def test_bfloat16_loss_within_5_percent_of_float32(final_losses, name):
  losses, _ = final_losses
  fp32, bf16 = losses[(name, "float32")], losses[(name, "bfloat16")]
  assert bf16 != fp32, "bfloat16 and float32 runs gave the same loss: model.dtype had no effect"
  assert abs(bf16 - fp32) <= 0.05 * abs(fp32), (fp32, bf16)
