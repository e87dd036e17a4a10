#!/usr/bin/env bash
# The GPU run of the benchmark suite: run.py's GPU_SUITE in bfloat16 and float32, ours next to the torch
# references eager and under torch.compile, in about 8 minutes with the compiles. Writes $OUT/gpu.json, $OUT/gpu.md
# (the tables) and $OUT/gpu.log; OUT defaults to benchmarks/results. benchmarks/README.md: "The GPU run".
#
#   bash benchmarks/gpu.sh                                       # on a machine with one GPU
#   GPU_SH_ALLOW_CPU=1 GPU_SH_QUICK=1 bash benchmarks/gpu.sh     # the tiny version, on a CPU too
#
# GPU_SH_QUICK=1: run.py --quick's igpt_digits instead, next to torch eager only (torch.compile takes 20 s to 3
# minutes a model on a 2-core CPU). Knobs: GPU_SH_DTYPES (bfloat16,float32), GPU_SH_CONFIGS (a subset of GPU_SUITE,
# or of QUICK_OVERRIDES), GPU_SH_TORCH (eager,compile), GPU_SH_JOBS (3 at once), GPU_SH_BUDGET_S (420 s for the
# measurements: what is left then is skipped and named), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

main() {
  # The packages the GPU image lacks travel as wheels (benchmarks/gpu_wheels.sh): installed where they are missing.
  if compgen -G ".whl/*.whl" >/dev/null && ! "$PYTHON" -c "import grain, ml_collections, tensorflow_datasets" \
      2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  # tensorflow-metadata's generated code names protobuf 6.31; tfds only imports it, so an older runtime will do.
  export TEMPORARILY_DISABLE_PROTOBUF_VERSION_CHECK=true
  date -u
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
  # Versions, every import the measurements make (a missing package fails here, in one line), and the GPU.
  "$PYTHON" - <<'EOF'
import importlib, importlib.metadata as md, os, sys
try:
  for module in ("genimg_jax.methods", "genimg_jax.parallel.runtime", "genimg_jax.train.steps",
                 "benchmarks.torch_reference.diffusion", "benchmarks.torch_reference.gan",
                 "benchmarks.torch_reference.vae", "benchmarks.torch_reference.autoregressive"):
    importlib.import_module(module)
except ImportError as e:
  sys.exit(f"gpu.sh: {e} (benchmarks/gpu_wheels.sh fetches the wheels the GPU image lacks)")
import jax, torch
def version(dist):
  try:
    return md.version(dist)
  except md.PackageNotFoundError:
    return "-"
print("python", sys.version.split()[0], *(f"{d} {version(d)}" for d in (
    "jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "torch", "numpy", "protobuf", "grain")))
print("jax devices:", jax.devices(), "| torch cuda:", torch.cuda.is_available() and torch.cuda.get_device_name())
missing = [what for what, seen in (("JAX", jax.default_backend() == "gpu"), ("torch", torch.cuda.is_available()))
           if not seen]
if missing and os.environ.get("GPU_SH_ALLOW_CPU") != "1":
  sys.exit(f"gpu.sh: no GPU visible to {' nor '.join(missing)} (GPU_SH_ALLOW_CPU=1 runs on the CPU)")
EOF
  if [[ ${GPU_SH_QUICK:-0} == 1 ]]; then
    suite=(--quick --configs "${GPU_SH_CONFIGS:-igpt_digits}" --torch "${GPU_SH_TORCH:-eager}")
  else
    suite=(--gpu_suite ${GPU_SH_CONFIGS:+--configs "$GPU_SH_CONFIGS"} --torch "${GPU_SH_TORCH:-eager,compile}")
  fi
  "$PYTHON" benchmarks/run.py "${suite[@]}" --dtypes "${GPU_SH_DTYPES:-bfloat16,float32}" \
    --jobs "${GPU_SH_JOBS:-3}" --budget_s "${GPU_SH_BUDGET_S:-420}" --keep_going \
    --out "$OUT/gpu.json" --markdown "$OUT/gpu.md"
}

main 2>&1 | tee "$OUT/gpu.log"
