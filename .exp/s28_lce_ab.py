"""Session 28: LinearCrossEntropy fwd+bwd alone, old (a modeling_hope.py saved as /tmp/abold/old_modeling_head.py, e.g.
`git show 401ced4:hope_hf/modeling_hope.py`, next to an empty /tmp/abold/hope_hf_old/__init__.py) vs the working tree,
at small's head, interleaved, 1 thread. usage: PYTHONPATH=. python .exp/s28_lce_ab.py 2048"""
import sys, time, statistics
from hope_hf.cli import tune_allocator
tune_allocator()
import torch
torch.set_num_threads(1)
sys.path.insert(0, "/tmp/abold")
import hope_hf_old  # noqa
import shutil; shutil.copy("/tmp/abold/old_modeling_head.py", "/tmp/abold/hope_hf_old/old_head.py")
from hope_hf_old.old_head import LinearCrossEntropy as Old
from hope_hf.modeling_hope import LinearCrossEntropy as New
torch.manual_seed(0)
N, D, V = int(sys.argv[1]) if len(sys.argv) > 1 else 2048, 384, 32000
W = (torch.randn(V, D) * 0.05).requires_grad_()
h = torch.randn(N, D).requires_grad_()
y = torch.randint(0, V, (N,))
with torch.no_grad():
    logits = h @ W.t()
    mix = torch.softmax(logits, -1) @ W
def run(F, mix_, keep):
    h.grad = W.grad = None
    t = time.perf_counter()
    l = F.apply(h, W, y, logits, mix_, keep); l.backward()
    return time.perf_counter() - t, l.item(), h.grad.clone(), W.grad.clone()
modes = {"old keep+mix": (Old, mix, True), "new keep+mix": (New, mix, True), "old ckpt": (Old, mix, False), "new ckpt": (New, mix, False)}
res = {k: run(*m) for k, m in modes.items()}
print("loss old/new", res["old keep+mix"][1], res["new keep+mix"][1], "max |dW| diff", (res["old keep+mix"][3] - res["new keep+mix"][3]).abs().max().item(), "max |dh| diff", (res["old ckpt"][2] - res["new ckpt"][2]).abs().max().item())
ts = {k: [] for k in modes}
for r in range(7):
    for k, m in modes.items():
        ts[k].append(run(*m)[0])
print({k: round(statistics.median(v) * 1e3) for k, v in ts.items()}, "ms (median of 7)")
