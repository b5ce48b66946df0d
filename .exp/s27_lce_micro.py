"""Session 27: LinearCrossEntropy forward+backward alone at small's head shape (2048 x 384, vocab 32000), 1 thread:
recompute + d W (old) vs keep / mix variants."""
import time, statistics
from hope_hf.cli import tune_allocator
tune_allocator()
import torch
torch.set_num_threads(1)
from hope_hf.modeling_hope import LinearCrossEntropy
torch.manual_seed(0)
N, D, V = 2048, 384, 32000
W = (torch.randn(V, D) * 0.05).requires_grad_()
h = torch.randn(N, D).requires_grad_()
y = torch.randint(0, V, (N,))
with torch.no_grad():
    logits = h @ W.t()
    mix = torch.softmax(logits, -1) @ W
def run(mix_, keep):
    h.grad = W.grad = None
    t = time.perf_counter()
    LinearCrossEntropy.apply(h, W, y, logits, mix_, keep).backward()
    return time.perf_counter() - t
modes = {"old": (None, False), "keep": (None, True), "mix": (mix, False), "keep+mix": (mix, True)}
for m in modes.values(): run(*m)
ts = {k: [] for k in modes}
for r in range(5):
    for k, m in modes.items():
        ts[k].append(run(*m))
print({k: round(statistics.median(v) * 1e3) for k, v in ts.items()}, "ms")
t = time.perf_counter(); logits2 = h.detach() @ W.detach().t(); print("one product", round((time.perf_counter() - t) * 1e3), "ms")
