#!/usr/bin/env bash
# GPU benchmark for one CUDA machine, unattended, in under 10 minutes (each step has its own time limit):
#   bash benchmarks/gpu.sh [OUT]        (default OUT=benchmarks/results)
# Writes the same JSON (+ PNG) formats as the CPU benchmarks, in bf16 autocast on cuda:
#   gpu_speed.json   training tokens/s, FLOPs, fraction of the measured bf16 matmul peak (MFU), peak memory:
#                    Hope small and 340m vs parameter-matched Llama at 512 and 2048 tokens
#   gpu_speed_compiled.json   the same for 340m at 2048 tokens, plus Hope with compiled memories (`--compile`)
#   gpu_decode.json  ms/token after 256/2048/8192 prompt tokens and state bytes, Hope small vs Llama
#   gpu_smoke.json   a 40-step bf16 training run of Hope tiny (finite losses)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
timeout 240 python -m benchmarks.speed --device cuda --bf16 --presets small 340m --lengths 512 2048 \
    --batch-size 4 --no-reference --no-compile --name gpu_speed --out "$OUT" || status=1
timeout 200 python -m benchmarks.speed --device cuda --bf16 --presets 340m --lengths 2048 \
    --batch-size 4 --no-reference --name gpu_speed_compiled --out "$OUT" || status=1
timeout 120 python -m benchmarks.decode --device cuda --bf16 --preset small --lengths 256 2048 8192 \
    --name gpu_decode --out "$OUT" || status=1
timeout 90 python -m benchmarks.gpu_smoke --out "$OUT" || status=1
ls -l "$OUT"/gpu_*
exit $status
