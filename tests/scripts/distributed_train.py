"""`genimg` as one process of a multi-process run, recording the data it feeds to its devices:

  python tests/scripts/distributed_train.py RECORD_DIR [genimg train arguments, with the distributed flags]

runs `genimg train ...` and writes RECORD_DIR/process_<i>.npz: the labels [steps, local batch]
and a checksum of each image [steps, local batch] of every local batch this process loaded.
Exits with the CLI's code.
"""

import os
import sys
import zlib

import numpy as np


def main(record_dir: str, *cli_args: str) -> int:
  import jax

  from genimg_jax import cli
  from genimg_jax.parallel import mesh as mesh_lib

  labels, checksums = [], []
  to_global = mesh_lib.to_global

  def recording_to_global(local_batch, mesh):
    labels.append(np.asarray(local_batch["label"]).copy())
    checksums.append([zlib.crc32(np.ascontiguousarray(image).tobytes()) for image in local_batch["image"]])
    return to_global(local_batch, mesh)

  mesh_lib.to_global = recording_to_global
  code = cli.main(["train", *cli_args])
  np.savez(os.path.join(record_dir, f"process_{jax.process_index()}.npz"), labels=np.asarray(labels),
           checksums=np.asarray(checksums, np.int64))
  return code


if __name__ == "__main__":
  sys.exit(main(*sys.argv[1:]))
