"""Surviving signals, crashes, non-finite updates, corrupt checkpoints and malformed configs."""

import glob
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import cli, methods
from genimg_jax.data import datasets
from genimg_jax.errors import CheckpointError, TrainingDiverged
from genimg_jax.train import steps, trainer, workdir as workdir_lib
from helpers import DIGITS_CONFIG, REPO, flat_params, read_scalars, tiny_args, tiny_config

TRAIN_CMD = [sys.executable, "-m", "genimg_jax.cli", "train", "--config", DIGITS_CONFIG, "--no_progress"]


def _train_to_npz(data_dir, workdir, out, steps_):
  subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers.py"), data_dir, str(workdir), str(out),
                  str(steps_)], check=True, cwd=REPO, capture_output=True)
  return dict(np.load(out))


def _assert_same_state(got, want):
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  """The final state of an uninterrupted 30-step tiny run (a subprocess, like the runs it is compared with)."""
  root = tmp_path_factory.mktemp("straight")
  return _train_to_npz(data_dir, root / "run", root / "state.npz", 30)


@pytest.fixture(scope="module")
def straight_60(data_dir, tmp_path_factory):
  """As `straight`, 60 steps."""
  root = tmp_path_factory.mktemp("straight60")
  return _train_to_npz(data_dir, root / "run", root / "state.npz", 60)


# ---- Non-finite updates. ----------------------------------------------------------------------

def test_nonfinite_update_leaves_the_state_unchanged(data_dir):
  config = tiny_config(data_dir)
  config.unlock()
  config.optimizer.warmup_steps = 0  # The schedule counts applied updates only: no zero rate at first.
  method = methods.make(config)
  state = method.init(jax.random.PRNGKey(0))
  batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": jnp.zeros((4,), jnp.int32)}
  step = jax.jit(steps.guarded_step(method, inject_nan_at_steps=(0,)))
  new, metrics = step(state, batch, jax.random.PRNGKey(1))
  assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  assert int(new.step) == 1
  _assert_same_state(flat_params(new.replace(step=state.step)), flat_params(state))
  newer, metrics = step(new, batch, jax.random.PRNGKey(1))
  assert float(metrics["nonfinite"]) == 0.0
  assert not np.array_equal(flat_params(newer.params)["['conv_out']['bias']"],
                            flat_params(new.params)["['conv_out']['bias']"])


def test_isolated_nans_are_skipped_and_counted(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=10)
  config.unlock()
  config.debug.inject_nan_at_steps = (3, 4, 8)
  state = trainer.train(config, str(tmp_path), show_progress=False)
  assert int(state.step) == 10
  assert all(np.all(np.isfinite(v)) for v in flat_params(state).values())
  scalars = read_scalars(str(tmp_path))
  assert dict(scalars["nonfinite"]) == {5: pytest.approx(0.4), 10: pytest.approx(0.2)}
  assert dict(scalars["skipped_updates_total"]) == {5: 2, 10: 3}


def test_consecutive_nans_stop_the_run_and_keep_the_last_good_checkpoint(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=20)
  config.unlock()
  config.train.checkpoint_every = 5
  config.train.max_consecutive_nonfinite = 3
  config.debug.inject_nan_at_steps = (5, 6, 7, 8, 9, 10, 11)  # update indices: loop steps 6..12
  with pytest.raises(TrainingDiverged) as e:
    trainer.train(config, str(tmp_path), show_progress=False)
  message = str(e.value)
  assert message.startswith("step 6: non-finite values in grad_norm, loss;")
  assert "3 consecutive updates (steps 6-8)" in message and "last good checkpoint: step 5" in message
  assert e.value.exit_code == 3
  assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["5"]
  _, restored, step = workdir_lib.restore(str(tmp_path), config, methods.make(config))
  assert step == 5 and int(restored.step) == 5


# ---- Signals and crashes. ---------------------------------------------------------------------

def _wait_for(predicate, timeout=180.0, proc=None):
  deadline = time.time() + timeout
  while not predicate():
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"training exited early: {proc.returncode} {proc.stderr.read()}")
    if time.time() > deadline:
      raise AssertionError("timed out")
    time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_checkpoints_and_resumes_exactly(data_dir, tmp_path, straight):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(TRAIN_CMD + ["--workdir", str(workdir), *tiny_args(data_dir, steps=30),
                                       "--config.train.checkpoint_every=1000", "--config.train.log_every=1"],
                          cwd=REPO, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: "loss" in read_scalars(str(workdir)), proc=proc)  # Training has begun.
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 75
  line = stderr.strip().splitlines()[-1]
  stopped_at = int(line.split("SIGTERM at step ")[1].split(":")[0])
  assert line == (f"genimg: stopped: SIGTERM at step {stopped_at}: checkpoint saved to "
                  f"{workdir}/checkpoints/{stopped_at}; run the same command to resume")
  assert 1 <= stopped_at < 30
  assert os.listdir(workdir / "checkpoints") == [str(stopped_at)]
  _assert_same_state(_train_to_npz(data_dir, workdir, tmp_path / "resumed.npz", 30), straight)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(data_dir, tmp_path, straight_60):
  """5 kills (2 of them while a checkpoint is being written), then training to the end."""
  workdir = tmp_path / "run"
  ckpt_dir = workdir / "checkpoints"
  cmd = TRAIN_CMD + ["--workdir", str(workdir), *tiny_args(data_dir, steps=60),
                     "--config.train.checkpoint_every=2", "--config.train.log_every=1",
                     "--config.train.keep_checkpoints=2"]
  rng = random.Random(1234)
  tmp_dirs = lambda: set(glob.glob(str(ckpt_dir / "*tmp*")))
  logged = lambda: max((s for s, _ in read_scalars(str(workdir)).get("loss", [])), default=0)
  report = []
  for trial in range(5):
    stale, start = tmp_dirs(), logged()
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: logged() > start, proc=proc)  # This process has trained a step.
    if trial in (1, 3):  # Kill the moment a checkpoint write is under way.
      _wait_for(lambda: tmp_dirs() - stale, proc=proc)
    else:
      time.sleep(rng.uniform(0.0, 1.5))
    in_write = bool(tmp_dirs() - stale)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reached = logged()
    resumable = max((int(d) for d in os.listdir(ckpt_dir) if d.isdigit()), default=0)
    report.append((trial, reached, resumable, in_write))
    assert reached < 60, "the run finished before the kill; make it longer"
  print("\n(trial, last logged step, resumable checkpoint, killed during a write):", report)
  print("steps lost per kill:", [reached - resumable for _, reached, resumable, _ in report])
  assert sum(in_write for *_, in_write in report) >= 2
  assert len({resumable for _, _, resumable, _ in report}) > 1  # The run moved on between kills.
  _assert_same_state(_train_to_npz(data_dir, workdir, tmp_path / "final.npz", 60), straight_60)


@pytest.mark.slow
def test_preemption_notice_stops_all_processes_at_the_same_step(data_dir, tmp_path):
  """2 processes x 4 CPU devices; SIGTERM to process 1 only; both save and stop at one step."""
  datasets.open_split(tiny_config(data_dir).data, "train")  # Prepared once, not by both processes at once.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "run"
  procs = [subprocess.Popen(
      [*TRAIN_CMD, "--workdir", str(workdir), "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
       "--process_id", str(i), *tiny_args(data_dir, steps=500), "--config.train.checkpoint_every=10000",
       "--config.train.log_every=1"],
      env=dict(os.environ, JAX_NUM_CPU_DEVICES="4"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  try:
    _wait_for(lambda: "loss" in read_scalars(str(workdir)), proc=procs[1])
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=180)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [75, 75], outputs
  lines = [out.strip().splitlines()[-1] for out in outputs]
  step = int(lines[0].split("preemption notice at step ")[1].split(":")[0])
  assert lines == [f"genimg: stopped: preemption notice at step {step}: checkpoint saved to "
                   f"{workdir}/checkpoints/{step}; run the same command to resume"] * 2
  assert os.listdir(workdir / "checkpoints") == [str(step)]
  assert sorted(os.listdir(workdir / "checkpoints" / str(step) / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]


# ---- One run per workdir. ---------------------------------------------------------------------

def _holds_lock(workdir, pid):
  path = workdir / ".train.lock"
  return path.exists() and path.read_text().startswith(f"pid {pid} on ")


def _steps_logged(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line)["step"] for line in f]


@pytest.mark.slow
def test_a_second_train_on_a_busy_workdir_stops_naming_the_first(data_dir, tmp_path):
  workdir = tmp_path / "run"
  cmd = TRAIN_CMD + ["--workdir", str(workdir), *tiny_args(data_dir, steps=400),
                     "--config.train.checkpoint_every=1000"]
  first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(lambda: _holds_lock(workdir, first.pid), proc=first)
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first run ended before the second one tried; make it longer"
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith(f"genimg: error: {workdir}: another `genimg train` holds its lock .train.lock "
                               f"(pid {first.pid} on {socket.gethostname()} since ")
    out, err = first.communicate(timeout=300)
  finally:
    first.kill()
  assert first.returncode == 0, err
  assert out.strip().splitlines()[-1] == f"done: {workdir}"
  steps_logged = _steps_logged(workdir)
  assert steps_logged == list(range(5, 401, 5))  # Each step once: the second run wrote nothing.
  assert (workdir / ".train.lock").read_text() == ""  # Released, naming no one.


@pytest.mark.slow
def test_the_lock_of_a_killed_run_blocks_nothing(data_dir, tmp_path):
  workdir = tmp_path / "run"
  cmd = TRAIN_CMD + ["--workdir", str(workdir), *tiny_args(data_dir, steps=20)]
  killed = subprocess.Popen(cmd + ["--config.train.steps=100000"], cwd=REPO, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: _holds_lock(workdir, killed.pid), proc=killed)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert _holds_lock(workdir, killed.pid)  # The file still names the dead run ...
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr  # ... but the kernel released its lock.
  assert result.stdout.strip().splitlines()[-1] == f"done: {workdir}"


# ---- Checkpoints that are corrupt or do not fit. ---------------------------------------------

@pytest.fixture
def two_checkpoints(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=20)
  trainer.train(config, str(tmp_path), show_progress=False)
  assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["10", "20"]
  return config, tmp_path


def _truncate_arrays(workdir, step):
  """Truncates the array data files of checkpoint `step` to half their size."""
  files = [f for f in glob.glob(str(workdir / "checkpoints" / str(step) / "state" / "**"), recursive=True)
           if os.path.isfile(f) and "/d/" in f]
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def _tree(root):
  """{path: (size, mtime_ns)} of everything under root, hidden files included."""
  paths = glob.glob(str(root / "**"), recursive=True, include_hidden=True)
  return {p: (os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths}


def test_training_moves_a_corrupt_latest_checkpoint_aside_and_falls_back(two_checkpoints, capsys):
  from genimg_jax.parallel import mesh as mesh_lib
  from genimg_jax.train import checkpoint as ckpt_lib

  config, workdir = two_checkpoints
  _truncate_arrays(workdir, 20)
  abstract = workdir_lib.abstract_state(methods.make(config), mesh_lib.make_mesh(1), config.mesh.fsdp_min_size)
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), config.train.keep_checkpoints)
  restored = checkpointer.restore_latest(abstract)
  checkpointer.close()
  assert restored.step == 10 and int(restored.state.step) == 10
  err = capsys.readouterr().err
  assert err.startswith(f"genimg: warning: {workdir}/checkpoints/20: unreadable checkpoint of step 20 (array ")
  assert f"moved to {workdir}/checkpoints/20.corrupt, trying an older one" in err
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20.corrupt"]


def test_sample_and_eval_fall_back_from_a_corrupt_checkpoint_and_change_no_file(two_checkpoints, capsys):
  """The read-only commands skip an unreadable checkpoint with a plain warning, and leave every file as it is."""
  _, workdir = two_checkpoints
  _truncate_arrays(workdir, 20)
  before = _tree(workdir)
  out = workdir.parent / "grid.png"
  assert cli.main(["sample", "--workdir", str(workdir), "--out", str(out), "--num", "2"]) == 0
  err = capsys.readouterr().err
  warning = next(line for line in err.splitlines() if line.startswith("genimg: warning:"))
  assert warning.startswith(f"genimg: warning: {workdir}/checkpoints/20: unreadable checkpoint of step 20 "
                            "(array ")
  assert ": a truncated file in " in warning and warning.endswith("); left as it is, trying an older one")
  assert "tensorstore" not in warning.lower() and "{" not in warning  # No TensorStore spec or object repr.
  assert out.exists() and _tree(workdir) == before
  _truncate_arrays(workdir, 10)
  before = _tree(workdir)
  for command in (["sample", "--out", str(out)], ["eval", "--metrics", "bpd"]):
    code = cli.main([command[0], "--workdir", str(workdir), *command[1:]])
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("genimg: warning:")]
    assert code == 2 and errors == [f"genimg: error: {workdir}/checkpoints: no readable checkpoint: steps "
                                    "[20, 10] are all unreadable (left as they are)"], errors
    assert _tree(workdir) == before


def test_a_corrupt_checkpoint_asked_for_by_step_is_an_error_naming_it(two_checkpoints):
  """Asked for explicitly (sample/eval --checkpoint 20), a corrupt checkpoint is not replaced by another."""
  config, workdir = two_checkpoints
  for path in glob.glob(str(workdir / "checkpoints" / "20" / "state" / "**"), recursive=True):
    if os.path.isfile(path) and "/d/" in path:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(CheckpointError, match="unreadable checkpoint") as e:
    workdir_lib.restore(str(workdir), config, methods.make(config), 20)
  assert e.value.where == f"{workdir}/checkpoints/20"
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]  # Nothing moved aside.


def test_resume_with_other_shapes_fails_before_writing(two_checkpoints):
  config, workdir = two_checkpoints
  config.unlock()
  config.model.ch = 8
  config.train.steps = 30
  before = {p: os.path.getmtime(p) for p in glob.glob(str(workdir / "**"), recursive=True)}
  with pytest.raises(CheckpointError) as e:
    trainer.train(config, str(workdir), show_progress=False)
  assert e.value.where == f"{workdir}/checkpoints/20"
  assert "does not match the configured model or optimizer" in str(e.value)
  assert ("does not match the configured model or optimizer: params/AttnBlock_0/GroupNorm_0/bias: "
          "checkpoint has (32,), config gives (16,); ") in str(e.value)
  assert str(e.value).endswith("more")
  after = {p: os.path.getmtime(p) for p in glob.glob(str(workdir / "**"), recursive=True)}
  assert after == before


# ---- Malformed configs. -----------------------------------------------------------------------

MALFORMED = [
    (["--config.train.stepz=3"], "config.train.stepz: unknown field"),
    (["--config.trian.steps=3"], "config.trian.steps: unknown field 'trian'"),
    (["--config.train.steps=ten"], "config.train.steps: cannot parse 'ten' as int"),
    (["--config.train.steps=0"], "config.train.steps: must be > 0"),
    (["--config.train.batch_size=-8"], "config.train.batch_size: must be > 0"),
    (["--config.train.log_every=0"], "config.train.log_every: must be > 0"),
    (["--config.train.checkpoint_every=0"], "config.train.checkpoint_every: must be > 0"),
    (["--config.train.keep_checkpoints=0"], "config.train.keep_checkpoints: must be > 0"),
    (["--config.train.sample_every=-1"], "config.train.sample_every: must be >= 0"),
    (["--config.train.max_consecutive_nonfinite=0"], "config.train.max_consecutive_nonfinite: must be > 0"),
    (["--config.seed=-3"], "config.seed: must be an integer >= 0"),
    (["--config.data.name=no_such_data"], "config.data.name: unknown data set 'no_such_data'; built-in: celeb_a"),
    (["--config.data.image_size=10"], "config.data.image_size: 10 is not divisible by the UNet's downsampling"),
    (["--config.data.image_size=32"], "config.data.image_size: digits comes in sizes (8, 16), not 32"),
    (["--config.data.channels=0"], "config.data.channels: must be 1 or 3"),
    (["--config.data.channels=3"], "config.data.channels: digits images have 1 channel(s), not 3"),
    (["--config.data.eval_split=val"], "config.data.eval_split: digits has splits ('train', 'test'), not 'val'"),
    (["--config.data.name=folder"], "config.data.path: data.name='folder' needs the path of your folder"),
    (["--config.data.name=npz", "--config.data.path=/no/such.npz"], "config.data.path: /no/such.npz does not exist"),
    (["--config.data.holdout_fraction=1.0"], "config.data.holdout_fraction: must be in [0, 1)"),
    (["--config.data.num_workers=-1"], "config.data.num_workers: must be >= 0"),
    (["--config.data.random_flip=maybe"], "config.data.random_flip: cannot parse 'maybe' as bool"),
    (["--config.model.dropout=1.5"], "config.model.dropout: must be in [0, 1)"),
    (["--config.model.ch=0"], "config.model.ch: must be > 0"),
    (["--config.model.ch_mult=()"], "config.model.ch_mult: must be a non-empty tuple"),
    (["--config.model.attn_resolutions=abc"], "config.model.attn_resolutions: cannot parse 'abc' as tuple"),
    (["--config.model.norm_groups=7"], "config.model.norm_groups: must divide every level's width"),
    (["--config.model.dtype=float16"], "config.model.dtype: must be one of"),
    (["--config.diffusion.beta_schedule=quad"], "config.diffusion.beta_schedule: must be one of"),
    (["--config.diffusion.beta_start=0.5"], "config.diffusion.beta_start: need 0 < beta_start <= beta_end < 1"),
    (["--config.diffusion.prediction=score"], "config.diffusion.prediction: must be one of"),
    (["--config.diffusion.num_timesteps=1"], "config.diffusion.num_timesteps: must be > 1"),
    (["--config.optimizer.learning_rate=-1"], "config.optimizer.learning_rate: must be > 0"),
    (["--config.optimizer.b1=1.5"], "config.optimizer.b1: b1 and b2 must be in [0, 1)"),
    (["--config.ema.decay=1.5"], "config.ema.decay: must be in [0, 1)"),
    (["--config.sample.sampler=euler"],
     "config.sample.sampler: unknown DDPM sampler 'euler'; built-in: ddim, ddpm; or give"),
    (["--config.sample.eta=-1"], "config.sample.eta: must be >= 0"),
    (["--config.loss.name=no_such_module:fn"], "config.loss.name: cannot import module 'no_such_module'"),
    (["--config.method=gann"],
     "config.method: unknown method 'gann'; built-in: autoencoder, autoregressive, diffusion, gan, maskgit, vae"),
    (["--config.train.steps"], "config.train.steps: missing value"),
]


@pytest.mark.parametrize("args,message", MALFORMED, ids=[a[0] for a, _ in MALFORMED])
def test_malformed_config_is_one_clear_line(args, message, data_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  code = cli.main(["train", "--config", DIGITS_CONFIG, "--workdir", str(workdir),
                   f"--config.data.data_dir={data_dir}", *args])
  err = capsys.readouterr().err
  assert code == 2
  assert err.startswith(f"genimg: error: {message}"), err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert not workdir.exists()


BAD_CONFIG_FILES = [
    ("syntax", "import ml_collections\n\ndef get_config(:\n  pass\n", "bad.py:3: SyntaxError: invalid syntax"),
    ("raises at import", "import ml_collections\nx = {}['no_such_key']\n",
     "bad.py:2: the config file raised KeyError: 'no_such_key'"),
    ("no get_config", "CONFIG = 1\n", "bad.py defines no get_config()"),
    ("get_config raises", "def get_config():\n  return 1 / 0\n",
     "bad.py:2: get_config() raised ZeroDivisionError: division by zero"),
]


@pytest.mark.parametrize("text,message", [b[1:] for b in BAD_CONFIG_FILES], ids=[b[0] for b in BAD_CONFIG_FILES])
def test_a_broken_config_file_is_one_line_naming_the_file_and_line(text, message, tmp_path, capsys):
  path = tmp_path / "bad.py"
  path.write_text(text)
  code = cli.main(["train", "--config", str(path), "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err
  assert code == 2 and err == f"genimg: error: --config: {tmp_path}/{message}\n"
  assert not (tmp_path / "run").exists()


def test_missing_config_file_is_one_clear_line(tmp_path, capsys):
  code = cli.main(["train", "--config", str(tmp_path / "none.py"), "--workdir", str(tmp_path / "run")])
  assert code == 2
  assert capsys.readouterr().err == f"genimg: error: --config: no such config file: {tmp_path / 'none.py'}\n"


def test_debug_nans_names_the_first_bad_op(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=3)
  config.unlock()
  config.debug.nans = True
  config.debug.inject_nan_at_steps = (1,)
  with pytest.raises(TrainingDiverged) as e:
    trainer.train(config, str(tmp_path), show_progress=False)
  # The injection casts a NaN literal into the batch: that cast is the first op with a NaN output.
  assert str(e.value) == "step 2: config.debug.nans: invalid value (nan) encountered in convert_element_type"
  assert not jax.config.jax_debug_nans


def test_checkpointer_calls_no_deprecated_orbax_api(tmp_path, caplog):
  """Orbax reports its deprecated calls as '/jax/orbax/deprecation/...' events and absl warnings."""
  import grain
  from genimg_jax.train import checkpoint as ckpt_lib

  events = []
  listener = lambda event, **kwargs: events.append(event)
  jax.monitoring.register_event_listener(listener)
  try:
    with caplog.at_level("WARNING"):
      state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}
      iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
      next(iterator)
      checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
      for step in (1, 2, 3):
        checkpointer.save(step, state, iterator)
      checkpointer.wait()
      assert checkpointer.steps() == [2, 3]  # keep=2: the newest two.
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
      assert checkpointer.saved_shapes(3) == {"step": (), "w": (2, 3)}
      fresh = iter(grain.MapDataset.range(10).to_iter_dataset())
      restored = checkpointer.restore_latest(abstract, fresh)
      checkpointer.close()
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert restored.step == 3 and restored.data_restored and int(next(fresh)) == 1
  np.testing.assert_array_equal(restored.state["w"], state["w"])
  assert not [event for event in events if "deprecation" in event]
  assert not [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
