#!/usr/bin/env bash
# Trains on a Cloud TPU VM pod slice: creates the slice (or reuses it), installs this checkout
# on every worker, and starts `genimg train` on all workers at once, streaming their logs.
# JAX finds the other workers itself (jax.distributed.initialize() with no arguments).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#   GENIMG_DATA_DIR=gs://my-bucket/tfds launch/tpu_pod.sh --config configs/ddpm_cifar10.py --workdir gs://my-bucket/runs/ddpm
#
# Required variables:
#   TPU_NAME            the TPU VM (pod slice) name
#   ZONE                its zone
#   ACCELERATOR_TYPE    e.g. v4-32 (used only when the slice is created)
#   GENIMG_DATA_DIR     prepared data sets, the same path on every worker (a bucket or a shared disk);
#                       prepare them once beforehand with `genimg data prepare`
# Optional:
#   PROJECT             gcloud project (default: gcloud's configured one)
#   RUNTIME_VERSION     TPU VM image (default tpu-ubuntu2204-base)
#   JAX_EXTRA           pip requirement for JAX on TPU (default "jax[tpu]")
#   REMOTE_DIR          where the code goes on each worker (default ~/genimg_jax)
set -euo pipefail

for name in TPU_NAME ZONE ACCELERATOR_TYPE GENIMG_DATA_DIR; do
  if [[ -z "${!name:-}" ]]; then
    echo "launch/tpu_pod.sh: set $name (see the top of this script)" >&2
    exit 2
  fi
done
[[ $# -gt 0 ]] || { echo "launch/tpu_pod.sh: give the genimg train arguments (--config ... --workdir ...)" >&2; exit 2; }
command -v gcloud > /dev/null || { echo "launch/tpu_pod.sh: gcloud is not installed" >&2; exit 2; }

RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
JAX_EXTRA="${JAX_EXTRA:-jax[tpu]}"
REMOTE_DIR="${REMOTE_DIR:-genimg_jax}"
GCLOUD=(gcloud compute tpus tpu-vm --zone "$ZONE" ${PROJECT:+--project "$PROJECT"})

if ! "${GCLOUD[@]}" describe "$TPU_NAME" > /dev/null 2>&1; then
  echo "creating $ACCELERATOR_TYPE pod slice $TPU_NAME in $ZONE"
  "${GCLOUD[@]}" create "$TPU_NAME" --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION"
fi

REPO="$(cd "$(dirname "$0")/.." && pwd)"
ARCHIVE="$(mktemp -d)/genimg_jax.tar.gz"
git -C "$REPO" archive --format=tar.gz -o "$ARCHIVE" HEAD
"${GCLOUD[@]}" scp "$ARCHIVE" "$TPU_NAME:~/genimg_jax.tar.gz" --worker=all
"${GCLOUD[@]}" ssh "$TPU_NAME" --worker=all --command "
  set -e; rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf ~/genimg_jax.tar.gz -C $REMOTE_DIR
  cd $REMOTE_DIR && python3 -m venv .venv && . .venv/bin/activate && pip install -q -U pip && pip install -q '$JAX_EXTRA' -e ."

ARGS="$(printf '%q ' "$@")"
# All workers start together; --worker=all streams every worker's output, prefixed by gcloud.
"${GCLOUD[@]}" ssh "$TPU_NAME" --worker=all --command "
  cd $REMOTE_DIR && . .venv/bin/activate && GENIMG_DATA_DIR='$GENIMG_DATA_DIR' genimg train --no_progress $ARGS"
