#!/usr/bin/env bash
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf
O=${OUT:-/tmp/out}; mkdir -p $O; L=$O/log.txt
{ date +%T; timeout 200 python3 .exp/gpu15b.py cuda $O small,340m 2048; echo "b1 rc=$?"
  date +%T; timeout 165 python3 .exp/gpu15b.py cuda $O small 512 gpu_speed_b1_compiled; echo "compiled rc=$?"
  date +%T; } > $L 2>&1
rm -f $O/*.png
tr '\r' '\n' < $L | grep -v "it/s\]\|s/it\]\|^ *$" | tail -c 8000
ls -l $O
