import torch, collections, sys
from torch.profiler import profile, ProfilerActivity
from hope_hf.memory_hope import chunk_gates, dgd_chunk
B,H,n,C,d = 1,4,int(sys.argv[1]),64,16
la = (torch.rand(B,H,1,C)*-0.1).requires_grad_(); lb = torch.full((B,H,1,C), -0.1, requires_grad=True)
rho = (torch.rand(B,H,1,C)*0.1).requires_grad_()
W0 = torch.randn(B,H,n,d,d, requires_grad=True); S0 = torch.randn(B,H,n,d,d, requires_grad=True)
A = torch.randn(B,H,n,C,d, requires_grad=True); E = torch.randn(B,H,n,C,d, requires_grad=True)
X = torch.randn(B,H,n,C,d, requires_grad=True) if n == 1 else None; P = torch.randn(H,n,d,d)[None].requires_grad_()
g = chunk_gates(la, lb, None, rho)
def f():
    W, S, R = dgd_chunk(W0, S0, A, E, rho, None, gates=g, X=X, prior=P)
    return W.sum() + S.sum() + (R.sum() if R is not None else 0)
f().backward(retain_graph=True)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    out = f()
with profile(activities=[ProfilerActivity.CPU]) as prof2:
    out.backward(retain_graph=True)
for name, p in [("fwd", prof), ("bwd", prof2)]:
    ev = [e for e in p.events() if e.name.startswith("aten::")]
    top = [e for e in ev if not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
    print(name, len(ev), "top", len(top), "time ms", sum(e.self_cpu_time_total for e in p.events())/1e3)
    print(collections.Counter(e.name for e in top).most_common(30))
import time
def tm(fn, k=200):
    fn(); t=time.perf_counter()
    for _ in range(k): fn()
    return (time.perf_counter()-t)/k*1e3
print("fwd ms", tm(f), "fwd+bwd ms", tm(lambda: f().backward(retain_graph=True)))
