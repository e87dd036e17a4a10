"""What a config will run: its parameter counts, devices and batch split, computed without compiling."""

import math

import jax
import ml_collections

from genimg_jax import config as config_lib
from genimg_jax import methods, seeds
from genimg_jax.data import datasets
from genimg_jax.methods.base import Method
from genimg_jax.parallel import mesh as mesh_lib


def parameter_counts(method: Method) -> dict[str, int]:
  """{network: number of trainable parameters}, from `jax.eval_shape` of method.init (no compile).

  One entry per name in method.networks (a GAN's generator and discriminator), else one, 'model'.
  """
  params = jax.eval_shape(method.init, seeds.root_keys(0)["init"]).params
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  if method.networks:
    return {name: count(params[name]) for name in method.networks}
  return {"model": count(params)}


def describe(config: ml_collections.ConfigDict) -> str:
  """The resolved config (JSON), parameters per network, devices and the per-device batch.

  Runs the checks `genimg train` runs before it writes anything, so a bad config raises the
  same ConfigError.
  """
  config_lib.validate_common(config)
  mesh = mesh_lib.make_mesh(config.mesh.fsdp)
  mesh_lib.local_batch_size(config.train.batch_size, mesh)
  method = methods.make(config)
  datasets.check_config(config.data)  # What opening the data checks first, without touching files.
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  lines = [config_lib.to_json(config), ""]
  lines += [f"parameters: {name} {n / 1e6:.3f}M ({n:,})" for name, n in parameter_counts(method).items()]
  lines.append(f"devices: {len(devices)} ({', '.join(kinds)}; {jax.process_count()} process(es)), "
               f"mesh data={mesh.shape[mesh_lib.DATA_AXIS]} x fsdp={mesh.shape[mesh_lib.FSDP_AXIS]}")
  lines.append(f"batch: {config.train.batch_size} global, {config.train.batch_size // len(devices)} per device")
  return "\n".join(lines)
