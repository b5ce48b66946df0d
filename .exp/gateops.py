import torch, collections
from torch.profiler import profile, ProfilerActivity
from hope_hf.memory_hope import chunk_gates, dgd_chunk
B,H,C,d = 1,4,64,16
la = (torch.rand(B,H,1,C)*-0.1).requires_grad_(); lb = torch.full((B,H,1,C), -0.1, requires_grad=True)
rho = (torch.rand(B,H,1,C)*0.1).requires_grad_()
W0 = torch.randn(B,H,5,d,d, requires_grad=True); S0 = torch.randn(B,H,5,d,d, requires_grad=True)
A = torch.randn(B,H,5,C,d, requires_grad=True); E = torch.randn(B,H,5,C,d, requires_grad=True)
X = torch.randn(B,H,5,C,d, requires_grad=True); P = torch.randn(H,5,d,d)[None]
def f():
    g = chunk_gates(la, lb, None, rho)
    W, S, R = dgd_chunk(W0, S0, A, E, rho, None, gates=g, X=X, prior=P)
    return W.sum() + S.sum() + R.sum()
f().backward()
for name, fn in [("gates", lambda: chunk_gates(la, lb, None, rho)), ("all", f)]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn()
        if name == "all": out.backward()
    ev = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ev if not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
    print(name, len(ev), "top", len(top))
    print(collections.Counter(e.name for e in top).most_common(25))
