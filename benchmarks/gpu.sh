#!/usr/bin/env bash
# One command for a lent GPU: Triton parity, then time and memory of focused linear attention
# against the torch backend, SDPA and flash-linear-attention (see benchmarks/gpu.py).
#   bash benchmarks/gpu.sh --out gpu.json            # on a CUDA machine, under 5 minutes
#   bash benchmarks/gpu.sh --dry-run --out dry.json  # on the CPU: tiny sizes, Triton's interpreter
set -euo pipefail
cd "$(dirname "$0")"
for arg in "$@"; do
  # Triton reads TRITON_INTERPRET when it is imported, so it is set before Python starts.
  if [ "$arg" = "--dry-run" ]; then export TRITON_INTERPRET=1; fi
done
exec python3 gpu.py "$@"
