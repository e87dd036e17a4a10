"""An autoencoder's round trip over a data split: features of its reconstructions (for rFID) and the
per-channel statistics of its latents."""

import dataclasses

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from genimg_jax import images as images_lib
from genimg_jax.data import datasets, pipeline
from genimg_jax.evaluation import features
from genimg_jax.methods.base import Method
from genimg_jax.parallel import distributed
from genimg_jax.parallel import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class RoundTrip:
  """features: {'features': [N, D], 'logits': [N, K]} of the N reconstructions (uint8 as PNGs hold them).
  latent_mean, latent_std: [z_channels] float64, over every latent position of the N images."""

  features: dict[str, np.ndarray]
  latent_mean: np.ndarray
  latent_std: np.ndarray


def round_trip(data: ml_collections.ConfigDict, split: str, method: Method, mesh: Mesh, params,
               extractor: features.Extractor, batch_size: int) -> RoundTrip:
  """method.reconstruct over data[split] in global batches of batch_size, in the order (and process
  sharding) the split's reference features use, so rFID compares the same images."""
  local_batch = mesh_lib.local_batch_size(batch_size, mesh, "config.eval.batch_size")
  fn = distributed.CompiledTogether(jax.jit(
      method.reconstruct, in_shardings=(None, mesh_lib.batch_sharding(mesh)),
      out_shardings=mesh_lib.batch_sharding(mesh)), "reconstruct")
  source = datasets.open_split(data, split)
  count = len(source) // jax.process_count()
  ds = pipeline.eval_dataset(source, data, local_batch_size=1, process_index=jax.process_index(),
                             process_count=jax.process_count())
  share = slice(jax.process_index() * local_batch, (jax.process_index() + 1) * local_batch)
  sums = sums_sq = None
  num_latents = 0

  def batches():
    nonlocal sums, sums_sq, num_latents
    for start in range(0, count, local_batch):
      stop = min(start + local_batch, count)
      images = features.pad_batch(np.concatenate([ds[i]["image"] for i in range(start, stop)]), local_batch)
      recon, latents = fn(params, mesh_lib.to_global(images, mesh))
      recon, latents = (np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in (recon, latents))
      keep = np.tile(np.arange(local_batch) < stop - start, latents.shape[0] // local_batch)
      kept = latents[keep].astype(np.float64).reshape(-1, latents.shape[-1])
      sums = kept.sum(0) + (0.0 if sums is None else sums)
      sums_sq = np.square(kept).sum(0) + (0.0 if sums_sq is None else sums_sq)
      num_latents += kept.shape[0]
      yield images_lib.float_to_uint8(recon[share]), stop - start

  out = features.extract(extractor, batches(), local_batch)
  mean = sums / num_latents
  return RoundTrip(out, mean, np.sqrt(np.maximum(sums_sq / num_latents - np.square(mean), 0.0)))
