"""Session 28: interleaved A/B of compile_blocks inductor options (and Llama) in one process, 1 thread, tuned allocator.
usage: PYTHONPATH=. python .exp/s28_compile_opts_ab.py tiny 512 15 llama blocks cppwrap real8"""
import sys, time, statistics
from hope_hf.cli import tune_allocator
tune_allocator()
import torch
torch.set_num_threads(1)
from benchmarks.speed import hope_preset, llama_matching, next_token_loss
preset, T, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
OPTS = {"blocks": {}, "cppwrap": {"options": {"cpp_wrapper": True}}, "real8": {"options": {"realize_opcount_threshold": 8}}, "real16": {"options": {"realize_opcount_threshold": 16}}}
steps = {}
for mode in sys.argv[4:]:
    torch.manual_seed(0)
    model = llama_matching(preset, T) if mode == "llama" else hope_preset(preset)
    if mode in OPTS: model.compile_blocks(**OPTS[mode])
    loss = next_token_loss(model, T)
    def step(model=model, loss=loss):
        model.zero_grad(set_to_none=True); l = loss(); l.backward()
    t = time.perf_counter(); step(); step(); print(mode, "warm", round(time.perf_counter() - t, 1), flush=True)
    steps[mode] = step
ts = {m: [] for m in steps}
for r in range(rounds):
    for m, s in steps.items():
        t = time.perf_counter(); s(); ts[m].append(time.perf_counter() - t)
base = statistics.median(ts["llama"]) if "llama" in ts else None
for m, v in ts.items():
    med = statistics.median(v)
    print(f"{m:10s} median {med*1e3:8.1f} ms  min {min(v)*1e3:8.1f}" + (f"  hope/llama tok/s {base/med:.3f}" if base else ""))
