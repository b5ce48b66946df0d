"""Session 29: the self-modifying memory of one `small` layer on one 64-token span, compiled, fwd+bwd, 1 thread:
time per call and the inductor kernels (profiled). usage: PYTHONPATH=. python .exp/s29_memmicro.py [rounds]"""
import sys, time, statistics, torch
torch.set_num_threads(1)
import torch._inductor.config as ic
ic.cpp.enable_kernel_profile = True
from torch.profiler import profile, ProfilerActivity
from hope_hf import HopeConfig, HopeForCausalLM
torch.manual_seed(0)
cfg = HopeConfig.from_preset("small")
mem = HopeForCausalLM(cfg).model.layers[0].memory
x = torch.randn(1, 64, cfg.hidden_size, requires_grad=True)
def step(fn):
    st = mem.init_state(1, "cpu", torch.float32)
    out, new = fn(x, st, None, 0)
    (out.square().sum() + sum(v.square().sum() for v in new.values() if torch.is_tensor(v) and v.requires_grad)).backward()
import os
fn = torch.compile(mem, options=eval(os.environ.get("OPTS", "{}")))
t = time.perf_counter(); step(fn); print("compile", round(time.perf_counter() - t, 1))
ts = []
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 30):
    t = time.perf_counter(); step(fn); ts.append(time.perf_counter() - t)
print(f"median {statistics.median(ts)*1e3:.2f} ms min {min(ts)*1e3:.2f}")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(5): step(fn)
ka = [e for e in prof.key_averages() if "cpp_fused" in e.key]
ka.sort(key=lambda e: -e.self_cpu_time_total)
print("kernels total ms/call", round(sum(e.self_cpu_time_total for e in ka) / 5e3, 2))
for e in ka[:8]: print(f"{e.self_cpu_time_total/5e3:7.3f} ms  {e.key[:110]}")
