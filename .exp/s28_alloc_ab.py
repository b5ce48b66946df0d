"""Session 28: eager or compiled fwd+bwd time, peak RSS, CPU and page faults under the allocator the environment sets
(MALLOC_MMAP_THRESHOLD_ etc.). usage: PYTHONPATH=. python .exp/s28_alloc_ab.py LABEL small 2048 [eager|blocks|llama] [steps]"""
import os, sys, time, resource, statistics
mode, preset, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
comp = sys.argv[4] if len(sys.argv) > 4 else "eager"
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
if mode == "tuned":
    from hope_hf.cli import tune_allocator; tune_allocator()
elif mode == "thp":
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
import torch
torch.set_num_threads(1)
from benchmarks.speed import hope_preset, next_token_loss, llama_matching
torch.manual_seed(0)
model = llama_matching(preset, T) if comp == "llama" else hope_preset(preset)
if comp == "blocks": model.compile_blocks()
loss = next_token_loss(model, T)
def step():
    model.zero_grad(set_to_none=True); l = loss(); l.backward()
step()
ts = []
for _ in range(steps):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
print(f"{mode} {preset} {T} {comp}: median {statistics.median(ts):.3f} s  all {[round(x,2) for x in ts]}  maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20:.2f} GiB user {resource.getrusage(resource.RUSAGE_SELF).ru_utime:.0f} sys {resource.getrusage(resource.RUSAGE_SELF).ru_stime:.0f} minflt {resource.getrusage(resource.RUSAGE_SELF).ru_minflt}", {k: v for k, v in os.environ.items() if "MALLOC" in k or "THP" in k})
