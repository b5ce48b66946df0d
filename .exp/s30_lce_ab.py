"""Session 30: LinearCrossEntropy fwd+bwd at small's head, old (HEAD's modeling_hope.py saved as /tmp/abold/old_modeling_head.py next to an empty /tmp/abold/hope_hf_old/__init__.py) vs the working tree, chunks 1024 and 256, kept and recomputed logits, shuffled order each round, 1 thread. usage: PYTHONPATH=. python .exp/s30_lce_ab.py N [lean]"""
import sys, time, statistics, random, shutil
from hope_hf.cli import tune_allocator
tune_allocator(lean="lean" in sys.argv)
import torch
torch.set_num_threads(1)
sys.path.insert(0, "/tmp/abold")
shutil.copy("/tmp/abold/old_modeling_head.py", "/tmp/abold/hope_hf_old/old_head.py")
from hope_hf_old.old_head import LinearCrossEntropy as Old
from hope_hf.modeling_hope import LinearCrossEntropy as New
torch.manual_seed(0); random.seed(0)
N, D, V = int(sys.argv[1]), 384, 32000
W = (torch.randn(V, D) * 0.05).requires_grad_()
h = torch.randn(N, D).requires_grad_()
y = torch.randint(0, V, (N,))
with torch.no_grad():
    logits = h @ W.t(); mix = torch.softmax(logits, -1) @ W
def run(F, chunk, keep, grads=False):
    h.grad = W.grad = None
    t = time.perf_counter()
    l = F.apply(h, W, y, logits, mix, keep, -100, chunk); l.backward()
    return (time.perf_counter() - t) if not grads else (l.item(), W.grad.clone(), h.grad.clone())
modes = [(F, c, k) for F in (Old, New) for k in (True, False) for c in (1024, 256)]
name = lambda m: f"{'old' if m[0] is Old else 'new'}{m[1]}{'keep' if m[2] else 'ckpt'}"
base = run(Old, 1024, False, True)
for m in modes:
    r = run(*m, grads=True); print(name(m), r[0] - base[0], (r[1] - base[1]).abs().max().item(), (r[2] - base[2]).abs().max().item())
ts = {m: [] for m in modes}
for _ in range(7):
    random.shuffle(modes)
    for m in modes: ts[m].append(run(*m))
print(N, {name(m): round(statistics.median(v) * 1e3) for m, v in sorted(ts.items(), key=lambda kv: name(kv[0]))}, "ms median of 7")
