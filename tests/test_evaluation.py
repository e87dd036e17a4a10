"""The evaluation suite around the metrics: settings, reports, the best checkpoint, periodic evaluation."""

import json
import os

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import api
from genimg_jax.errors import ConfigError
from genimg_jax.evaluation import suite
from genimg_jax.train import checkpoint as ckpt_lib
from genimg_jax.train import trainer
from helpers import read_scalars, tiny_config


def _options(**fields):
  options = suite.settings(tiny_config("unused"))
  options.update(fields)
  return options


def test_settings_default_when_a_saved_config_has_no_eval_section():
  config = tiny_config("unused")
  config.unlock()
  del config["eval"]
  assert suite.settings(config).metrics == "bpd" and suite.settings(config).every == 0


@pytest.mark.parametrize("fields,field,message", [
    ({"metrics": "fid,lpips"}, "config.eval.metrics", "unknown metric(s) ['lpips']"),
    ({"metrics": ""}, "config.eval.metrics", "unknown metric(s)"),
    ({"metrics": "is", "num_samples": 5}, "config.eval.num_samples", "at least 10 samples"),
    ({"feature_net": "vgg"}, "config.eval.feature_net", "unknown feature network 'vgg'"),
    ({"reference_split": "validation"}, "config.eval.reference_split", "not 'validation'"),
    ({"metrics": "kid", "best_metric": "fid"}, "config.eval.best_metric", "needs metric 'fid'"),
    ({"metrics": "fid", "best_metric": "vlb_bpd"}, "config.eval.best_metric", "needs metric 'bpd'"),
    ({"every": -1}, "config.eval.every", "must be >= 0"),
])
def test_validate_names_the_field(fields, field, message):
  with pytest.raises(ConfigError) as error:
    suite.validate(tiny_config("unused"), _options(**fields))
  assert str(error.value).startswith(f"{field}: ") and message in str(error.value)


def test_validate_names_command_line_flags_when_given():
  with pytest.raises(ConfigError, match=r"^--metrics: "):
    suite.validate(tiny_config("unused"), _options(metrics="x"), {"metrics": "--metrics"})
  assert suite.validate(tiny_config("unused"), _options(metrics="pr, fid,pr")) == ("pr", "fid")


def test_scalars_and_an_unknown_best_metric():
  report = {"step": 3, "params": "ema", "metrics": {
      "fid": {"value": 2.5}, "kid": {"mean": 0.1, "std": 0.01}, "is": {"mean": 4.0, "std": 0.2},
      "pr": {"precision": 0.7, "recall": 0.6},
      "bpd": {"vlb_bpd": 3.1, "loss": 0.2, "split": "test", "num_examples": 32, "seed": 0}}}
  assert suite.scalars(report) == {"fid": 2.5, "kid": 0.1, "kid_std": 0.01, "is": 4.0, "is_std": 0.2,
                                   "precision": 0.7, "recall": 0.6, "vlb_bpd": 3.1, "loss": 0.2}
  with pytest.raises(ConfigError, match="config.eval.best_metric: 'precison' is not among"):
    suite.metric_value(suite.scalars(report), "precison")


def test_write_report_keeps_other_metrics_of_the_same_step(tmp_path):
  workdir = str(tmp_path)
  suite.write_report(workdir, {"step": 7, "params": "ema", "metrics": {"fid": {"value": 1.0}, "is": {"mean": 2.0}}})
  path = suite.write_report(workdir, {"step": 7, "params": "ema", "metrics": {"is": {"mean": 3.0}}})
  assert path == os.path.join(workdir, "eval", "eval_0000007.json")
  assert json.load(open(path))["metrics"] == {"fid": {"value": 1.0}, "is": {"mean": 3.0}}


def test_best_checkpoint_keeps_the_best_value_across_restarts(tmp_path):
  directory = str(tmp_path / "checkpoints_best")
  data_iter = iter(grain.MapDataset.range(10).to_iter_dataset())
  state = lambda v: {"w": jnp.full((2,), v, jnp.float32)}
  best = ckpt_lib.BestCheckpoint(directory, "fid", higher_is_better=False)
  assert [best.update(s, v, state(v), data_iter) for s, v in [(1, 5.0), (2, 6.0), (3, 4.0)]] == [True, False, True]
  best.close()
  again = ckpt_lib.BestCheckpoint(directory, "fid", higher_is_better=False)
  assert (again.value, again.step) == (4.0, 3)
  assert not again.update(4, 4.5, state(4.5), data_iter)
  again.close()
  recall = ckpt_lib.BestCheckpoint(str(tmp_path / "higher"), "recall", higher_is_better=True)
  assert [recall.update(s, v, state(v), data_iter) for s, v in [(1, 0.5), (2, 0.4), (3, 0.6)]] == [True, False, True]
  recall.close()
  assert sorted(os.listdir(directory)) == ["3", "best.json"]
  restored = ckpt_lib.Checkpointer(directory, create=False).restore(3, state(0.0)).state
  np.testing.assert_array_equal(np.asarray(restored["w"]), [4.0, 4.0])


def test_trainer_evaluates_every_n_steps_and_keeps_the_best_checkpoint(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=10)
  config.unlock()
  config.eval.update(every=5, metrics="fid,is", num_samples=16, batch_size=16, best_metric="fid")
  workdir = str(tmp_path / "run")
  api.train(config, workdir, show_progress=False)
  reports = {step: json.load(open(os.path.join(workdir, "eval", f"eval_{step:07d}.json"))) for step in (5, 10)}
  fids = {step: r["metrics"]["fid"]["value"] for step, r in reports.items()}
  assert all(r["metrics"]["fid"]["feature_net"].startswith("classifier[digits") for r in reports.values())
  assert reports[10]["metrics"]["is"]["num_samples"] == 16
  best_step = min(fids, key=fids.get)
  best_dir = os.path.join(workdir, "checkpoints_best")
  assert sorted(os.listdir(best_dir)) == sorted([str(best_step), "best.json"])
  assert json.load(open(os.path.join(best_dir, "best.json"))) == {"metric": "fid", "value": fids[best_step],
                                                                   "step": best_step}
  logged = read_scalars(workdir)["eval/fid"]
  assert [(s, round(v, 3)) for s, v in logged] == [(s, round(fids[s], 3)) for s in (5, 10)]


def test_trainer_without_the_evaluation_it_is_configured_for_says_so(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=10)
  config.unlock()
  config.eval.every = 5
  with pytest.raises(ConfigError, match="config.eval.every: set, but this train.. call was given no evaluation"):
    trainer.train(config, str(tmp_path / "run"), show_progress=False)
  assert not (tmp_path / "run").exists()


def test_class_accuracy_compares_each_image_with_the_class_it_was_drawn_for():
  """Image j is asked for class j % num_classes; a feature net with another class count is refused."""
  import types

  evaluator = types.SimpleNamespace(method=types.SimpleNamespace(num_classes=3),
                                    _net=types.SimpleNamespace(name="classifier[test]"))
  logits = np.eye(3)[[0, 1, 2, 0, 2, 2]]  # images 4 and 5 (asked for 1 and 2): one wrong
  assert suite.Evaluator._class_accuracy(evaluator, logits) == pytest.approx(5 / 6)
  with pytest.raises(ConfigError, match="classifier\\[test\\] has 4") as e:
    suite.Evaluator._class_accuracy(evaluator, np.zeros((6, 4)))
  assert e.value.where == "config.eval.feature_net"
