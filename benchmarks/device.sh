#!/usr/bin/env bash
# The GPU checks of a session lent a device machine (see the issue notes): build with nvcc for the
# card there, run the CUDA/Triton tests, then the GPU benchmarks. Logs land in $OUT.
# Extra Python packages the device lacks travel as wheels in .whl/ (captum); the default model's
# cached weights in .devcache/ (NEURCORE_CACHE), so it is not retrained there.
set -o pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
[ -d .devcache ] && export NEURCORE_CACHE=$PWD/.devcache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -m pip install -q --no-build-isolation --no-deps -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 -e . \
  >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import neurcore, json; print(json.dumps(neurcore.backends(), default=str))"
python3 -m pytest -p no:cacheprovider -q ${TESTS:-tests/test_cuda.py tests/test_triton.py} 2>&1 | tee "$OUT/tests.log" | tail -20
python3 -m pytest -p no:cacheprovider -q ${BENCH:-benchmarks/bench_cuda.py} --benchmark-only \
  --benchmark-columns=median,iqr,rounds --benchmark-json="$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -${TAIL:-60}
if [ -n "${E2E:-}" ]; then  # whole commands on the GPU against the CPU: same results, both timed
  python3 benchmarks/device_e2e.py 2>&1 | tee "$OUT/e2e.log" | tail -12
fi
