#!/usr/bin/env bash
# GPU benchmark: heads/losses and an IR-ResNet-50 training step under KERAS_BACKEND=jax in bf16.
#
#   bash benchmarks/gpu.sh [bench_gpu.py flags]      # e.g. --batches 128 256 512
#   bash benchmarks/gpu.sh --dry-run                 # tiny sizes on any JAX device (CPU too)
#
# Needs a Python with jax (CUDA build on a GPU machine) and keras; TensorFlow is not needed and
# is never imported (--no-tensorflow). Without keras on the machine, wheels in
# benchmarks/.gpu-wheels (pip download keras -d benchmarks/.gpu-wheels, on a machine with the
# registry) are installed from there, offline. Run from anywhere; prints to stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
export KERAS_BACKEND=jax
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=3
if ! "$python" -c "import jax" 2>/dev/null; then
    echo "gpu.sh: $python has no jax" >&2; exit 2
fi
if ! "$python" -c "import keras" 2>/dev/null; then
    if [ -d "$here/.gpu-wheels" ]; then
        "$python" -m pip install -q --no-index --find-links "$here/.gpu-wheels" keras
    else
        echo "gpu.sh: $python has no keras, and there is no benchmarks/.gpu-wheels to install it from" >&2
        exit 2
    fi
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader || true
fi
"$python" -c "import jax; print('# jax devices:', jax.devices())"
exec "$python" "$here/bench_gpu.py" --no-tensorflow "$@"
