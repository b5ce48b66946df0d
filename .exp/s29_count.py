"""Session 29: aten calls of one compiled-blocks fwd+bwd (1 thread), split into inside compiled graphs (externs:
bmm/mm called by inductor's wrappers) and outside (the eager span loop, autograd), by operator.
usage: PYTHONPATH=. python .exp/s29_count.py tiny 512"""
import sys, collections, torch
torch.set_num_threads(1)
from torch.profiler import profile, ProfilerActivity
from benchmarks.speed import hope_preset, next_token_loss
torch.manual_seed(0)
preset, T = sys.argv[1], int(sys.argv[2])
model = hope_preset(preset)
if "eager" not in sys.argv: model.compile_blocks()
loss = next_token_loss(model, T)
def step():
    model.zero_grad(set_to_none=True); l = loss(); l.backward()
step(); step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    step()
evs = prof.events()
inside, outside = collections.Counter(), collections.Counter()
tin, tout = collections.Counter(), collections.Counter()
for e in evs:
    if not e.name.startswith("aten::"): continue
    p, inc = e.cpu_parent, False
    while p is not None:
        if "CompiledFxGraph" in p.name: inc = True; break
        p = p.cpu_parent
    if e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"): continue  # count top-level aten calls only
    (inside if inc else outside)[e.name] += 1
    (tin if inc else tout)[e.name] += e.cpu_time_total
print("top-level aten calls inside compiled graphs:", sum(inside.values()), " outside:", sum(outside.values()))
print("outside, by count (calls, total ms):")
for k, v in outside.most_common(45): print(f"  {k:40s} {v:6d} {tout[k]/1e3:8.2f}")
print("inside:")
for k, v in inside.most_common(15): print(f"  {k:40s} {v:6d} {tin[k]/1e3:8.2f}")
