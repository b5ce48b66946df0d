#!/usr/bin/env bash
# Data-parallel Hope training with `accelerate launch` (each process trains on its own shard of the blocks).
#
#   examples/train_multi_process.sh cpu 2 [hope-hf train options...]   # N processes on one CPU-only machine (gloo)
#   examples/train_multi_process.sh gpu 8 [hope-hf train options...]   # N GPUs on one machine (NCCL)
#
# Every launch flag is given, so no `accelerate config` file is needed (a stray $HF_HOME/accelerate/default_config.yaml
# would otherwise change the launcher). On a CPU-only machine `--multi_gpu` is right: it starts N processes that
# use the gloo backend (`--cpu --num_processes N` would start just one). The batch size is per process: the global
# batch is N x --batch-size x --grad-accum blocks. Pick a free --main_process_port if 29500 is taken.
set -euo pipefail

kind=${1:?usage: $0 cpu|gpu NUM_PROCESSES [hope-hf train options...]}
n=${2:?usage: $0 cpu|gpu NUM_PROCESSES [hope-hf train options...]}
shift 2

case "$kind" in
  cpu)
    # one thread per process keeps N processes from oversubscribing the cores
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} accelerate launch --multi_gpu --num_processes "$n" --num_machines 1 \
      --mixed_precision no --dynamo_backend no --main_process_port "${PORT:-29500}" \
      -m hope_hf.train --output-dir runs/train-cpu"$n" "$@"
    ;;
  gpu)
    accelerate launch --multi_gpu --num_processes "$n" --num_machines 1 \
      --mixed_precision bf16 --dynamo_backend no --main_process_port "${PORT:-29500}" \
      -m hope_hf.train --bf16 --output-dir runs/train-gpu"$n" "$@"
    ;;
  *)
    echo "first argument must be cpu or gpu, got '$kind'" >&2
    exit 2
    ;;
esac
