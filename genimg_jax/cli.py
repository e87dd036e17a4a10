"""`genimg train | sample | eval | data | config | plot`: the command-line entry point.

User errors (config, data, checkpoints) end with one line on stderr naming the
field or file, and exit code 2; no traceback.
"""

import argparse
import sys

from genimg_jax.errors import ConfigError, Preempted, UserError

SAMPLER_FLAGS = ("sampler", "steps", "eta", "guidance")
EVAL_FLAGS = ("metrics", "num_samples", "batch_size", "feature_net", "reference_split", "inception_weights")


def _add_sampler_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--sampler", help="override config.sample.sampler (e.g. ddpm, ddim)")
  parser.add_argument("--steps", type=int, help="override config.sample.steps (DDIM)")
  parser.add_argument("--eta", type=float, help="override config.sample.eta (DDIM)")
  parser.add_argument("--guidance", type=float,
                      help="override config.sample.guidance (class-conditional diffusion: classifier-free guidance w)")


def _add_checkpoint_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--checkpoint", default="latest",
                      help="latest (default), best (checkpoints_best/, kept with config.eval.best_metric) "
                      "or a step number")


def _add_trust_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--trust_workdir_code", action="store_true",
                      help="let the workdir's config.json import code it names as module:attribute (off: such a "
                      "config is refused, as a workdir may come from anyone)")


def _distributed_flags() -> argparse.ArgumentParser:
  """Flags to join a multi-process run (genimg_jax.parallel.distributed); automatic on TPU pods and SLURM."""
  flags = argparse.ArgumentParser(add_help=False)
  group = flags.add_argument_group("multi-process runs (automatic on TPU pod slices, SLURM and Open MPI)")
  group.add_argument("--coordinator_address", help="HOST:PORT of process 0")
  group.add_argument("--num_processes", type=int, help="number of processes in the run")
  group.add_argument("--process_id", type=int, help="this process's index in [0, num_processes)")
  group.add_argument("--heartbeat_timeout_s", type=int, default=100,
                     help="a process silent this long is declared dead and the others stop (default 100)")
  group.add_argument("--initialization_timeout_s", type=int, default=300,
                     help="how long to wait for all processes to join (default 300)")
  return flags


def parser() -> argparse.ArgumentParser:
  """The `genimg` command line: its subcommands and their flags."""
  top = argparse.ArgumentParser(prog="genimg", description=__doc__.splitlines()[0])
  sub = top.add_subparsers(dest="command", required=True)
  distributed = _distributed_flags()

  train = sub.add_parser("train", help="train a config; resumes if the workdir has checkpoints",
                         epilog="Any config field can be overridden: --config.train.steps=100",
                         parents=[distributed])
  train.add_argument("--config", required=True, help="a Python file defining get_config()")
  train.add_argument("--workdir", required=True, help="where checkpoints, logs and samples go")
  train.add_argument("--no_progress", action="store_true", help="no progress bar")

  sample = sub.add_parser("sample", help="write samples of a run's checkpoint: a PNG grid, an .npz or PNG files",
                          parents=[distributed])
  sample.add_argument("--workdir", required=True)
  sample.add_argument("--out", required=True, help="grid.png (one grid), samples.npz (uint8 arr_0 [N, H, W, C], "
                      "as FID tools read it) or a directory (one PNG per image)")
  sample.add_argument("--num", type=int, default=64, help="number of images")
  sample.add_argument("--seed", type=int, default=0)
  sample.add_argument("--batch_size", type=int,
                      help="images drawn at once (default: config.eval.batch_size, else train.batch_size)")
  sample.add_argument("--labels", help="class-conditional models: comma-separated classes, taken in turn "
                      "(0,1,... or 3), or 'all' (every class in turn, default)")
  _add_checkpoint_flag(sample)
  _add_sampler_flags(sample)
  _add_trust_flag(sample)

  evaluate = sub.add_parser(
      "eval", help="sample-quality and held-out metrics of a checkpoint (EMA params)",
      epilog="Defaults come from the run's config.eval section. Writes WORKDIR/eval/eval_<step>.json.",
      parents=[distributed])
  evaluate.add_argument("--workdir", help="a `genimg train` workdir")
  evaluate.add_argument("--metrics", help="comma-separated from fid, kid, is, pr (precision/recall), acc "
                        "(class-conditional: generated images classified as asked), bpd (held-out eval_step "
                        "metrics), rfid (autoencoders: FID of reconstructions of data.eval_split, and the latents' "
                        "statistics)")
  evaluate.add_argument("--num_samples", type=int, help="generated images for fid, kid, is, pr and acc")
  evaluate.add_argument("--batch_size", type=int, help="global batch for sampling and features")
  evaluate.add_argument("--feature_net", help="inception | classifier | auto")
  evaluate.add_argument("--reference_split", help="the data split generated images are compared with")
  evaluate.add_argument("--inception_weights", help="the converted InceptionV3 .npz (see convert-inception)")
  evaluate.add_argument("--seed", type=int, default=0)
  _add_checkpoint_flag(evaluate)
  _add_sampler_flags(evaluate)
  _add_trust_flag(evaluate)
  eval_sub = evaluate.add_subparsers(dest="eval_command")
  convert = eval_sub.add_parser("convert-inception", help="convert pytorch-fid's InceptionV3 .pth to a plain .npz "
                                "(needs torch for this step only)")
  convert.add_argument("--pth", required=True, help="pt_inception-2015-12-05-6726825d.pth")
  convert.add_argument("--out", help="the .npz to write (default: <data dir>/genimg_feature_nets/inception_v3_fid.npz)")

  data = sub.add_parser("data", help="prepare a config's data set, or look at its training images")
  data_sub = data.add_subparsers(dest="data_command", required=True)
  prepare = data_sub.add_parser("prepare", help="prepare the train and eval splits (downloads if needed)",
                                epilog="Config fields can be overridden: --config.data.data_dir=/shared/tfds")
  prepare.add_argument("--config", required=True)
  show = data_sub.add_parser("show", help="write a grid of training images after all preprocessing")
  show.add_argument("--config", required=True)
  show.add_argument("--out", required=True, help="PNG file to write")
  show.add_argument("--num", type=int, default=64, help="number of images (from the first batches)")

  config = sub.add_parser("config", help="look at a config as a run would resolve it")
  config_sub = config.add_subparsers(dest="config_command", required=True)
  config_show = config_sub.add_parser(
      "show", help="print the resolved config, parameters per network, devices and per-device batch (no compile)",
      epilog="Config fields can be overridden: --config.train.batch_size=128")
  config_show.add_argument("--config", required=True)

  plot = sub.add_parser("plot", help="plot a run's loss and evaluated metrics against the step (needs matplotlib)")
  plot.add_argument("--workdir", required=True)
  plot.add_argument("--out_dir", help="where the PNGs go (default: WORKDIR/plots)")
  return top


def _train(args, overrides) -> None:
  from genimg_jax import api
  from genimg_jax import config as config_lib

  api.train(config_lib.load(args.config, overrides), args.workdir, show_progress=not args.no_progress)
  print(f"done: {args.workdir}")


def _given(args, flags) -> tuple[dict, dict]:
  """({field: value}, {field: '--flag'}) of the flags among `flags` given on the command line."""
  values = {flag: getattr(args, flag) for flag in flags if getattr(args, flag) is not None}
  return values, {flag: f"--{flag}" for flag in values}


def _load_run(args):
  from genimg_jax import api
  from genimg_jax.train import workdir

  checkpoint = workdir.parse_checkpoint(args.checkpoint)
  overrides, fields = _given(args, SAMPLER_FLAGS)
  return api.Run.load(args.workdir, checkpoint, overrides, fields, trust_code=args.trust_workdir_code)


def _sample(args) -> None:
  import jax
  import tqdm

  from genimg_jax import images

  if args.num <= 0:
    raise ConfigError("--num", f"must be > 0, got {args.num}")
  if args.batch_size is not None and args.batch_size <= 0:
    raise ConfigError("--batch_size", f"must be > 0, got {args.batch_size}")
  try:
    images.output_kind(args.out)
  except ValueError as e:
    raise ConfigError("--out", str(e)) from None
  run = _load_run(args)
  batches = run.sample_batches(args.num, args.seed, args.batch_size, run.classes(args.labels, "--labels"))
  writing = jax.process_index() == 0  # Every process samples; process 0 writes.
  sink = images.ImageSink(args.out, args.num) if writing else None
  with tqdm.tqdm(total=args.num, unit="img", disable=not writing) as progress:
    for batch in batches:
      if sink:
        sink.add(batch)
      progress.update(len(batch))
  if sink:
    sink.close()
  settings = " ".join(f"{k}={v}" for k, v in run.config.sample.items()) if "sample" in run.config else "-"
  cost = f"nfe={run.method.sample_nfe}, network passes={run.method.sample_network_passes}"
  print(f"{args.out}: {args.num} samples from step {run.step} ({settings}, {cost}), "
        f"seed {args.seed}"
        + (f", labels {args.labels}" if args.labels else ""))


def _eval(args) -> None:
  from genimg_jax.evaluation import suite

  if args.eval_command == "convert-inception":
    _convert_inception(args)
    return
  if not args.workdir:
    raise ConfigError("--workdir", "required: the workdir of a `genimg train` run")
  run = _load_run(args)
  options, fields = _given(args, EVAL_FLAGS)
  report = run.evaluate(args.seed, fields, **options)
  path = suite.write_report(args.workdir, report)
  print(suite.table(report))
  print(f"-> {path}")


def _convert_inception(args) -> None:
  from genimg_jax.data import datasets
  from genimg_jax.evaluation import inception_weights

  out = args.out or inception_weights.default_path(datasets.resolve_data_dir(""))
  count = inception_weights.convert_pth(args.pth, out)
  print(f"{out}: {count} arrays of the FID InceptionV3 from {args.pth}")


def _config(args, overrides) -> None:
  from genimg_jax import config as config_lib
  from genimg_jax.parallel import runtime
  from genimg_jax.train import summary

  config = config_lib.load(args.config, overrides)
  runtime.setup(config)
  print(summary.describe(config))


def _plot(args) -> None:
  from genimg_jax import plots

  for path in plots.plot_run(args.workdir, args.out_dir):
    print(path)


def _data(args, overrides) -> None:
  from genimg_jax import config as config_lib
  from genimg_jax.data import datasets

  config = config_lib.load(args.config, overrides)
  config_lib.validate_common(config)
  if args.data_command == "prepare":
    builder = datasets.prepare(config.data, download=True)
    for split in (config.data.train_split, config.data.eval_split):
      source = datasets.open_split(config.data, split)
      print(f"{config.data.name} {split}: {len(source)} examples in {builder.data_dir}")
    return
  _show(config, args.out, args.num)


def _show(config, out: str, num: int) -> None:
  """Saves the first `num` training images of process 0's stream (seed config.seed) as a grid."""
  import numpy as np

  from genimg_jax import images
  from genimg_jax.data import datasets, pipeline

  if num <= 0:
    raise ConfigError("--num", f"must be > 0, got {num}")
  source = datasets.open_split(config.data, config.data.train_split)
  stream = iter(pipeline.train_dataset(source, config.data, seed=config.seed, local_batch_size=num,
                                       process_index=0, process_count=1))
  batch = next(stream)
  images.save_grid(out, batch["image"])
  print(f"{out}: {num} training images of {config.data.name} {config.data.train_split} "
        f"({'x'.join(map(str, batch['image'].shape[1:]))}, values in [{np.min(batch['image']):.3f}, "
        f"{np.max(batch['image']):.3f}]), seed {config.seed}")


def main(argv: list[str] | None = None) -> int:
  argument_parser = parser()
  args, rest = argument_parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  if args.command not in ("train", "data", "config") and rest:
    argument_parser.error(f"unrecognized arguments: {' '.join(rest)}")
  from absl import flags, logging

  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags.
  logging.set_verbosity(logging.ERROR)  # tfds and orbax are chatty at INFO/WARNING.
  try:
    if args.command in ("train", "sample", "eval"):
      from genimg_jax.parallel import distributed

      distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                             heartbeat_timeout_s=args.heartbeat_timeout_s,
                             initialization_timeout_s=args.initialization_timeout_s)
    if args.command == "train":
      _train(args, rest)
    elif args.command == "sample":
      _sample(args)
    elif args.command == "data":
      _data(args, rest)
    elif args.command == "config":
      _config(args, rest)
    elif args.command == "plot":
      _plot(args)
    else:
      _eval(args)
  except UserError as e:
    print(f"genimg: error: {e}", file=sys.stderr)
    return e.exit_code
  except Preempted as e:
    print(f"genimg: stopped: {e}", file=sys.stderr)
    return e.exit_code
  return 0


if __name__ == "__main__":
  sys.exit(main())
