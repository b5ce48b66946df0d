"""Rejected (session 18): stacking the projection memories' W1 and W2 dgd_chunk calls when d == h (small):
the concatenated call is slower, 22.7-25.4 vs 21.2-23.3 ms fwd+bwd (B=1, H=6, n=5, C=64, d=h=64, 1 thread)."""
"""Two independent dgd_chunk calls (the projection memories' W2 and W1 when d == h) vs one on inputs stacked along n."""
import torch, time
from hope_hf.memory_hope import chunk_gates, dgd_chunk
torch.manual_seed(0)
B,H,n,C,d = 1,6,5,64,64
la = (torch.rand(B,H,1,C)*-0.1).requires_grad_(); lb = torch.full((H,), -0.1, requires_grad=True)
rho = (torch.rand(B,H,1,C)*0.1).requires_grad_()
mk = lambda *s: torch.randn(*s, requires_grad=True)
W2, W1, S2, S1 = (mk(B,H,n,d,d) for _ in range(4)); k = mk(B,H,1,C,d); h = mk(B,H,n,C,d)
E2, E1 = mk(B,H,n,C,d), mk(B,H,n,C,d); P2, P1 = mk(1,H,n,d,d), mk(1,H,n,d,d)
def gates(): return chunk_gates(la, lb[None,:,None,None].expand_as(la), None, rho)
def two():
    g = gates()
    a = dgd_chunk(W2, S2, k, E2, rho, None, gates=g, prior=P2)
    b = dgd_chunk(W1, S1, h, E1, rho, None, gates=g, prior=P1)
    return sum(x.sum() for x in a[:2] + b[:2])
def one():
    g = gates()
    c = lambda x, y: torch.cat([x, y], 2)
    W, S, _ = dgd_chunk(c(W2, W1), c(S2, S1), c(k.expand_as(h), h), c(E2, E1), rho, None, gates=g, prior=c(P2, P1))
    return sum(x.sum() for x in W.split(n, 2) + S.split(n, 2))
def tm(fn, k=30):
    fn().backward(); t = time.perf_counter()
    for _ in range(k): fn().backward()
    return (time.perf_counter() - t) / k * 1e3
print(float(two()), float(one()))
for _ in range(3): print(f"two {tm(two):.2f} ms  one {tm(one):.2f} ms")
