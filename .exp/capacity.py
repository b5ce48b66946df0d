"""Can the output memory's form bind keys to values at all? Hand-set, no training: write P random (k, v) pairs
(plus F filler writes) with one chunk-linearised gradient step of rate eta from M_0 (the model's init), then read
with each key; retrieval = argmax_j <M'(k_i) - M_0(k_i), v_j> == i. Variants of the hidden activation n(.)."""
import math, torch
torch.manual_seed(0)
d, h, trials = 16, 32, 300
acts = {
    "unit(silu)": lambda s: torch.nn.functional.normalize(torch.nn.functional.silu(s), dim=-1),
    "unit(silu-mean)": lambda s: torch.nn.functional.normalize((x := torch.nn.functional.silu(s)) - x.mean(-1, keepdim=True), dim=-1),
    "unit(linear)": lambda s: torch.nn.functional.normalize(s, dim=-1),
    "silu": torch.nn.functional.silu,
    "linear(no MLP: W k)": None,
}
def run(act, P, F, eta):
    ok = 0
    for _ in range(trials):
        W2 = (torch.randn(h, d) / math.sqrt(d)).requires_grad_()
        W1 = (torch.randn(d, h) * 0.5 / math.sqrt(h)).requires_grad_()
        K = torch.nn.functional.normalize(torch.randn(P + F, d), dim=-1)
        V = torch.randn(P + F, d)
        if act is None:
            M = lambda W1_, W2_, z: z @ W2_[:d, :d].T          # plain linear memory W z (DeltaNet read)
        else:
            M = lambda W1_, W2_, z: z + act(z @ W2_.T) @ W1_.T
        loss = 0.5 * (M(W1, W2, K) - V).pow(2).sum()
        g1, g2 = (torch.zeros_like(w) if g is None else g for g, w in zip(torch.autograd.grad(loss, (W1, W2), allow_unused=True), (W1, W2)))
        with torch.no_grad():
            delta = M(W1 - eta * g1, W2 - eta * g2, K[:P]) - M(W1, W2, K[:P])
            ok += (torch.argmax(delta @ V[:P].T, -1) == torch.arange(P)).float().mean().item()
    return ok / trials
for F in (0, 32):
    for eta in (0.1, 1.0):
        print(f"F={F} eta={eta}: " + " | ".join(f"{name}: " + " ".join(f"P{P}={run(a, P, F, eta):.2f}" for P in (2, 4, 8)) for name, a in acts.items()), flush=True)
