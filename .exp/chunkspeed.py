"""CPU training tokens/s (fwd+bwd, float32, batch 1, 1 thread) of Hope at the preset chunks vs 256-token chunks."""
import json
import sys

import torch

from benchmarks.cuda_graphs import build
from benchmarks.speed import train_throughput

torch.set_num_threads(1)
out = {}
for preset, chunk in (("tiny", None), ("tiny", 256), ("small", None), ("small", 256)):
    m = build("hope", preset, chunk)
    r = train_throughput(m, 2048, 1, 2, 60.0, "cpu", None, flops=True)
    out[f"{preset}_c{chunk or 64}"] = {k: r[k] for k in ("tokens_per_s", "median_s", "flops_per_step")}
    print(preset, chunk, out[f"{preset}_c{chunk or 64}"], flush=True)
    json.dump(out, open(sys.argv[1], "w"), indent=1)
