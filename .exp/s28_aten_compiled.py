"""Session 28: aten events of one fwd+bwd (compiled blocks, or eager), by name, by non-aten ancestor and by parent.
usage: PYTHONPATH=. python .exp/s28_aten_compiled.py tiny 512 [eager]"""
import sys, collections, torch
torch.set_num_threads(1)
from benchmarks.speed import hope_preset, profiled_step
torch.manual_seed(0)
preset, T = sys.argv[1], int(sys.argv[2])
model = hope_preset(preset)
if "eager" not in sys.argv: model.compile_blocks()
prof = profiled_step(model, T)
ev = [e for e in prof.events() if e.name.startswith("aten::")]
print("aten per token", len(ev) / T)
c = collections.Counter(e.name for e in ev)
for k, v in c.most_common(30): print(f"{v:7d} {v/T:6.2f}/tok {k}")
def ctx(e):
    p = e.cpu_parent
    while p is not None and p.name.startswith("aten::"): p = p.cpu_parent
    return p.name[:60] if p is not None else "<top>"
cp = collections.Counter(ctx(e) for e in ev)
print("--- by non-aten ancestor")
for k, v in cp.most_common(25): print(f"{v:7d} {v/T:6.2f}/tok {k}")
print("--- immediate parents of top names")
for name in ("aten::resolve_conj", "aten::as_strided", "aten::to", "aten::copy_", "aten::empty", "aten::add_"):
    pp = collections.Counter((e.cpu_parent.name[:50] if e.cpu_parent is not None else "<none>") for e in ev if e.name == name)
    print(name, pp.most_common(6))
