#!/usr/bin/env bash
# GPU benchmark of `stembeam separate` (bench/gpu.py): ~3.5 h of real music, 2stems and 4stems,
# float32 and bfloat16, stems checked against the CPU's. Options go to bench.gpu, e.g.
#   bash bench/gpu.sh --hours 1 --models spleeter:2stems
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "nvidia-smi not found: no GPU figures will be sampled" >&2
fi
python3 -c 'import tensorflow as tf; print("TensorFlow", tf.__version__, "GPUs:",
            tf.config.list_physical_devices("GPU"))' 2>/dev/null
exec python3 -m bench.gpu "$@"
