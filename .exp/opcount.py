"""Count aten calls per token (fwd+bwd) by op name, forward vs backward, for a preset at one length.
usage: OMP_NUM_THREADS=1 PYTHONPATH=. python .exp/opcount.py tiny 512"""
import sys, collections
import torch
from benchmarks.speed import hope_preset, profiled_step
torch.manual_seed(0)
preset, T = sys.argv[1], int(sys.argv[2])
prof = profiled_step(hope_preset(preset), T)
ev = [e for e in prof.events() if e.name.startswith("aten::")]
top = [e for e in ev if not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
def inbwd(e):
    p = e
    while p is not None:
        if "Backward" in p.name or "autograd::engine" in p.name: return True
        p = p.cpu_parent
    return False
nb = sum(inbwd(e) for e in ev)
print(f"all {len(ev)/T:.1f}/tok  top {len(top)/T:.1f}/tok  in-backward {nb/T:.1f}/tok")
c = collections.Counter(e.name for e in ev)
ct = collections.Counter(e.name for e in top)
for n, k in c.most_common(40):
    print(f"{n:40s} {k/T:7.2f}  top {ct[n]/T:6.2f}")
if len(sys.argv) > 3:
    for name in sys.argv[3].split(","):
        par = collections.Counter((e.cpu_parent.name if e.cpu_parent else None) for e in ev if e.name == name)
        print(name, "<-", [(p, round(k / T, 2)) for p, k in par.most_common(8)])
if "--time" in sys.argv:
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
