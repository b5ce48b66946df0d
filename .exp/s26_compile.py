"""Session 26: eager vs regional compilation granularity (memories vs whole blocks) vs Llama, fwd+bwd, 1 thread.
usage: PYTHONPATH=. python .exp/s26_compile.py tiny 512 [modes...]"""
import sys, time, statistics, json
import torch
torch.set_num_threads(1)
import os
if os.environ.get("RLIMIT"): torch._dynamo.config.recompile_limit = int(os.environ["RLIMIT"]); torch._dynamo.config.accumulated_recompile_limit = 10000
from benchmarks.speed import hope_preset, llama_matching, next_token_loss
from hope_hf.modeling_hope import HopeBlock

preset, T = sys.argv[1], int(sys.argv[2])
BATCH = int(os.environ.get("BATCH", 1))
modes = sys.argv[3:] or ["llama", "eager", "memories", "blocks"]
res = {}
for mode in modes:
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = llama_matching(preset, T) if mode == "llama" else hope_preset(preset)
    if mode == "memories":
        model.compile_memories()
    elif mode == "blocks":
        for m in model.modules():
            if isinstance(m, HopeBlock):
                m.compile()
    loss = next_token_loss(model, T, BATCH)
    def step():
        model.zero_grad(set_to_none=True)
        l = loss(); l.backward(); return l.item()
    t0 = time.perf_counter(); l0 = step(); first = time.perf_counter() - t0
    ts = []
    for _ in range(5):
        t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
    res[mode] = dict(first=first, median=statistics.median(ts), loss=l0)
    print(mode, json.dumps(res[mode]), flush=True)
base = res.get("llama", {}).get("median")
if base:
    for m, r in res.items(): print(f"{m:10s} {r['median']*1e3:8.1f} ms  hope/llama tok/s {base / r['median']:.3f}")
