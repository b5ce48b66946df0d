"""Session 27: like s26_prof.py, plus the top ops grouped by input shape (record_shapes).
usage: PYTHONPATH=. python .exp/s27_prof.py small 2048 [eager|blocks] (default: memories)"""
import sys, torch
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
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
rows = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::sub", "aten::mm", "aten::bmm", "aten::cat", "aten::add_", "aten::exp")]
rows.sort(key=lambda e: -e.self_cpu_time_total)
for e in rows[:40]:
    print(f"{e.key:10s} {e.count:6d} {e.self_cpu_time_total/1e3:9.1f} ms  {str(e.input_shapes)[:150]}")
print("aten calls/token", sum(e.name.startswith("aten::") for e in prof.events()) / T)
