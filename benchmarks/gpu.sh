#!/usr/bin/env bash
# GPU benchmark for one CUDA machine, unattended (each step has its own time limit):
#   bash benchmarks/gpu.sh [OUT]        (default OUT=benchmarks/results)
# STEPS chooses what runs (default "smoke graphs decode", ~5 minutes on an H200; add "compiled" for ~5 more, and
# "speed" for the benchmarks.speed tables, ~5 more). bf16 autocast on cuda throughout:
#   smoke     gpu_smoke.json            a 40-step bf16 training run of Hope tiny (finite losses)        (~25 s)
#   graphs    gpu_graphs.json           training tokens/s eager and with the whole step captured as one CUDA graph
#                                       (benchmarks.cuda_graphs), Hope small at 512 and, with 256-token chunks, at
#                                       2048 tokens, Hope 340m (256-token chunks) at 2048, each next to its Llama
#                                       (~4 min; "compiled" adds small with compiled memories at 512 and 2048, ~5 min)
#   decode    gpu_decode.json           ms/token after 256/2048/8192 prompt tokens, state bytes, small vs Llama (~40 s)
#   speed     gpu_speed.json, gpu_speed_compiled.json: benchmarks.speed (eager, checkpointed, compiled memories; FLOPs
#             and peak memory) for PRESETS (default small) at 512 and 2048 tokens                      (~5 min)
# Hope is launch bound on a GPU (eager small: ~250k kernel launches per 512-token step); eager 340m at 4 x 2048 tokens
# ran out of the H200's 140 GB. Needs transformers >= 5.23 (carry its wheel where the image has an older one).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-benchmarks/results}"
STEPS=" ${STEPS:-smoke graphs decode} "
PRESETS="${PRESETS:-small}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
on() { [[ "$STEPS" == *" $1 "* ]]; }
on smoke && { timeout 60 python -m benchmarks.gpu_smoke --out "$OUT" || status=1; }
if on graphs; then
    cases="$(mktemp -d)"
    graph() {
        local limit=$1; shift
        timeout "$limit" python -m benchmarks.cuda_graphs case --out "$cases" "$@" || status=1
    }
    graph 45 --model llama --preset small --length 512
    graph 60 --model hope --preset small --length 512
    graph 45 --model llama --preset small --length 2048
    graph 60 --model hope --preset small --length 2048 --chunk 256 --iters 2
    graph 50 --model llama --preset 340m --length 2048
    graph 120 --model hope --preset 340m --length 2048 --chunk 256 --iters 2
    if on compiled; then
        graph 170 --model hope --preset small --length 512 --compile
        graph 170 --model hope --preset small --length 2048 --chunk 256 --compile --iters 2
    fi
    timeout 40 python -m benchmarks.cuda_graphs collect "$cases" --out "$OUT" || status=1
fi
on decode && { timeout 90 python -m benchmarks.decode --device cuda --bf16 --preset small --lengths 256 2048 8192 \
    --name gpu_decode --out "$OUT" || status=1; }
if on speed; then
    # aten calls are counted on CPU (speed.json); under the profiler Hope's ~250k launches per step take minutes
    timeout 200 python -m benchmarks.speed --device cuda --bf16 --presets $PRESETS --lengths 512 2048 \
        --no-reference --no-compile --aten-max-len 0 --name gpu_speed --out "$OUT" || status=1
    timeout 200 python -m benchmarks.speed --device cuda --bf16 --presets small --lengths 512 \
        --no-reference --aten-max-len 0 --name gpu_speed_compiled --out "$OUT" || status=1
fi
ls -l "$OUT"/gpu_*
exit $status
