"""Session 26: torch.profiler table (self CPU time by op) and aten calls per token of one tiny/small fwd+bwd, eager or
with compiled regions. usage: PYTHONPATH=. python .exp/s26_prof.py tiny 512 [eager|blocks] (default: memories)"""
import sys, time, torch
torch.set_num_threads(1)
from torch.profiler import profile, ProfilerActivity
from benchmarks.speed import hope_preset, next_token_loss
torch.manual_seed(0)
preset, T = sys.argv[1], int(sys.argv[2])
model = hope_preset(preset)
if "blocks" in sys.argv: model.compile_blocks()
elif "eager" not in sys.argv: model.compile_memories()
loss = next_token_loss(model, T)
def step():
    model.zero_grad(set_to_none=True); l = loss(); l.backward()
step(); step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
import collections
ev=[e for e in prof.events()]
print("aten calls/token", sum(e.name.startswith("aten::") for e in ev)/T)
