"""Session 30: checkpointed Hope eager vs compiled blocks (groups / spans only), interleaved with Llama, one process,
1 thread, lean allocator. Modes: llama, eager, comp (no checkpointing), ckpt/ckspans (checkpointed: span groups / spans
only), a leading c compiles. usage: PYTHONPATH=. python .exp/s30_ckpt_compile.py small 1024 2 llama ckpt cckpt ckspans"""
import sys, time, statistics, resource
from hope_hf.cli import tune_allocator
tune_allocator(lean=True)
import torch
torch.set_num_threads(1)
from benchmarks.speed import hope_preset, llama_matching, next_token_loss
preset, T, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
steps = {}
for mode in sys.argv[4:]:
    torch.manual_seed(0)
    if mode == "llama":
        model = llama_matching(preset, T)
    else:
        model = hope_preset(preset, checkpointing="ck" in mode)
        model.model.checkpoint_span_groups = "spans" not in mode
        if mode.startswith("c") and mode != "ckpt" and mode != "ckspans":
            model.compile_blocks()
    loss = next_token_loss(model, T)
    def step(model=model, loss=loss):
        model.zero_grad(set_to_none=True); l = loss(); l.backward(); return l.item()
    t = time.perf_counter(); l = step(); print(mode, "warm", round(time.perf_counter() - t, 1), "loss", l,
                                              "maxrss GiB", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), flush=True)
    steps[mode] = step
ts = {m: [] for m in steps}
for r in range(rounds):
    for m, s in steps.items():
        t = time.perf_counter(); s(); ts[m].append(time.perf_counter() - t)
base = statistics.median(ts["llama"]) if "llama" in ts else None
for m, v in ts.items():
    med = statistics.median(v)
    print(f"{m:10s} median {med*1e3:8.1f} ms  min {min(v)*1e3:8.1f}" + (f"  hope/llama tok/s {base/med:.3f}" if base else ""))
