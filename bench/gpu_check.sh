#!/usr/bin/env bash
# One GPU check (≤ 8 min on one GPU): paper-model training step with AMP, inference windows/s with
# CPU and GPU JPEG decoding, read-only windows/s, overhead ratios, peak GPU memory; writes
# bench/results/gpu.md. `--dry-run`: the same path on the CPU with tiny sizes (< 2 min).
#
#   bench/gpu_check.sh [--dry-run]
#
# Python: $PYTHON if set, else the current `python` when it imports wsi_lpd, torch and torchvision,
# else .venv (built from requirements.lock by `make install` when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

py="${PYTHON:-python}"
if ! "$py" -c "import wsi_lpd, torch, torchvision" 2>/dev/null; then
    py=.venv/bin/python
    if ! "$py" -c "import wsi_lpd, torch, torchvision" 2>/dev/null; then
        echo "gpu_check: building .venv from requirements.lock (make install)" >&2
        make install
    fi
fi

if [ "${1:-}" != "--dry-run" ]; then
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible to torch (use --dry-run on the CPU)')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
exec timeout 480 "$py" bench/gpu_check.py "$@"
