#!/usr/bin/env bash
# The GPU check (benchmark 6): BERT-base-sized KD in bf16 on one CUDA GPU, under 10 minutes.
# Usage: bash experiments/benchmarks/gpu_check.sh [gpu_check.py flags]
set -euo pipefail
cd "$(dirname "$0")"
python - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "tokenizers", "safetensors", "sklearn", "scipy", "tyro", "yaml")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages {missing}: install the project first (pip install -e . from the "
             "repository root), or on an offline machine pip install wheels downloaded elsewhere")
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device: this check needs a GPU (python gpu_check.py --quick runs it on the CPU)")
PY
exec timeout 600 python gpu_check.py "$@"
