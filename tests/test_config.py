"""Config files, overrides and validation errors."""

import ast
import glob
import os

import ml_collections
import pytest

from genimg_jax import config as config_lib
from genimg_jax import methods
from genimg_jax.errors import ConfigError
from helpers import DIGITS_CONFIG, REPO


def test_overrides_are_parsed_by_field_type():
  config = config_lib.load(DIGITS_CONFIG, [
      "--config.train.steps=7", "--config.optimizer.learning_rate=3e-4", "--config.data.random_flip=true",
      "--config.model.ch_mult=(1,2,4)", "--config.loss.name", "my_mod:fn", "--config.optimizer.b1=0"])
  assert config.train.steps == 7
  assert config.optimizer.learning_rate == 3e-4
  assert config.data.random_flip is True
  assert config.model.ch_mult == (1, 2, 4)
  assert config.loss.name == "my_mod:fn"
  assert config.optimizer.b1 == 0.0 and isinstance(config.optimizer.b1, float)


@pytest.mark.parametrize("override,field,words", [
    ("--config.train.stepz=3", "config.train.stepz", "unknown field"),
    ("--config.trian.steps=3", "config.trian.steps", "unknown field 'trian'"),
    ("--config.train.steps=abc", "config.train.steps", "cannot parse 'abc' as int"),
    ("--config.data.random_flip=maybe", "config.data.random_flip", "cannot parse"),
    ("--config.train=3", "config.train", "is a section"),
    ("--config.train.steps", "config.train.steps", "missing value"),
    ("--confg.train.steps=3", "--confg.train.steps=3", "unknown argument"),
])
def test_bad_overrides_name_the_field(override, field, words):
  with pytest.raises(ConfigError) as e:
    config_lib.load(DIGITS_CONFIG, [override])
  assert e.value.where == field
  assert words in str(e.value)


def test_missing_or_bad_config_file(tmp_path):
  with pytest.raises(ConfigError, match="no such config file"):
    config_lib.load(str(tmp_path / "nope.py"), [])
  bad = tmp_path / "bad.py"
  bad.write_text("x = 1\n")
  with pytest.raises(ConfigError, match="defines no get_config"):
    config_lib.load(str(bad), [])


@pytest.mark.parametrize("field,value,words", [
    ("train.steps", 0, "must be > 0"),
    ("train.batch_size", -4, "must be > 0"),
    ("train.sample_every", -1, "must be >= 0"),
    ("mesh.cpu_devices", -1, "must be >= 0"),
])
def test_common_validation(field, value, words):
  config = config_lib.load(DIGITS_CONFIG, [f"--config.{field}={value}"])
  with pytest.raises(ConfigError, match=words) as e:
    config_lib.validate_common(config)
  assert e.value.where == f"config.{field}"


@pytest.mark.parametrize("field,value,where", [
    ("method", "'gann'", "config.method"),
    ("model.norm_groups", 5, "config.model.norm_groups"),
    ("data.image_size", 10, "config.data.image_size"),
    ("diffusion.beta_schedule", "'quadratic'", "config.diffusion.beta_schedule"),
    ("diffusion.prediction", "'score'", "config.diffusion.prediction"),
    ("sample.sampler", "'euler'", "config.sample.sampler"),
    ("sample.preview_sampler", "'euler'", "config.sample.preview_sampler"),
    ("model.arch", "'vit'", "config.model.arch"),
    ("model.num_classes", -1, "config.model.num_classes"),
    ("sample.steps", 5000, "config.sample.steps"),
    ("ema.decay", 1.0, "config.ema.decay"),
    ("loss.name", "'weighted'", "config.loss.name"),
    ("loss.name", "'no_such_module_xyz:fn'", "config.loss.name"),
    ("optimizer.learning_rate", -1.0, "config.optimizer.learning_rate"),
])
def test_method_validation(field, value, where):
  config = config_lib.load(DIGITS_CONFIG, [f"--config.{field}={str(value).strip(chr(39))}"])
  with pytest.raises(ConfigError) as e:
    methods.make(config)
  assert e.value.where == where


FLOW = ["diffusion.process=flow", "sample.sampler=euler", "sample.preview_sampler="]


@pytest.mark.parametrize("overrides,where", [
    (["model.arch=dit", "model.patch_size=3"], "config.model.patch_size"),
    (["model.arch=dit", "model.hidden_size=30"], "config.model.hidden_size"),
    (["model.arch=dit", "model.num_heads=5"], "config.model.num_heads"),
    (["model.arch=dit", "model.depth=0"], "config.model.depth"),
    (["model.arch=dit", "model.mlp_ratio=0.0"], "config.model.mlp_ratio"),
    (FLOW + ["sample.sde_noise=-1.0"], "config.sample.sde_noise"),
    (FLOW + ["diffusion.likelihood_trace=approximate"], "config.diffusion.likelihood_trace"),
])
def test_dit_and_continuous_process_fields_are_checked(overrides, where):
  config = config_lib.load(DIGITS_CONFIG, [f"--config.{o}" for o in overrides])
  with pytest.raises(ConfigError) as e:
    methods.make(config)
  assert e.value.where == where


def test_json_round_trip():
  config = config_lib.load(DIGITS_CONFIG, [])
  again = config_lib.from_json(config_lib.to_json(config))
  assert again.to_dict() == config.to_dict()


def test_runtime_sets_gpu_determinism_flag_once(monkeypatch):
  from genimg_jax.parallel import runtime

  config = config_lib.load(DIGITS_CONFIG, [])
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  runtime.setup(config)
  runtime.setup(config)
  assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=1 "
                                     "--xla_gpu_deterministic_ops=true")
  monkeypatch.setenv("XLA_FLAGS", "")
  runtime.setup(config_lib.load(DIGITS_CONFIG, ["--config.deterministic=false"]))
  assert os.environ["XLA_FLAGS"] == ""


@pytest.mark.parametrize("overrides,cores,expected", [
    (["--config.mesh.cpu_devices=0"], 2, 2),  # batch 64: one device per core
    (["--config.mesh.cpu_devices=0"], 6, 4),  # the largest count <= 6 dividing 64
    (["--config.mesh.cpu_devices=0", "--config.train.batch_size=30", "--config.eval.batch_size=20"], 8, 5),
    (["--config.mesh.cpu_devices=0", "--config.mesh.fsdp=2", "--config.train.batch_size=12"], 5, 4),
    (["--config.mesh.cpu_devices=3"], 2, 3),  # explicit: as asked
    ([], 2, 2),  # the default: one per core
])
def test_cpu_device_count(overrides, cores, expected):
  from genimg_jax.parallel import runtime

  config = config_lib.load(DIGITS_CONFIG, overrides)
  assert runtime.cpu_device_count(config, num_cores=cores) == expected


@pytest.mark.slow
def test_by_default_a_new_process_gets_one_device_per_core():
  import subprocess
  import sys

  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  code = ("import jax; from genimg_jax import config as c; from genimg_jax.parallel import runtime; "
          f"runtime.setup(c.load({DIGITS_CONFIG!r}, [])); print(jax.device_count())")
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  cores = len(os.sched_getaffinity(0))
  assert int(result.stdout) == max(d for d in range(1, cores + 1) if 64 % d == 0)  # digits: batch 64


CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_builds_and_says_how_to_run_it(path):
  """Each config file states its command, hardware, wall time and expected result, and its method
  builds (parameter shapes only: the CIFAR-10 ones are not trained here)."""
  import jax

  doc = ast.get_docstring(ast.parse(open(path).read()))
  name = os.path.splitext(os.path.basename(path))[0]
  assert f"genimg train --config configs/{name}.py" in doc
  for heading in ("Command:", "Hardware:", "Wall time:", "Expected result:"):
    assert heading in doc, (name, heading)
  shapes = jax.eval_shape(methods.make(config_lib.load_file(path)).init, jax.random.PRNGKey(0)).params
  assert sum(x.size for x in jax.tree.leaves(shapes)) > 0


def test_import_paths_finds_every_value_that_names_code():
  config = ml_collections.ConfigDict({
      "loss": {"name": "my_pkg.losses:huber"}, "model": {"blocks": ("res", "blocks:Attention"), "ch": 3},
      "data": {"data_dir": "gs://bucket/tfds", "name": "mnist:3.0.1", "path": "/data/a:b"}})
  assert sorted(config_lib.import_paths(config)) == [("loss.name", "my_pkg.losses:huber"),
                                                     ("model.blocks", "blocks:Attention")]
