"""Held-out metrics: a method's eval_step averaged over the eval split."""

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from genimg_jax.data import datasets, pipeline
from genimg_jax.errors import ConfigError
from genimg_jax.methods.base import Method
from genimg_jax.parallel import functions
from genimg_jax.parallel import mesh as mesh_lib


def evaluate(config: ml_collections.ConfigDict, method: Method, mesh: Mesh, params,
             key: jax.Array) -> dict:
  """Mean of method.eval_step over config.data.eval_split in batches of config.train.batch_size.

  Uses the first config.train.eval_batches full batches (0: all of them; a last
  partial batch is left out). Batch i uses key fold_in(key, i). Returns the
  averaged metrics plus 'num_examples' and 'split'.
  """
  source = datasets.open_split(config.data, config.data.eval_split)
  batches = pipeline.eval_dataset(
      source, config.data, local_batch_size=mesh_lib.local_batch_size(config.train.batch_size, mesh),
      process_index=jax.process_index(), process_count=jax.process_count())
  limit = config.train.eval_batches or len(batches)
  eval_step = functions.jit_eval_step(method, mesh)
  results = [eval_step(params, mesh_lib.to_global(batches[i], mesh), jax.random.fold_in(key, i))
             for i in range(min(limit, len(batches)))]
  if not results:
    raise ConfigError("config.train.batch_size", f"{config.train.batch_size} is larger than the "
                      f"{config.data.eval_split!r} split ({len(source)} examples)")
  fetched = jax.device_get(results)
  metrics = {k: float(np.mean([r[k] for r in fetched])) for k in fetched[0]}
  metrics.update(num_examples=len(results) * config.train.batch_size, split=config.data.eval_split)
  return metrics
