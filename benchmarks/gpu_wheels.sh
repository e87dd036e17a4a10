#!/usr/bin/env bash
# Fetches into .whl/ the wheels of the packages that benchmarks/run.py imports and a bare GPU image with jax, flax,
# optax, orbax and torch lacks, for Python 3.12 on x86-64, at our .venv's versions. Copy .whl/ with the checkout to
# a GPU machine without internet access: benchmarks/gpu.sh installs them there.
#
#   bash benchmarks/gpu_wheels.sh          # PYTHON: the interpreter whose versions to pin (default .venv's)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

# What `import` of run.py's measurements loads beyond the image (traced through sys.modules): ml_collections
# (configs), grain and array_record (the data pipeline, imported by the trainer's modules), tensorflow-datasets and
# what it imports at once. grain and array_record hold compiled code; promise publishes only a source
# distribution, so its wheel (pure Python) is built here.
binary=(ml_collections grain array_record tensorflow-datasets tensorflow-metadata toml immutabledict portpicker)
built=(promise)
pin() {  # NAME==VERSION of each name, as installed for $PYTHON
  "$PYTHON" -c 'import importlib.metadata as m, sys; print(*(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "$@"
}

rm -rf .whl  # one version of each: two would stop the install there
mkdir .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(pin "${binary[@]}")
"$PYTHON" -m pip wheel -q --no-deps -w .whl $(pin "${built[@]}")

exclude=$(git rev-parse --git-path info/exclude)
grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
ls -1 .whl
du -ch .whl/*.whl | tail -1
