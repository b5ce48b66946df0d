#!/usr/bin/env bash
# session 16, second pass on the warm machine: 340m with 256-token chunks, and small compiled + 256-token chunks
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf
O=${OUT:-/tmp/out}; mkdir -p $O/cases; L=$O/log.txt
c() { local t=$1; shift; date +%T; echo "== $*"; timeout $t python3 -m benchmarks.cuda_graphs case --out $O/cases "$@"; echo "rc=$?"; }
{ c 120 --model hope --preset 340m --length 2048 --chunk 256 --iters 2
  c 50 --model llama --preset 340m --length 2048
  c 170 --model hope --length 2048 --chunk 256 --compile --iters 2
  date +%T; timeout 30 python3 -m benchmarks.cuda_graphs collect $O/cases --out $O; echo "collect rc=$?"; date +%T
} > $L 2>&1
grep -v "it/s\]\|s/it\]" $L | tail -c 8000
