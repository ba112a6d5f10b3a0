#!/bin/bash
# The one prepared script for a lent GPU (issue 22; /work/.library/device/README.md):
# the real-GPU tests, then the GPU benchmark, everything logged under $OUT.
#
#   device run: bash benchmarks/gpu/run-on-gpu.sh        (timeout_s 540: room to rerun)
#
# The device machine (nvidia-h200) has numba, numba-cuda, CuPy, PyTorch, h5py and mpi4py in
# its python3 but no network: the mpich wheel (and anything else missing) travels as wheels
# in .whl/ (carry: [".whl"]), made here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl mpich tqdm
# Budgets: tests 240 s, benchmark 240 s (t-SNE at 50k points is the longest part).
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/hpcml-gpu-out}
mkdir -p "$OUT"
PY=python3
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    export PATH=/tmp/site/bin:$PATH
fi
# hpcml itself (kernels/ installs as hpcml.kernels: an install, not a PYTHONPATH entry)
$PY -m pip install -q --no-deps --no-index --no-build-isolation --target /tmp/hpcml-site . \
    && export PYTHONPATH=/tmp/hpcml-site:${PYTHONPATH:-} || exit 1
$PY - <<'PYEOF' 2>&1 | tee "$OUT/env.txt"
import numba, numpy; from numba import cuda
print("numba", numba.__version__, "numpy", numpy.__version__, "cuda", cuda.is_available())
for d in cuda.gpus: print(d.name)
PYEOF
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv 2>&1 | tee -a "$OUT/env.txt"
HPCML_CUDA_REAL=1 timeout 240 $PY tests/run_all.py --cuda 2>&1 | tee "$OUT/cuda-tests.log"
echo "cuda tests exit: $?" | tee -a "$OUT/cuda-tests.log"
timeout 240 $PY -m hpcml.bench gpu --out "$OUT" 2>&1 | tee "$OUT/bench-gpu.log"
echo "bench exit: $?" | tee -a "$OUT/bench-gpu.log"
