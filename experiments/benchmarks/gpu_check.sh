#!/usr/bin/env bash
# The GPU check (benchmark 6): BERT-base-sized KD in bf16 on one CUDA GPU, under 10 minutes.
# Usage: bash experiments/benchmarks/gpu_check.sh [gpu_check.py flags]
set -euo pipefail
cd "$(dirname "$0")"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs a GPU')"
exec timeout 600 python gpu_check.py "$@"
