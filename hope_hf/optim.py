"""Deep optimizers of Nested Learning and multi-frequency outer updates (package-only module).

Optimizers are memories of the gradient stream (NeurIPS §2.3; `../shared/notes/hope-paper.md` §1.7-8):

- `M3`: Multi-scale Momentum Muon (arXiv Alg. 1 / Eq. 75): a fast momentum every step, a slow momentum every
  `slow_every` steps from the gradients of those steps, both Newton-Schulz orthogonalised, over an Adam-style
  second-moment denominator. Non-matrix parameters use an AdamW fallback.
- `DMGD`: deep momentum gradient descent (NeurIPS Eq. 23), the momentum is a memory trained by its own inner
  objective; also plain momentum as a memory (Eq. 16-17), preconditioned momentum and delta momentum.
- Multi-frequency stepping (NeurIPS Eq. 31 applied to the outer loop): a parameter group with period N keeps its
  gradients summed for N steps (or N training tokens) and takes one update at the end, and is constant in between.
  `M3` and `DMGD` honour a per-group `update_every` (steps) themselves; `MultiFrequency` wraps any other optimizer
  (e.g. `torch.optim.AdamW`) and also counts in tokens. `cms_param_groups` gives each Hope CMS level's initial
  state (theta_0 = gate/up/down) its own group and period.

Every piece of state (moments, memories, gradient accumulators, counters) lives in `state_dict()`, so a resumed run
continues bit-identically. `create_optimizer(model, name, ...)` builds any of them with Hope's parameter groups, and
`OptimizerFactory` lets `transformers.Trainer(optimizer_cls_and_kwargs=(OptimizerFactory, {...}))` do the same.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch.optim import Optimizer

__all__ = [
    "DMGD",
    "M3",
    "OPTIMIZERS",
    "MultiFrequency",
    "OptimizerFactory",
    "cms_param_groups",
    "create_optimizer",
    "hope_param_groups",
    "newton_schulz",
]

OPTIMIZERS = ("adamw", "m3", "dmgd")

# Quintic Newton-Schulz coefficients of Muon (Jordan et al., 2024): they push every singular value into ~[0.7, 1.2]
# in 5 steps, which is all the orthogonalisation needs.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """NS_T(G) of Alg. 1: the quintic Newton-Schulz iteration of Muon, approximately U V^T for G = U S V^T.

    Works on the last two dimensions (leading ones are a batch: Hope's per-head memory banks are orthogonalised
    head by head). Computed in float32 and returned in G's dtype."""
    a, b, c = _NS_COEFFS
    X = G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


class _MultiRate(Optimizer):
    """Base of `M3` and `DMGD`: the per-group `update_every` (NeurIPS Eq. 31 in the outer loop).

    A group with `update_every = N > 1` adds each step's gradient to `state[p]["grad_acc"]`; on every N-th call of
    `step()` it is updated once with the sum (`accumulate="sum"`, Eq. 31's Σ) or mean of those N gradients, and
    between those calls it does not change at all (no weight decay, no moment decay, no step count)."""

    handles_update_every = True

    def _group_grads(self, group) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(param, gradient to apply) for the group's parameters that update at this call; [] between updates."""
        every = int(group.get("update_every", 1))
        if every < 1:
            raise ValueError(f"update_every must be >= 1, got {every}")
        live = [p for p in group["params"] if p.grad is not None]
        if every == 1:
            return [(p, p.grad) for p in live]
        group["calls"] = group.get("calls", 0) + 1
        due = group["calls"] % every == 0
        out = []
        for p in live:
            st = self.state[p]
            if "grad_acc" not in st:
                st["grad_acc"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            acc = st["grad_acc"].add_(p.grad)
            if due:
                g = acc.clone() if group.get("accumulate", "sum") == "sum" else acc / every
                acc.zero_()
                out.append((p, g))
        return out

    @torch.no_grad()
    def step(self, closure=None):
        """Apply `_step_param(p, g, group)` (the subclass's rule) to every parameter due at this call."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p, g in self._group_grads(group):
                self._step_param(p, g, group)
        return loss


class M3(_MultiRate):
    """Multi-scale Momentum Muon (arXiv Alg. 1 / Eq. 75; hope-paper.md §1.8).

    For a matrix parameter Θ with gradient g_t, every step:
        M1 <- b1 M1 + g_t,   V <- b2 V + (1 - b2) g_t^2,   O1 = NS_T(M1)
    every `slow_every` (f) steps, with G = Σ of the gradients of those f steps:
        M2 <- b3 M2 + G,     O2 = NS_T(M2)          (O2 is 0 until the first slow update)
    and the update   Θ <- Θ (1 - lr wd) - lr (O1 + alpha O2) / (sqrt(V / (1 - b2^t)) + eps).

    **The "+=" ambiguity.** Alg. 1 as transcribed writes M1 += b1 g, V += b2 g^2, M2 += b3 Σg with no decay, which
    makes M1 and M2 sums over the whole run and V an ever-growing (Adagrad-like) denominator. We default to
    exponential moving averages (`betas = (b1, b2, b3)` are decays, Muon's convention for M1/M2 and Adam's, with bias
    correction, for V); NS_T is scale invariant, so only V's normalisation changes the step size. `literal=True`
    gives the transcribed form exactly (betas are then the additive coefficients, no decay, no bias correction).

    **Denominator.** `denominator="adam"` (Alg. 1) divides the orthogonalised update by sqrt(V); note this reintroduces
    the inverse gradient scale that NS removed, so lr is not transferable from Muon. `denominator="none"` is Muon's
    update with its shape factor sqrt(max(1, rows/cols)).

    **Non-matrix parameters** (ndim < 2, or any parameter of a group with `use_muon=False`, which is where embeddings
    and the LM head belong, as in every Muon implementation) take an AdamW step with `adamw_betas`, `eps`, the
    group's weight decay and lr * `adamw_lr_ratio`. Tensors with more than two dimensions are orthogonalised per
    matrix over their last two dimensions (Hope's memory banks are per head). `alpha=0` skips the slow momentum
    entirely (no M2 state): M3 is then Muon with an Adam denominator.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Sequence[float] = (0.95, 0.999, 0.99), alpha: float = 0.5,
                 slow_every: int = 16, ns_steps: int = 5, eps: float = 1e-8, weight_decay: float = 0.0,
                 literal: bool = False, denominator: str = "adam", adamw_betas: Sequence[float] = (0.9, 0.999),
                 adamw_lr_ratio: float = 1.0, use_muon: bool = True, update_every: int = 1,
                 accumulate: str = "sum"):
        if lr < 0 or eps <= 0 or slow_every < 1 or ns_steps < 1 or update_every < 1:
            raise ValueError("M3 needs lr >= 0, eps > 0, slow_every >= 1, ns_steps >= 1, update_every >= 1")
        if denominator not in ("adam", "none"):
            raise ValueError(f"denominator must be 'adam' or 'none', got {denominator!r}")
        if accumulate not in ("sum", "mean"):
            raise ValueError(f"accumulate must be 'sum' or 'mean', got {accumulate!r}")
        defaults = dict(lr=lr, betas=tuple(betas), alpha=alpha, slow_every=slow_every, ns_steps=ns_steps, eps=eps,
                        weight_decay=weight_decay, literal=literal, denominator=denominator,
                        adamw_betas=tuple(adamw_betas), adamw_lr_ratio=adamw_lr_ratio, use_muon=use_muon,
                        update_every=update_every, accumulate=accumulate)
        super().__init__(params, defaults)

    def _step_param(self, p, g, group):
        if group["use_muon"] and p.ndim >= 2:
            self._muon_step(p, g, group)
        else:
            _adamw_step(p, g, self.state[p], group["lr"] * group["adamw_lr_ratio"], group["adamw_betas"],
                        group["eps"], group["weight_decay"])

    def _muon_step(self, p, g, group):
        st = self.state[p]
        b1, b2, b3 = group["betas"]
        lr, alpha, literal = group["lr"], group["alpha"], group["literal"]
        if "m1" not in st:
            st["step"] = 0
            st["m1"] = torch.zeros_like(p)
            st["v"] = torch.zeros_like(p)
        if alpha != 0 and "m2" not in st:
            st["m2"], st["g_slow"], st["o2"] = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
        st["step"] += 1
        t = st["step"]
        m1, v = st["m1"], st["v"]
        if literal:
            m1.add_(g, alpha=b1)
            v.addcmul_(g, g, value=b2)
            v_hat = v
        else:
            m1.mul_(b1).add_(g)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            v_hat = v / (1 - b2 ** t)
        update = newton_schulz(m1, group["ns_steps"])
        if alpha != 0:
            st["g_slow"].add_(g)
            if t % group["slow_every"] == 0:
                if literal:
                    st["m2"].add_(st["g_slow"], alpha=b3)
                else:
                    st["m2"].mul_(b3).add_(st["g_slow"])
                st["g_slow"].zero_()
                st["o2"].copy_(newton_schulz(st["m2"], group["ns_steps"]))
            update = update.add_(st["o2"], alpha=alpha)
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        if group["denominator"] == "adam":
            p.addcdiv_(update, v_hat.sqrt().add_(group["eps"]), value=-lr)
        else:
            p.add_(update, alpha=-lr * max(1.0, p.size(-2) / p.size(-1)) ** 0.5)


def _adamw_step(p, g, st, lr, betas, eps, weight_decay):
    """The AdamW fallback (same arithmetic as `torch.optim.AdamW`, decoupled weight decay)."""
    if "exp_avg" not in st:
        st["step"] = 0
        st["exp_avg"] = torch.zeros_like(p)
        st["exp_avg_sq"] = torch.zeros_like(p)
    st["step"] += 1
    b1, b2 = betas
    t = st["step"]
    if weight_decay:
        p.mul_(1 - lr * weight_decay)
    st["exp_avg"].lerp_(g, 1 - b1)
    st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (st["exp_avg_sq"].sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
    p.addcdiv_(st["exp_avg"], denom, value=-lr / (1 - b1 ** t))


class DMGD(_MultiRate):
    """Momentum as a memory of the gradients (NeurIPS §2.3; hope-paper.md §1.7-8), one memory per parameter tensor.

    With u_i = ∇L(W_i) (the gradient), value v_i = P_i u_i and lr η, the `variant`s are:

    - `"linear"`: momentum as a key-less linear memory (NeurIPS Eq. 16-17): m <- α m - η v, W <- W + m.
      With P = I this is exactly SGD with momentum α and lr η (heavy ball, torch's `dampening=0`).
    - `"preconditioned"`: the same with P_i = diag(1 / (sqrt(E[u^2]) + eps)) (an Adam-style diagonal preconditioner,
      `beta2`, bias-corrected; the paper leaves P_i open): m <- α m - η P_i u.
    - `"delta"` (delta momentum, L2 inner objective ‖m u^T - P‖^2): m <- (α I - û û^T) m - η P_i u, with the key
      û = u / ‖u‖ normalised per tensor (DGD's unit-norm keys, arXiv Eq. 57), so the step removes the momentum's
      component along the current gradient before writing the new one. P = I unless `precondition="rms"`.
    - `"deep"` (DMGD, NeurIPS Eq. 23): W <- W + m_{i+1}(u_i), m_{i+1} = α m_i - η ∇L^(2)(m_i; u_i, I). The memory is
      m(u) = M + η rms(v) f_ψ(ũ), ũ = v / rms(v): the linear momentum M plus an MLP f_ψ(z) = w2^T silu(w1 z + b1)
      of width `hidden`, applied elementwise and shared by the tensor's entries (3·hidden numbers per tensor, so
      it scales to any size). The inner objective is the identity (dot-product) one, L^(2) = <m(u), v>, normalised
      per entry for ψ: M <- α M - η v (as in "linear") and ψ <- `inner_decay` ψ - `inner_lr` ∇_ψ mean(f_ψ(ũ) ũ);
      the memory is written before it is read (Eq. 23). w2 starts at 0, so step 1 is a plain momentum step, and
      `inner_lr=0` reduces "deep" to "linear".

    Weight decay is decoupled: W <- W (1 - η wd) before the step. Every variant works on tensors of any shape.
    """

    VARIANTS = ("linear", "preconditioned", "delta", "deep")

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, variant: str = "deep",
                 precondition: str | None = "auto", beta2: float = 0.999, eps: float = 1e-8, hidden: int = 4,
                 inner_lr: float = 1e-2, inner_decay: float | None = None, weight_decay: float = 0.0,
                 update_every: int = 1, accumulate: str = "sum"):
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {self.VARIANTS}, got {variant!r}")
        if precondition == "auto":
            precondition = "rms" if variant == "preconditioned" else None
        if precondition not in (None, "rms"):
            raise ValueError(f"precondition must be None or 'rms', got {precondition!r}")
        if lr < 0 or not 0 <= momentum <= 1 or hidden < 1 or update_every < 1:
            raise ValueError("DMGD needs lr >= 0, 0 <= momentum <= 1, hidden >= 1, update_every >= 1")
        if accumulate not in ("sum", "mean"):
            raise ValueError(f"accumulate must be 'sum' or 'mean', got {accumulate!r}")
        defaults = dict(lr=lr, momentum=momentum, variant=variant, precondition=precondition, beta2=beta2, eps=eps,
                        hidden=hidden, inner_lr=inner_lr, inner_decay=momentum if inner_decay is None else inner_decay,
                        weight_decay=weight_decay, update_every=update_every, accumulate=accumulate)
        super().__init__(params, defaults)

    def _step_param(self, p, u, group):
        st = self.state[p]
        lr, alpha, eps, variant = group["lr"], group["momentum"], group["eps"], group["variant"]
        if "m" not in st:
            st["step"] = 0
            st["m"] = torch.zeros_like(p)
            if group["precondition"] == "rms":
                st["v"] = torch.zeros_like(p)
            if variant == "deep":
                H = group["hidden"]
                st["w1"] = torch.linspace(0.5, 2.0, H, dtype=p.dtype, device=p.device)
                st["b1"] = torch.linspace(-1.0, 1.0, H, dtype=p.dtype, device=p.device)
                st["w2"] = torch.zeros(H, dtype=p.dtype, device=p.device)
        st["step"] += 1
        if group["precondition"] == "rms":
            b2 = group["beta2"]
            st["v"].mul_(b2).addcmul_(u, u, value=1 - b2)
            val = u / (st["v"] / (1 - b2 ** st["step"])).sqrt().add_(eps)
        else:
            val = u
        m = st["m"]
        if variant == "delta":
            key = u / (u.norm() + eps)
            overlap = (key * m).sum()
            m.mul_(alpha).sub_(key * overlap)
        else:
            m.mul_(alpha)
        m.add_(val, alpha=-lr)
        update = m
        if variant == "deep":
            scale = val.pow(2).mean().sqrt()
            z = (val / (scale + eps)).reshape(-1, 1)                     # entries as a batch of scalar inputs
            w1, b1, w2 = st["w1"], st["b1"], st["w2"]
            pre = z * w1 + b1
            sig = torch.sigmoid(pre)
            act = pre * sig
            dact = sig * (1 + pre * (1 - sig)) * w2 * z                  # ∂ f_ψ(z)/∂pre, times z (the loss weight)
            n = z.numel()
            g_w2 = (act * z).sum(0) / n                                   # ∇_ψ mean(f_ψ(z) z)
            g_b1 = dact.sum(0) / n
            g_w1 = (dact * z).sum(0) / n
            d, ilr = group["inner_decay"], group["inner_lr"]
            for w, gw in ((w1, g_w1), (b1, g_b1), (w2, g_w2)):
                w.mul_(d).add_(gw, alpha=-ilr)
            f = (torch.nn.functional.silu(z * w1 + b1) @ w2).view_as(p)
            update = m + f * (lr * scale)
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        p.add_(update)


class MultiFrequency(Optimizer):
    """Give parameter groups of any optimizer their own update period (NeurIPS Eq. 31 in the outer loop).

        opt = MultiFrequency(torch.optim.AdamW(cms_param_groups(model, [1, 16])))       # periods from the groups
        opt = MultiFrequency(AdamW(groups), periods={2: 2**20}, unit="tokens", tokens_per_step=B * T * world)

    `periods` maps a group index to N (default: each group's `update_every`, for an inner optimizer that does not
    honour it itself). With `unit="steps"` a group updates on every N-th `step()`; with `unit="tokens"` it updates
    at the step where the running token count (`num_tokens` passed to `step()`, else `tokens_per_step`; count the
    tokens of all processes) crosses a multiple of N. In between, its gradients are summed (or averaged,
    `accumulate="mean"`) in the wrapper and the inner optimizer sees `grad=None`, so it skips the group entirely
    (PyTorch optimizers do: no weight decay, no moment decay, no step count). Each update therefore equals one
    inner step on the accumulated gradient. The wrapper is an `Optimizer` sharing the inner `param_groups` and
    `state`, so LR schedulers, `Trainer` and Accelerate use it as they would the inner one; `state_dict()` holds the
    inner state plus the token count and the accumulated gradients.
    """

    def __init__(self, optimizer: Optimizer, periods: Mapping[int, int] | None = None, unit: str = "steps",
                 tokens_per_step: int | None = None, accumulate: str = "sum"):
        if unit not in ("steps", "tokens"):
            raise ValueError(f"unit must be 'steps' or 'tokens', got {unit!r}")
        if accumulate not in ("sum", "mean"):
            raise ValueError(f"accumulate must be 'sum' or 'mean', got {accumulate!r}")
        self.optimizer = optimizer
        native = getattr(optimizer, "handles_update_every", False)
        if periods is None:
            if native:
                raise ValueError(f"{type(optimizer).__name__} honours each group's `update_every` itself; wrap it "
                                 "only with explicit `periods` (e.g. in tokens)")
            periods = {i: int(g.get("update_every", 1)) for i, g in enumerate(optimizer.param_groups)}
        self.periods = {int(i): int(n) for i, n in periods.items()}
        for i, n in self.periods.items():
            if not 0 <= i < len(optimizer.param_groups) or n < 1:
                raise ValueError(f"bad period {n} for group {i} ({len(optimizer.param_groups)} groups)")
            if native and n > 1 and optimizer.param_groups[i].get("update_every", 1) > 1:
                raise ValueError(f"group {i} already has update_every > 1 in the inner optimizer")
        self.unit, self.tokens_per_step, self.accumulate = unit, tokens_per_step, accumulate
        self.tokens_seen = 0
        self._acc: dict[tuple[int, int], torch.Tensor] = {}
        self._acc_steps: dict[int, int] = {}
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                     "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            setattr(self, name, OrderedDict())

    # the inner optimizer's groups/state/defaults are ours (schedulers and Trainer read and write them)
    param_groups = property(lambda self: self.optimizer.param_groups,
                            lambda self, v: setattr(self.optimizer, "param_groups", v))
    state = property(lambda self: self.optimizer.state, lambda self, v: setattr(self.optimizer, "state", v))
    defaults = property(lambda self: self.optimizer.defaults, lambda self, v: setattr(self.optimizer, "defaults", v))

    def __repr__(self):
        return f"MultiFrequency({self.optimizer!r}, periods={self.periods}, unit={self.unit!r})"

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group):
        self.optimizer.add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None, num_tokens: int | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if num_tokens is None:
            if self.unit == "tokens" and self.tokens_per_step is None:
                raise ValueError("unit='tokens' needs step(num_tokens=...) or tokens_per_step")
            num_tokens = self.tokens_per_step if self.unit == "tokens" else 1
        before, self.tokens_seen = self.tokens_seen, self.tokens_seen + int(num_tokens)
        swapped = []
        for gi, group in enumerate(self.param_groups):
            N = self.periods.get(gi, 1)
            if N == 1:
                continue
            due = self.tokens_seen // N > before // N
            n_acc = self._acc_steps.get(gi, 0) + 1
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                acc = self._acc.get((gi, pi))
                acc = p.grad.detach().clone() if acc is None else acc.add_(p.grad)
                swapped.append((p, p.grad))
                if due:
                    p.grad = acc if self.accumulate == "sum" else acc / n_acc
                    self._acc.pop((gi, pi), None)
                else:
                    self._acc[(gi, pi)] = acc
                    p.grad = None
            self._acc_steps[gi] = 0 if due else n_acc
        try:
            self.optimizer.step()
        finally:
            for p, g in swapped:
                p.grad = g
        return loss

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(),
                "multifrequency": {"tokens_seen": self.tokens_seen, "periods": dict(self.periods), "unit": self.unit,
                                   "acc_steps": dict(self._acc_steps),
                                   "acc": {f"{gi}.{pi}": t.clone() for (gi, pi), t in self._acc.items()}}}

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict["optimizer"])
        mf = state_dict["multifrequency"]
        self.tokens_seen = int(mf["tokens_seen"])
        self._acc_steps = {int(k): int(v) for k, v in mf["acc_steps"].items()}
        self._acc = {}
        for key, t in mf["acc"].items():
            gi, pi = map(int, key.split("."))
            p = self.param_groups[gi]["params"][pi]
            self._acc[(gi, pi)] = t.to(device=p.device, dtype=p.dtype).clone()


# ---------------------------------------------------------------------------------------------------------------
# Parameter groups for Hope and a single entry point for training scripts / Trainer
# ---------------------------------------------------------------------------------------------------------------

def _as_period_list(periods, n_levels):
    if isinstance(periods, Mapping):
        return [None if periods.get(l) is None else int(periods[l]) for l in range(n_levels)]  # None: every step
    periods = [int(n) for n in periods]
    if len(periods) != n_levels:
        raise ValueError(f"{len(periods)} periods for {n_levels} CMS levels")
    return periods


def cms_param_groups(model, periods, tokens_per_step: int | None = None, weight_decay: float = 0.0,
                     **group_kwargs) -> list[dict]:
    """Parameter groups for an outer optimizer where CMS level l's initial state (`layers[i].cms[l].{gate,up,down}`
    of every layer) updates every `periods[l]` steps (a list per level, or a dict level -> period; 1 = every step).

    With `tokens_per_step`, periods are in training tokens (the paper's 1M / 16M-token levels) and are converted
    to steps; each must then be a multiple of `tokens_per_step` (else use `MultiFrequency(unit="tokens")`).
    Group 0 holds every other parameter. Groups carry `update_every` (honoured by `M3`/`DMGD`, and by AdamW through
    `MultiFrequency`), a `name`, `weight_decay`, and `group_kwargs`."""
    layers = _hope_layers(model)
    n_levels = len(layers[0].cms) if layers else 0
    periods = _as_period_list(periods, n_levels)
    if tokens_per_step:
        bad = [n for n in periods if n is not None and n % tokens_per_step]
        if bad:
            raise ValueError(f"CMS periods {bad} (tokens) are not multiples of tokens_per_step={tokens_per_step}; "
                             "use MultiFrequency(unit='tokens') instead")
        periods = [None if n is None else n // tokens_per_step for n in periods]
    periods = [1 if n is None else n for n in periods]
    level_params = [[getattr(layer.cms[l], k) for layer in layers for k in ("gate", "up", "down")]
                    for l in range(n_levels)]
    taken = {id(p) for ps in level_params for p in ps}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups = [dict(params=rest, name="rest", update_every=1, weight_decay=weight_decay, **group_kwargs)]
    groups += [dict(params=ps, name=f"cms.{l}", update_every=n, weight_decay=weight_decay, **group_kwargs)
               for l, (ps, n) in enumerate(zip(level_params, periods))]
    return groups


def _hope_layers(model):
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(layer, "cms") for layer in layers):
        raise ValueError("expected a Hope model (HopeForCausalLM or HopeModel) with `layers[i].cms`")
    return list(layers)


def hope_param_groups(model, weight_decay: float = 0.0, cms_periods=None, tokens_per_step: int | None = None,
                      **group_kwargs) -> list[dict]:
    """Groups for training a Hope model: embeddings / LM head (`use_muon=False`, no decay), other matrices
    (decayed), vectors and scalars (no decay), each split per CMS level when `cms_periods` is given (see
    `cms_param_groups`). Empty groups are dropped."""
    if cms_periods is not None:
        base = cms_param_groups(model, cms_periods, tokens_per_step=tokens_per_step)
    else:
        base = [dict(params=[p for p in model.parameters() if p.requires_grad], name="rest", update_every=1)]
    special = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        mod = getattr(model, get, lambda: None)()
        if mod is not None and getattr(mod, "weight", None) is not None:
            special.add(id(mod.weight))
    groups = []
    for g in base:
        ps = g["params"]
        for suffix, sel, extra in (
                ("embeddings", [p for p in ps if id(p) in special], dict(use_muon=False, weight_decay=0.0)),
                ("matrices", [p for p in ps if id(p) not in special and p.ndim >= 2],
                 dict(weight_decay=weight_decay)),
                ("vectors", [p for p in ps if id(p) not in special and p.ndim < 2], dict(weight_decay=0.0))):
            if sel:
                groups.append({**g, **group_kwargs, **extra, "params": sel, "name": f"{g['name']}.{suffix}"})
    return groups


def create_optimizer(model, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0, cms_periods=None,
                     period_unit: str = "steps", tokens_per_step: int | None = None, **kwargs) -> Optimizer:
    """Build `name` in `OPTIMIZERS` ("adamw", "m3", "dmgd") over `hope_param_groups(model)`.

    `cms_periods` (one per CMS level, in `period_unit` = "steps" or "tokens") gives each level's theta_0 its outer
    update period: M3/DMGD honour it per group, AdamW through `MultiFrequency`; token periods that are not a
    multiple of `tokens_per_step` are counted exactly by a `MultiFrequency(unit="tokens")` wrapper. Extra
    `kwargs` go to the optimizer (e.g. `betas`, `slow_every`, `variant`)."""
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    if period_unit not in ("steps", "tokens"):
        raise ValueError(f"period_unit must be 'steps' or 'tokens', got {period_unit!r}")
    wrap_tokens = None
    if cms_periods is not None and period_unit == "tokens":
        if not tokens_per_step:
            raise ValueError("CMS periods in tokens need tokens_per_step (tokens of all processes per optimizer step)")
        n_levels = len(_hope_layers(model)[0].cms)
        plist = [tokens_per_step if n is None else n for n in _as_period_list(cms_periods, n_levels)]
        if all(n % tokens_per_step == 0 for n in plist):
            cms_periods = [n // tokens_per_step for n in plist]
        else:
            wrap_tokens, cms_periods = plist, [1] * n_levels
    groups = hope_param_groups(model, weight_decay=weight_decay, cms_periods=cms_periods)
    if name == "adamw":
        for g in groups:
            g.pop("use_muon", None)
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **kwargs)
        if any(g.get("update_every", 1) > 1 for g in groups) and wrap_tokens is None:
            opt = MultiFrequency(opt)
    elif name == "m3":
        opt = M3(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    else:
        opt = DMGD(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    if wrap_tokens is not None:
        periods = {i: wrap_tokens[int(g["name"].split(".")[1])] for i, g in enumerate(opt.param_groups)
                   if g["name"].startswith("cms.")}
        opt = MultiFrequency(opt, periods=periods, unit="tokens", tokens_per_step=tokens_per_step)
    return opt


class OptimizerFactory:
    """For `Trainer(optimizer_cls_and_kwargs=(OptimizerFactory, dict(name="m3", lr=1e-3, ...)))`: Trainer
    instantiates a non-`Optimizer` class with no arguments and calls it with `(model, **kwargs)`, so the optimizer
    gets Hope's parameter groups (see `create_optimizer`). Passing `(M3, kwargs)` also works, with Trainer's
    decay / no-decay groups (then embeddings are orthogonalised too)."""

    def __call__(self, model, **kwargs) -> Optimizer:
        return create_optimizer(model, **kwargs)
