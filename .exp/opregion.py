"""aten calls per token inside chosen functions (forward, and backward via autograd's sequence numbers not
available: we count forward ops in the region, and backward nodes whose forward op was in the region).
usage: OMP_NUM_THREADS=1 PYTHONPATH=. python .exp/opregion.py tiny 512"""
import sys, collections
import torch
from torch.profiler import record_function
from benchmarks.speed import hope_preset, profiled_step
import hope_hf.memory_hope as mh
import hope_hf.modeling_hope as mo

def wrap(mod, name):
    f = getattr(mod, name)
    def g(*a, **k):
        with record_function("R:" + name):
            return f(*a, **k)
    setattr(mod, name, g)
for n in ["dgd_chunk", "memory_errors", "chunk_gates", "projection_memories", "output_memory", "cms_grad", "mlp_memory"]:
    wrap(mh, n)
    if hasattr(mo, n): setattr(mo, n, getattr(mh, n))
torch.manual_seed(0)
preset, T = sys.argv[1], int(sys.argv[2])
prof = profiled_step(hope_preset(preset), T)
ev = [e for e in prof.events() if e.name.startswith("aten::")]
def region(e):
    p, names = e.cpu_parent, []
    while p is not None:
        if p.name.startswith("R:"): names.append(p.name)
        p = p.cpu_parent
    return names[0] if names else None   # innermost
c = collections.Counter(region(e) for e in ev)
for k, v in c.most_common(): print(f"{str(k):30s} {v/T:7.1f} /tok (forward only, nested regions innermost)")
seq = {}
for e in ev:
    if e.sequence_nr is not None and e.sequence_nr >= 0 and not e.name.startswith("autograd"):
        r = region(e)
        seq.setdefault(e.sequence_nr, r)
allev = prof.events()
bw = collections.Counter()
for e in allev:
    if e.name.startswith("autograd::engine::evaluate_function"):
        r = seq.get(e.sequence_nr, "?")
        # count aten descendants
        stack, n = list(e.cpu_children), 0
        while stack:
            x = stack.pop(); n += x.name.startswith("aten::"); stack.extend(x.cpu_children)
        bw[r] += n
print("backward aten calls by forward region:")
for k, v in bw.most_common(): print(f"  {str(k):30s} {v/T:7.1f} /tok")
ft = collections.Counter(); bt = collections.Counter()
for e in ev:
    ft[region(e)] += e.self_cpu_time_total
for e in allev:
    if e.name.startswith("autograd::engine::evaluate_function"):
        bt[seq.get(e.sequence_nr, "?")] += e.cpu_time_total
tot = sum(e.self_cpu_time_total for e in allev)
print("time ms (fwd self in region | bwd total by fwd region), total", tot/1e3)
for k in set(ft) | set(bt): print(f"  {str(k):30s} fwd {ft[k]/1e3:7.1f}  bwd {bt[k]/1e3:7.1f}")
