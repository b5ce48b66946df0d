"""Session 29: interleaved A/B of inductor options on the self-modifying memory of one `small` layer on one 64-token
span (fwd+bwd, 1 thread). usage: PYTHONPATH=. python .exp/s29_memab.py rounds '{opts A}' '{opts B}' [preset]"""
import sys, time, statistics, torch
torch.set_num_threads(1)
from hope_hf import HopeConfig, HopeForCausalLM
torch.manual_seed(0)
cfg = HopeConfig.from_preset(sys.argv[4] if len(sys.argv) > 4 else "small")
mem = HopeForCausalLM(cfg).model.layers[0].memory
x = torch.randn(1, 64, cfg.hidden_size, requires_grad=True)
def step(fn):
    st = mem.init_state(1, "cpu", torch.float32)
    out, new = fn(x, st, None, 0)
    (out.square().sum() + sum(v.square().sum() for v in new.values() if torch.is_tensor(v) and v.requires_grad)).backward()
fns = {o: torch.compile(mem, options=eval(o)) for o in sys.argv[2:4]}
for o, fn in fns.items():
    torch._dynamo.reset() if False else None
    t = time.perf_counter(); step(fn); step(fn); print(o, "compile+1", round(time.perf_counter() - t, 1), flush=True)
ts = {o: [] for o in fns}
for _ in range(int(sys.argv[1])):
    for o, fn in fns.items():
        t = time.perf_counter(); step(fn); ts[o].append(time.perf_counter() - t)
for o, v in ts.items(): print(f"{o:40s} median {statistics.median(v)*1e3:7.2f} ms  min {min(v)*1e3:7.2f}")
