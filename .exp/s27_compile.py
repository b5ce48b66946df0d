"""Session 27: compiled blocks with inductor options vs Llama, fwd+bwd, 1 thread, allocator as benchmarks.speed.
usage: PYTHONPATH=. python .exp/s27_compile.py tiny 512 llama blocks autotune"""
import sys, time, statistics, json
from hope_hf.cli import tune_allocator
tune_allocator()
import torch
torch.set_num_threads(1)
from benchmarks.speed import hope_preset, llama_matching, next_token_loss

preset, T = sys.argv[1], int(sys.argv[2])
res = {}
for mode in sys.argv[3:]:
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = llama_matching(preset, T) if mode == "llama" else hope_preset(preset)
    if mode == "blocks":
        model.compile_blocks()
    elif mode == "autotune":
        model.compile_blocks(mode="max-autotune-no-cudagraphs")
    elif mode == "autotune_noepi":
        model.compile_blocks(options={"max_autotune": True, "epilogue_fusion": False})
    loss = next_token_loss(model, T)
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
