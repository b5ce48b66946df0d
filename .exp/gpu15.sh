#!/usr/bin/env bash
# gpu.sh trimmed to one 15-minute device lease (priority order; each step time-limited; logs in $OUT/log.txt)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf
O=${OUT:-/tmp/out}; mkdir -p $O
L=$O/log.txt
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"
  date +%T; timeout 50 python3 -m benchmarks.gpu_smoke --out $O; echo "smoke rc=$?"
  date +%T; timeout 210 python3 -m benchmarks.speed --device cuda --bf16 --presets small 340m --lengths 512 2048 \
    --batch-size 4 --no-reference --no-compile --name gpu_speed --out $O; echo "speed rc=$?"
  date +%T; timeout 75 python3 -m benchmarks.decode --device cuda --bf16 --preset small --lengths 256 2048 8192 \
    --name gpu_decode --out $O; echo "decode rc=$?"
  date +%T; timeout 170 python3 -m benchmarks.speed --device cuda --bf16 --presets 340m --lengths 2048 \
    --batch-size 4 --no-reference --name gpu_speed_compiled --out $O; echo "compiled rc=$?"
  date +%T; } > $L 2>&1
rm -f $O/*.png
grep -v "it/s\]\|s/it\]" $L | tail -c 11000
ls -l $O
