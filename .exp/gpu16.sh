#!/usr/bin/env bash
# session 16: whole training step as one CUDA graph (benchmarks.cuda_graphs), priority order, each case time-limited
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf
O=${OUT:-/tmp/out}; mkdir -p $O/cases; L=$O/log.txt
c() { local t=$1; shift; date +%T; echo "== $*"; timeout $t python3 -m benchmarks.cuda_graphs case --out $O/cases "$@"; echo "rc=$?"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  c 45 --model llama --length 512
  c 60 --model hope --length 512
  c 60 --model hope --length 2048 --chunk 256 --iters 2
  c 45 --model llama --length 2048
  c 100 --model hope --length 2048 --iters 2
  c 170 --model hope --length 512 --compile
  c 45 --model llama --length 512 --batch-size 8
  c 60 --model hope --length 512 --batch-size 8
  date +%T; timeout 40 python3 -m benchmarks.cuda_graphs collect $O/cases --out $O; echo "collect rc=$?"; date +%T
} > $L 2>&1
grep -v "it/s\]\|s/it\]" $L | tail -c 11500
