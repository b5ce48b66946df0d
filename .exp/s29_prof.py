"""Session 29: one profiled fwd+bwd of compiled blocks (1 thread) with inductor's per-kernel profiling on; prints the
matmuls grouped by shape with their GFLOP/s, and the top inductor kernels.
usage: PYTHONPATH=. python .exp/s29_prof.py small 2048 [eager]"""
import sys, torch
torch.set_num_threads(1)
import torch._inductor.config as ic
ic.cpp.enable_kernel_profile = True
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
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    step()
ka = prof.key_averages()
total = sum(e.self_cpu_time_total for e in ka) / 1e3
print(f"total self {total:.0f} ms")
print(ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70))
mm_rows = []
for e in prof.key_averages(group_by_input_shape=True):
    if e.key in ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addmm_", "aten::linalg_solve_triangular"):
        s = e.input_shapes
        try:
            if e.key in ("aten::mm", "aten::addmm_"):
                a, b = (s[0], s[1]) if e.key == "aten::mm" else (s[1], s[2]); fl = 2 * a[0] * a[1] * b[1]
            elif e.key == "aten::bmm":
                a, b = s[0], s[1]; fl = 2 * a[0] * a[1] * a[2] * b[2]
            elif e.key == "aten::baddbmm":
                a, b = s[1], s[2]; fl = 2 * a[0] * a[1] * a[2] * b[2]
            elif e.key == "aten::addmm":
                a, b = s[1], s[2]; fl = 2 * a[0] * a[1] * b[1]
            else: fl = 0
        except Exception: fl = 0
        mm_rows.append((e.self_cpu_time_total / 1e3, e.key, e.count, fl * e.count, str(s)[:110]))
mm_rows.sort(reverse=True)
tm = sum(r[0] for r in mm_rows); tf = sum(r[3] for r in mm_rows)
print(f"matmul total {tm:.0f} ms, {tf/1e9:.1f} GFLOP, {tf/1e6/max(tm,1e-9):.1f} GFLOP/s")
for ms, k, n, fl, s in mm_rows[:45]:
    print(f"{k:14s} {n:6d} {ms:8.1f} ms {fl/1e9:7.2f} GF {fl/1e6/max(ms,1e-9):6.1f} GF/s  {s}")
kern = [e for e in ka if "cpp_fused" in e.key or e.key.startswith("kernel_cpp")]
kern.sort(key=lambda e: -e.self_cpu_time_total)
print(f"inductor kernels: {len(kern)} kinds, {sum(e.count for e in kern)} calls, {sum(e.self_cpu_time_total for e in kern)/1e3:.0f} ms")
for e in kern[:30]:
    print(f"{e.count:6d} {e.self_cpu_time_total/1e3:8.1f} ms  {e.key[:100]}")
print("aten calls/token", sum(e.name.startswith("aten::") for e in prof.events()) / T)
