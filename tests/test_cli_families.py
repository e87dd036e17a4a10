"""Every family's digits config through the real `genimg` command, as a user runs it.

For ddpm, edm_dit (EDM with a DiT), flow_cond (class-conditional, guided), the one-step meanflow_cond,
consistency and shortcut, vae, autoencoder, dcgan, dcgan_cond and igpt:
`genimg train` a few steps, train again (it resumes), `genimg sample`, `genimg eval`, `genimg data show`, `genimg config
show` and `genimg plot`. Each must exit 0 with no traceback and write what it promises; a command that
does not apply to a family exits 2 with one line saying so. The configs are the digits demos shrunk to
compile and run quickly; every command runs in the run's folder, where the ddpm run finds the README's loss.
"""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from genimg_jax.train.checkpoint import Checkpointer
from helpers import REPO, TINY_OVERRIDES, read_scalars, readme_block

pytestmark = pytest.mark.slow  # Subprocesses: `pytest -m "not slow"` leaves them out.

# Four steps in two runs of two: checkpoints, logs and sample grids at steps 2 and 4.
COMMON = {"train.log_every": 2, "train.checkpoint_every": 2, "train.num_samples": 4, "eval.num_samples": 20,
          "eval.batch_size": 10}
SMALL_GAN = {"model.z_dim": 16, "model.g_ch": 16, "model.d_ch": 16, "train.batch_size": 16}
SMALL_UNET = dict({k: v for k, v in TINY_OVERRIDES.items() if k.split(".")[0] in ("data", "model")},
                  **{"train.batch_size": 16, "sample.steps": 3, "train.eval_batches": 1})
# family: (config, its shrinking overrides, `genimg eval --metrics` (None: the config's own)).
FAMILIES = {
    # The ddpm run also evaluates while training, keeps the best checkpoint, and trains the README's loss.
    "ddpm": ("ddpm_digits", dict(TINY_OVERRIDES, **{
        "eval.every": 2, "eval.metrics": "bpd", "eval.best_metric": "vlb_bpd", "train.eval_batches": 1,
        "loss.name": "my_losses:weighted_eps_loss"}), "fid,kid,is,pr,bpd"),
    "vae": ("vae_digits", {"data.image_size": 8, "model.ch": 8, "model.ch_mult": (1, 2), "model.latent_dim": 4,
                           "likelihood.num_mixtures": 2, "eval.iwae_samples": 4, "eval.iwae_chunk_size": 4,
                           "train.batch_size": 16, "train.eval_batches": 1}, "fid,bpd"),
    # 16x16: SSIM's 11x11 window must fit. Its samples are decoded N(0, I) latents; rfid is what it is judged by.
    "autoencoder": ("autoencoder_digits", {"model.ch": 8, "model.ch_mult": (1, 2), "model.norm_groups": 4,
                                           "train.batch_size": 16, "train.eval_batches": 1}, "fid,rfid,bpd"),
    # EDM with the DiT backbone: with ddpm and flow_cond on the UNet, every process and architecture runs.
    "edm_dit": ("edm_digits", dict(SMALL_UNET, **{"model.arch": "dit", "model.hidden_size": 32, "model.depth": 1,
                                                  "model.num_heads": 2}), "fid,bpd"),
    # The conditional flow covers the unconditional one, with guidance and the SDE sampler on top.
    "flow_cond": ("flow_digits_cond", dict(SMALL_UNET, **{"sample.sampler": "euler_maruyama"}), "fid,acc,bpd"),
    # The one-step processes: MeanFlow class-conditional (two time inputs, guidance folded into training),
    # consistency training and a shortcut model, each sampled in one network evaluation.
    "meanflow_cond": ("meanflow_digits_cond", SMALL_UNET, "fid,acc,bpd"),
    "consistency": ("consistency_digits", SMALL_UNET, "fid"),
    "shortcut": ("shortcut_digits", dict(SMALL_UNET, **{"sample.steps": 2}), "fid,bpd"),  # steps: a power of two
    "dcgan": ("dcgan_digits", SMALL_GAN, None),
    "dcgan_cond": ("dcgan_digits_cond", SMALL_GAN, "fid,is"),
    "igpt": ("igpt_digits", {"data.image_size": 8, "model.num_layers": 1, "model.width": 16, "model.num_heads": 2,
                             "train.batch_size": 16, "train.eval_batches": 1}, "fid,bpd"),
}


def genimg(*args, cwd, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "genimg_jax.cli", *map(str, args)], cwd=cwd, capture_output=True,
                        text=True, env=dict(os.environ, **(env or {})))


def ok(result) -> subprocess.CompletedProcess:
  assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
  return result


def one_line_error(result, starts: str) -> str:
  """Exit code 2, no traceback, exactly one line on stderr starting `genimg: error: <starts>`."""
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"genimg: error: {starts}"), result.stderr
  return lines[0]


class Run:
  """A family's run folder: my_losses.py, and run/, trained to step 2 and again to step 4."""

  def __init__(self, family: str, root, data_dir: str):
    self.family, self.root, self.data_dir = family, root, data_dir
    self.config = os.path.join(REPO, "configs", f"{FAMILIES[family][0]}.py")
    self.workdir = str(root / "run")
    (root / "my_losses.py").write_text(readme_block("# my_losses.py"))

  def overrides(self, **extra) -> list[str]:
    fields = dict(COMMON, **FAMILIES[self.family][1], **{"data.data_dir": self.data_dir}, **extra)
    return [f"--config.{k}={v}" for k, v in fields.items()]

  def genimg(self, *args, env=None) -> subprocess.CompletedProcess:
    """`genimg ARGS` in the run's folder; sample and eval of a run trained with the README's my_losses.py
    (its config names that code) with the user's word, --trust_workdir_code, as the README says."""
    if args[0] in ("sample", "eval") and any(":" in str(v) for v in FAMILIES[self.family][1].values()):
      args = (*args, "--trust_workdir_code")
    return genimg(*args, cwd=self.root, env=env)

  def train(self, steps: int, workdir: str | None = None) -> subprocess.CompletedProcess:
    return ok(self.genimg("train", "--config", self.config, "--workdir", workdir or self.workdir, "--no_progress",
                          *self.overrides(**{"train.steps": steps})))

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """trained(family) -> its Run, trained on first use and shared by every test of the module."""
  runs = {}

  def get(family: str) -> Run:
    if family not in runs:
      run = Run(family, tmp_path_factory.mktemp(family), data_dir)
      run.first, run.second = run.train(2), run.train(4)
      runs[family] = run
    return runs[family]

  return get


@pytest.fixture(params=list(FAMILIES))
def run(request, trained):
  return trained(request.param)


def test_train_says_how_it_starts_and_resume_continues(run):
  assert run.first.stdout.splitlines()[0] == f"starting from scratch in {run.workdir}"
  assert run.second.stdout.splitlines()[0] == f"resuming from step 2 ({run.path('checkpoints', '2')})"
  assert sorted(os.listdir(run.path("checkpoints")), key=int) == ["2", "4"]
  assert sorted(os.listdir(run.path("config_history"))) == ["step_0000000.json", "step_0000002.json"]
  assert json.load(open(run.path("config_history", "step_0000002.json")))["train"]["steps"] == 4
  for step in (2, 4):
    assert PIL.Image.open(run.path("samples", f"step_{step:07d}.png")).format == "PNG"
  rows = [json.loads(line) for line in open(run.path("metrics.jsonl"))]
  logged = [row for row in rows if "loss" in row]
  assert [row["step"] for row in logged] == [2, 4] and all(np.isfinite(row["loss"]) for row in logged)
  tensorboard = read_scalars(run.workdir)
  assert [(s, pytest.approx(row["loss"])) for s, row in zip((2, 4), logged)] == tensorboard["loss"]
  if run.family in ("vae", "autoencoder"):
    assert os.path.isfile(run.path("samples", "reconstructions_0000004.png"))
  if run.family == "ddpm":  # The README's loss, and an evaluation at steps 2 and 4 with the best kept.
    assert all(0 < row["mean_weight"] <= 1 for row in logged)
    assert [row["step"] for row in rows if "eval/vlb_bpd" in row] == [2, 4]
    assert json.load(open(run.path("checkpoints_best", "best.json")))["metric"] == "vlb_bpd"


def test_sample_writes_a_grid(run):
  args = ["--labels", "3"] if run.family.endswith("_cond") else []
  out = run.root / "grid.png"
  result = ok(run.genimg("sample", "--workdir", run.workdir, "--num", "5", "--out", out, *args))
  assert f"{out}: 5 samples from step 4" in result.stdout
  if run.family == "flow_cond":  # Euler-Maruyama-3 at t = 1, 2/3, 1/3: guided where sigma = t / (1 - t) <= 1.
    assert "nfe=3, network passes=4" in result.stdout
  size = 16 if run.family.startswith(("dcgan", "autoencoder")) else 8
  assert PIL.Image.open(out).size == (3 * (size + 2) + 2, 2 * (size + 2) + 2)  # 3 columns, 2 rows.


def test_eval_reports_the_family_metrics(run):
  metrics = FAMILIES[run.family][2]
  result = ok(run.genimg("eval", "--workdir", run.workdir, *(["--metrics", metrics] if metrics else [])))
  report = json.load(open(run.path("eval", "eval_0000004.json")))
  assert report["step"] == 4 and set((metrics or "fid").split(",")) <= set(report["metrics"])
  fid = report["metrics"]["fid"]
  assert fid["num_samples"] == 20 and fid["seed"] == 0 and fid["value"] > 0
  assert fid["feature_net"].startswith("classifier[digits train") and "| fid |" in result.stdout
  assert "eval_0000004.json" in result.stdout
  if run.family.startswith("dcgan"):
    one_line_error(run.genimg("eval", "--workdir", run.workdir, "--metrics", "bpd"),
                   "--metrics: bpd needs a held-out likelihood, which the gan method does not have")
  if run.family == "ddpm":
    _check_ddpm_report(report["metrics"], result.stdout)
  if run.family == "flow_cond":
    sampler = report["metrics"]["fid"]["sampler"]
    assert (sampler["guidance"], sampler["nfe"], sampler["network_passes"]) == (1.0, 3, 4)
    assert 0 <= report["metrics"]["acc"]["value"] <= 1 and "| class accuracy |" in result.stdout
  if run.family == "autoencoder":
    rfid = report["metrics"]["rfid"]
    assert rfid["value"] > 0 and rfid["num_samples"] == 300 and rfid["reference"] == "digits test 16x16 (300 images)"
    assert len(rfid["latent_mean"]) == len(rfid["latent_std"]) == 4 and min(rfid["latent_std"]) > 0
    held = report["metrics"]["bpd"]
    assert held["num_examples"] == 16 and 0 < held["ssim"] <= 1 and held["psnr_db"] > 0 and held["l1"] > 0
    assert "| rfid |" in result.stdout and "| latent std |" in result.stdout and "| psnr_db |" in result.stdout
  if run.family in ("ddpm", "vae", "edm_dit", "igpt", "autoencoder"):
    one_line_error(run.genimg("eval", "--workdir", run.workdir, "--metrics", "acc"),
                   "--metrics: acc (the classes of generated images) needs a class-conditional model")


def _check_ddpm_report(results: dict, table: str) -> None:
  for name in ("fid", "kid", "is", "pr"):
    assert results[name]["feature_net"].startswith("classifier[digits train 8x8")
    assert results[name]["sampler"]["sampler"] == "ddim" and results[name]["sampler"]["steps"] == 5
  assert results["fid"]["reference"] == "digits train 8x8 (1497 images)"
  assert results["kid"]["num_subsets"] == 100
  assert 1 <= results["is"]["mean"] <= 10  # 10 classes.
  assert 0 <= results["pr"]["precision"] <= 1 and 0 <= results["pr"]["recall"] <= 1
  held = results["bpd"]
  assert held["split"] == "test" and held["num_examples"] == 16 and 0 < held["loss"] < 10
  parts = held["vlb_prior_bpd"] + held["vlb_diffusion_bpd"] + held["vlb_decoder_bpd"]
  assert held["vlb_bpd"] == pytest.approx(parts, rel=1e-5) and 0 < held["vlb_bpd"] < 20
  assert held["vlb_nats"] == pytest.approx(held["vlb_bpd"] * 64 * math.log(2), rel=1e-5)
  assert "| recall |" in table and "| vlb_bpd |" in table


def test_data_show_and_config_show(run):
  out = run.root / "data.png"
  ok(run.genimg("data", "show", "--config", run.config, "--out", out, "--num", "4", *run.overrides()))
  assert PIL.Image.open(out).format == "PNG"
  shown = ok(run.genimg("config", "show", "--config", run.config, *run.overrides(**{"train.steps": 4}))).stdout
  resolved, summary = shown.split("\n\nparameters: ", 1)
  assert json.loads(resolved) == json.load(open(run.path("config.json")))
  counts = dict(re.findall(r"^parameters: (\w+) [\d.]+M \(([\d,]+)\)$", "parameters: " + summary, flags=re.M))
  assert set(counts) == ({"generator", "discriminator"} if run.family.startswith("dcgan") else {"model"})
  saved = Checkpointer(run.path("checkpoints"), create=False).saved_shapes(4)
  for name, count in counts.items():
    prefix = "params/" if name == "model" else f"params/{name}/"
    assert int(count.replace(",", "")) == sum(math.prod(s) for p, s in saved.items() if p.startswith(prefix))
  batch = json.loads(resolved)["train"]["batch_size"]
  assert "devices: 1 (cpu; 1 process(es))" in summary and f"batch: {batch} global, {batch} per device" in summary


def test_training_grids_use_the_same_noise_every_time(trained):
  """A fresh run's grid at step 2 is the first run's: the same state and the same sampling keys."""
  run = trained("dcgan")
  again = str(run.root / "again")
  run.train(2, workdir=again)
  first = np.asarray(PIL.Image.open(run.path("samples", "step_0000002.png")))
  assert np.array_equal(first, np.asarray(PIL.Image.open(os.path.join(again, "samples", "step_0000002.png"))))


# ---- Options of `genimg sample` and `genimg eval`, on the ddpm run. ---------------------------

def test_sample_formats_seeds_and_batch_sizes(trained):
  run = trained("ddpm")

  def sample(name, *args):
    ok(run.genimg("sample", "--workdir", run.workdir, "--num", "5", "--out", run.root / name, *args))
    if name.endswith(".npz"):
      with np.load(run.root / name) as f:
        assert list(f) == ["arr_0"]
        return f["arr_0"]
    files = sorted(os.listdir(run.root / name))
    assert files == [f"{i:06d}.png" for i in range(5)]
    return np.stack([np.asarray(PIL.Image.open(run.root / name / f)) for f in files])[..., None]

  base = sample("a.npz", "--batch_size", "2")
  assert base.dtype == np.uint8 and base.shape == (5, 8, 8, 1) and base.std() > 0
  assert np.array_equal(base, sample("again.npz", "--batch_size", "2"))  # Same seed: the same bytes.
  # Image i is drawn with key fold_in(key, i) whatever the batch: only float rounding may differ.
  whole = sample("pngs", "--batch_size", "5")
  assert np.abs(base.astype(int) - whole).max() <= 1 and np.mean(base == whole) > 0.99
  assert not np.array_equal(base, sample("seed1.npz", "--batch_size", "2", "--seed", "1"))
  assert not np.array_equal(base, sample("ddpm.npz", "--batch_size", "2", "--sampler", "ddpm"))


def test_sample_and_eval_read_the_checkpoint_asked_for(trained):
  run = trained("ddpm")
  best = json.load(open(run.path("checkpoints_best", "best.json")))["step"]
  drawn = {}
  for checkpoint, step in (("latest", 4), ("2", 2), ("best", best)):
    out = run.root / f"checkpoint_{checkpoint}.npz"
    result = ok(run.genimg("sample", "--workdir", run.workdir, "--num", "2", "--checkpoint", checkpoint, "--out", out))
    assert f"2 samples from step {step}" in result.stdout
    drawn[checkpoint] = np.load(out)["arr_0"]
  assert not np.array_equal(drawn["latest"], drawn["2"])
  one_line_error(run.genimg("sample", "--workdir", run.workdir, "--checkpoint", "3", "--out", "x.npz"),
                 f"{run.path('checkpoints', '3')}: no checkpoint of step 3; saved steps: [2, 4]")
  one_line_error(run.genimg("eval", "--workdir", run.workdir, "--checkpoint", "newest"),
                 "--checkpoint: 'newest' is not latest, best or a step number")
  ok(run.genimg("eval", "--workdir", run.workdir, "--metrics", "bpd", "--checkpoint", "2"))
  assert json.load(open(run.path("eval", "eval_0000002.json")))["step"] == 2


@pytest.mark.parametrize("family,args,error", [
    ("ddpm", ["sample", "--labels", "1", "--out", "x.png"], "--labels: the model is not class-conditional"),
    ("ddpm", ["sample", "--out", "x.jpg"], "--out: 'x.jpg' has the suffix '.jpg'"),
    ("ddpm", ["eval", "--metrics", "fid,nope"], "--metrics: unknown metric(s) ['nope']"),
    ("vae", ["sample", "--sampler", "ddim", "--out", "x.png"], "--sampler: the vae method has no sample.sampler"),
    ("vae", ["eval", "--metrics", "rfid"], "--metrics: rfid (FID of reconstructions) needs an autoencoder; the vae "
     "method has none"),
    ("dcgan_cond", ["sample", "--labels", "3,10", "--out", "x.png"], "--labels: classes [10] are not in [0, 10)"),
    ("edm_dit", ["sample", "--guidance", "2", "--out", "x.png"],
     "config.sample.guidance: classifier-free guidance needs a class-conditional model"),
])
def test_options_that_do_not_apply_exit_2(trained, family, args, error):
  run = trained(family)
  one_line_error(run.genimg(args[0], "--workdir", run.workdir, *args[1:]), error)
  assert not os.path.exists(run.root / "x.png")


def test_eval_without_inception_weights_says_how_to_get_them(trained, tmp_path):
  run = trained("ddpm")
  missing = str(tmp_path / "inception_v3_fid.npz")
  line = one_line_error(run.genimg("eval", "--workdir", run.workdir, "--metrics", "fid", "--feature_net", "inception",
                                   "--inception_weights", missing), f"{missing}: ")
  assert "pt_inception-2015-12-05-6726825d.pth" in line and "https://github.com/mseitzer/pytorch-fid" in line
  assert f"genimg eval convert-inception --pth pt_inception-2015-12-05-6726825d.pth --out {missing}" in line


def test_best_and_plot_on_runs_without_them_say_so(trained, tmp_path):
  run = trained("dcgan")  # Trained without eval.best_metric.
  one_line_error(run.genimg("sample", "--workdir", run.workdir, "--checkpoint", "best", "--out", "x.png"),
                 f"{run.path('checkpoints_best')}: no best checkpoint: it is kept by a run trained with "
                 "--config.eval.every=N --config.eval.best_metric=NAME")
  one_line_error(run.genimg("plot", "--workdir", str(tmp_path)),
                 f"{tmp_path}: no metrics.jsonl here: is this a `genimg train` workdir?")


@pytest.mark.parametrize("family", ["ddpm", "dcgan"])
def test_plot_writes_the_loss_and_metric_curves(trained, family, tmp_path):
  run = trained(family)
  written = ok(run.genimg("plot", "--workdir", run.workdir)).stdout.split()
  assert run.path("plots", "loss.png") in written and all(PIL.Image.open(p).format == "PNG" for p in written)
  if run.family == "ddpm":  # Evaluated while training, at steps 2 and 4.
    assert run.path("plots", "vlb_bpd_vs_step.png") in written
  blocker = tmp_path / "matplotlib"  # A matplotlib that cannot be imported.
  blocker.mkdir()
  (blocker / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
  one_line_error(run.genimg("plot", "--workdir", run.workdir, env={"PYTHONPATH": str(tmp_path)}),
                 "genimg plot: needs matplotlib: pip install 'genimg_jax[plot]'")


def test_config_show_rejects_a_bad_config_like_train(tmp_path):
  config = os.path.join(REPO, "configs", "igpt_digits.py")
  one_line_error(genimg("config", "show", "--config", config, "--config.train.batch_size=0", cwd=tmp_path),
                 "config.train.batch_size: must be > 0")
