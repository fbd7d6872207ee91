#!/usr/bin/env bash
# The GPU checks of issue 18 as one prepared run on a lent GPU machine (its python3 has torch, timm, numpy,
# scipy, pandas, pyyaml, tqdm, safetensors, transformers, onnxruntime; not soundfile, soxr, openpyxl).
#
# Prepare once, here, in the repository root (wheels for the device's Python 3.12, and the reference data,
# both in git-ignored folders that the run carries):
#   echo /.whl/ >> .git/info/exclude; echo /.shared/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl soundfile cffi pycparser soxr openpyxl et_xmlfile
#   mkdir -p .shared/data && cp -r ../shared/golden .shared/ && cp -r ../shared/data/recordings .shared/data/
# Run (device tool: command "bash benchmarks/gpu_device.sh", carry [".whl", ".shared"], timeout_s 600):
#   about 1 min of tests, then benchmarks/gpu.py on a 20 h card (about 5 min on an H100/H200).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" MONITOR_SHARED="$PWD/.shared" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
lscpu | grep 'Model name' | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_features.py tests/test_frontend.py \
  tests/test_infer.py -k "gpu or cuda or device or parity or sdpa" 2>&1 | tail -25 | tee "$OUT/tests.txt"
timeout 480 python3 benchmarks/gpu.py --hours 20 --hf-hours 1 2>&1 | tee -a "$OUT/gpu.txt"
