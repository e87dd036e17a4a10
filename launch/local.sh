#!/usr/bin/env bash
# Runs one genimg training as N processes on this machine (127.0.0.1), each with its own
# CPU devices: the multi-host code path (distributed init, per-process data shards,
# collectives over gloo, every process checkpointing) without a cluster.
#
#   launch/local.sh N [genimg train arguments...]
#   launch/local.sh 2 --config configs/ddpm_digits.py --workdir /tmp/run
#
# Variables (all optional):
#   GENIMG_CPU_DEVICES   CPU devices per process (default 4)
#   GENIMG_PORT          coordinator port on 127.0.0.1 (default: a free one)
#   GENIMG_HEARTBEAT_S   seconds of silence after which a process counts as dead (default 100)
#   GENIMG_COMMAND       the command each process runs, before its flags (default: python3 -m genimg_jax.cli train)
#
# Output: each line prefixed with [process]. Exit code: 0 if all processes succeed, else
# the first non-zero exit code in process order.
set -euo pipefail

usage() { echo "usage: launch/local.sh N [genimg train arguments...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
N="$1"; shift
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "launch/local.sh: N must be a positive integer, got '$N'" >&2; exit 2; }
DEVICES="${GENIMG_CPU_DEVICES:-4}"
[[ "$DEVICES" =~ ^[1-9][0-9]*$ ]] || { echo "launch/local.sh: GENIMG_CPU_DEVICES must be a positive integer, got '$DEVICES'" >&2; exit 2; }
PORT="${GENIMG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
HEARTBEAT="${GENIMG_HEARTBEAT_S:-100}"
read -r -a COMMAND <<< "${GENIMG_COMMAND:-python3 -m genimg_jax.cli train}"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup INT TERM
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$DEVICES" "${COMMAND[@]}" \
      --coordinator_address "127.0.0.1:$PORT" --num_processes "$N" --process_id "$i" \
      --heartbeat_timeout_s "$HEARTBEAT" "$@" > >(sed -u "s/^/[$i] /") 2> >(sed -u "s/^/[$i] /" >&2) &
  pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
  code=0
  wait "$pid" || code=$?
  [[ $status -ne 0 ]] || status=$code
done
exit "$status"
