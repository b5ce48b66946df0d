"""The in-context memories of Hope as pure functions, each with a token-by-token reference twin.

Notation (arXiv 2512.24695 §8, NeurIPS 2025 §3). A memory layer is a matrix W (out x in) that takes one
step per token t of its chunk:

    S_t = beta_t S_{t-1} + e_t a_t^T                      (Titans Eq. 9-10 momentum; S_t = e_t a_t^T without it)
    W_t = W_{t-1} (alpha_t I - rho_t a_t a_t^T) + S_t      (arXiv Eq. 88: DGD with retention alpha_t)

where a_t is the layer's own input, e_t = -eta_t * delta_t is its back-propagated inner-loss error scaled by
the learning rate (the gradient eta_t * delta_t a_t^T is taken at the chunk-start state, Eq. 90-91), and
rho_t = eta_t with DGD (0 for the plain gradient step). `dgd_step` is that equation for one token (the
reference); `dgd_chunk` gives the chunk-end state of C steps at once with one C x C triangular solve (the
WY / UT form of the delta rule), and the in-chunk reads W_{t-1} x_t of the output memory (design.md A1) from
C x C causally masked products; no loop over tokens.

With `memory_grad_clip` set, each layer's per-token gradient delta_t a_t^T is clipped to that Frobenius norm. With
`memory_writes_first_layer` False (the default) only the second layer W1 of each memory takes these steps; the first
layer W2 stays at its meta-learned M_0.
Masked (padding or already-consumed) positions have e=0, rho=0, alpha=1, beta=1: they leave W and S untouched.
A mask of None means every position is real (a fresh unpadded batch): the same numbers without the masking ops.
"""

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------- one matrix layer


def dgd_step(W, S, a, grad, eta, rho, alpha, beta=None, write=None, prior=None):
    """Reference: one token of arXiv Eq. 88 with Titans momentum (Eq. 9-10), written literally.

        S_t = beta_t S_{t-1} - eta_t grad_t          (S_t = -eta_t grad_t without momentum)
        W_t = W_{t-1} (alpha_t I - rho_t a_t a_t^T) + S_t

    W, S, grad: [..., out, in]; a: [..., in]; eta, rho, alpha, beta, write: [...]. `write` (1 or 0) gates the
    momentum's addition to W so that a masked position leaves W untouched. With a `prior` P the retention pulls W
    back to P instead of 0: alpha_t W_{t-1} becomes P + alpha_t (W_{t-1} - P). Returns (W_t, S_t)."""
    S = -eta[..., None, None] * grad + (0 if beta is None else beta[..., None, None] * S)
    Wa = (W @ a.unsqueeze(-1)).squeeze(-1)
    add = S if write is None else write[..., None, None] * S
    kept = alpha[..., None, None] * W if prior is None else prior + alpha[..., None, None] * (W - prior)
    W = kept - rho[..., None, None] * (Wa.unsqueeze(-1) * a.unsqueeze(-2)) + add
    return W, S


def _decay_matrix(log_cum):
    """L[t, i] = exp(log_cum[t] - log_cum[i]) for i <= t, else 0.  log_cum: [..., C]."""
    C = log_cum.shape[-1]
    tril = torch.ones(C, C, dtype=torch.bool, device=log_cum.device).tril()
    diff = log_cum.unsqueeze(-1) - log_cum.unsqueeze(-2)
    return torch.exp(diff.masked_fill(~tril, float("-inf")))


def _shift_down(x, dim):
    """Row t of the result is row t-1 of x (row 0 is zero) along `dim` (-1 for vectors, -2 for matrices)."""
    pad = [0, 0] * (-dim - 1) + [1, 0]
    return F.pad(x, pad).narrow(dim, 0, x.shape[dim])


def chunk_gates(log_alpha, log_beta=None, write=None, rho=None):
    """The decay matrices of one chunk (see `dgd_chunk`), computed once for every layer stepping with these gates
    (and with these DGD rates `rho`), already shaped for the broadcasts `dgd_chunk` makes."""
    la = torch.cumsum(log_alpha, -1)
    Lb = _decay_matrix(la)                                      # b_t / b_i, i <= t
    Lb_prev = _shift_down(Lb, -2)                               # b_{t-1}/b_i for i < t
    g = {"b_end": torch.exp(la[..., -1, None, None]), "b_prev": torch.exp(la - log_alpha).unsqueeze(-1)}
    if rho is not None:                                         # the DGD sums' weights (b_t/b_i) rho_i
        g["Lb_prev_rho"] = Lb_prev * rho.unsqueeze(-2)
        g["Lb_end_rho"] = (Lb[..., -1, :] * rho).unsqueeze(-1)
    if log_beta is None:
        g.update(G_end=Lb[..., -1, :, None], G_prev=Lb_prev, c_end=None)
        return g
    lB = torch.cumsum(log_beta, -1)
    LB = _decay_matrix(lB)
    Lw = Lb if write is None else Lb * write.unsqueeze(-2)      # b_t/b_i m_i: only written steps add S_i
    G = Lw @ LB
    c = Lw @ torch.exp(lB).unsqueeze(-1)                        # c_t = sum_{i<=t} (b_t/b_i) m_i B_i  [..., C, 1]
    g.update(G_end=G[..., -1, :, None], G_prev=_shift_down(G, -2), c_end=c[..., -1:, :], c_prev=_shift_down(c, -2),
             B_end=torch.exp(lB[..., -1, None, None]), LB_end=LB[..., -1, :, None])
    return g


def dgd_chunk(W0, S0, A, E, rho, log_alpha, log_beta=None, write=None, gates=None, X=None, prior=None):
    """C steps of `dgd_step` at once, for rank-one gradients grad_t = delta_t a_t^T: returns (W_C, S_C, R).

    R holds the in-chunk reads R_t = W_{t-1} x_t of the queries X [..., C, in] (the state after the writes of every
    earlier position of the chunk, before position t's own write; None without X).

    E holds e_t = -eta_t delta_t (zero at masked positions).

    W0, S0: [..., out, in]; A: [..., C, in]; E: [..., C, out]; rho, log_alpha, log_beta: [..., C].
    `rho=None` drops the DGD term (plain gradient step); `log_beta=None` means no momentum; `write` [..., C] gates
    the momentum's addition to W (0 at masked positions); `gates` = `chunk_gates(log_alpha, log_beta, write, rho)`
    when already computed; `prior` P: the retention pulls W back to P (the same sums on W - P, plus P; the DGD term
    still reads the whole W_{t-1} a_t).
    With b_t = prod_{j<=t} alpha_j, B_t = prod_{j<=t} beta_j and y_t = W_{t-1} a_t, unrolling gives
        W_t = b_t W0 + c_t S0 + sum_{j<=t} G[t,j] e_j a_j^T - sum_{i<=t} (b_t/b_i) rho_i y_i a_i^T
    with G = Lb @ LB (Lb[t,i] = b_t/b_i, LB[i,j] = B_i/B_j) and c = Lb @ B. Multiplying W_{t-1} by a_t makes
    the y_t a unit lower-triangular system (I + (Lb_prev o K) diag(rho)) Y = R with K = A A^T: one solve. The
    reads of other vectors x_t follow from the same sum with Q = X A^T in place of K (the DeltaNet/TTT dual form):
        R = b_prev o (X W0^T) + c_prev o (X S0^T) + (G_prev o Q) E - (Lb_prev o Q) diag(rho) Y.
    """
    g = gates if gates is not None else chunk_gates(log_alpha, log_beta, write, rho)
    C = A.shape[-2]
    D0 = W0 if prior is None else W0 - prior
    momentum = g["c_end"] is not None
    # the rows whose reads are needed, stacked so that each product below is one matmul for all of them: the
    # queries X, and the keys A themselves when DGD needs y_t = W_{t-1} a_t
    rows = ([] if X is None else [X]) + ([] if rho is None else [A])
    twice = (lambda m: torch.cat([m, m], -2)) if len(rows) == 2 else (lambda m: m)
    read = Y = None
    if rows:
        Z = rows[0] if len(rows) == 1 else torch.cat(rows, -2)                  # [..., r C, in]
        # b_{t-1} D0 + P + c_{t-1} S0 read by every row in one product, the three summed over a stacked inner dim
        parts, states = [twice(g["b_prev"]) * Z], [D0]
        if prior is not None:
            parts.append(Z)
            states.append(prior.expand_as(D0))
        if momentum:
            parts.append(twice(g["c_prev"]) * Z)
            states.append(S0)
        start = parts[0] @ D0.transpose(-1, -2) if len(parts) == 1 else \
            torch.cat(parts, -1) @ torch.cat(states, -1).transpose(-1, -2)
        QK = Z @ A.transpose(-1, -2)                                            # [X; A] A^T: Q and K
        R = start + (twice(g["G_prev"]) * QK) @ E                               # reads without the DGD sum
        if rho is not None:
            K, RA = QK[..., -C:, :], R[..., -C:, :]
            T = torch.eye(C, dtype=A.dtype, device=A.device) + g["Lb_prev_rho"] * K
            if T.dtype in (torch.float16, torch.bfloat16):              # no half-precision triangular solve
                Y = torch.linalg.solve_triangular(T.float(), RA.float(), upper=False, unitriangular=True).to(R.dtype)
            else:
                Y = torch.linalg.solve_triangular(T, RA, upper=False, unitriangular=True)
        if X is not None:
            read = R[..., :C, :]
            if Y is not None:
                read = read - (g["Lb_prev_rho"] * QK[..., :C, :]) @ Y
    # W's and S's sums over the chunk's outer products with A, one product for both
    coef = E * g["G_end"] if Y is None else E * g["G_end"] - Y * g["Lb_end_rho"]
    out = E.shape[-1]
    if momentum:
        both = torch.cat([coef, E * g["LB_end"]], -1).transpose(-1, -2) @ A     # [..., 2 out, in]
        W = g["b_end"] * D0 + both[..., :out, :] + g["c_end"] * S0
        S = g["B_end"] * S0 + both[..., out:, :]
    else:
        W = g["b_end"] * D0 + coef.transpose(-1, -2) @ A
        S = E[..., -1, :].unsqueeze(-1) * A[..., -1, :].unsqueeze(-2)
    if prior is not None:
        W = W + prior
    return W, S, read


# ------------------------------------------------------------------- the residual 2-layer MLP memory (Eq. 89)


def _unit(s, eps=1e-4):
    """s / sqrt(|s|^2 + eps) and that scale (the memory's unit-norm hidden activation). eps bounds the Jacobian
    (<= eps^-1/2 = 100): with 1e-6 a small |silu(W2 z)| (2.8e-3 seen) gave single-step gradient spikes of ~100x."""
    inv = torch.rsqrt(s.pow(2).sum(-1, keepdim=True) + eps)
    return s * inv, inv


def mlp_memory(W1, W2, z):
    """M(z) = z + W1 n(silu(W2 z)), n(s) = s/|s| (arXiv Eq. 89 with a unit-norm hidden activation, our choice:
    DGD assumes unit-norm layer inputs (Eq. 57), so both layers' inputs (k and n) are unit vectors and the clamp
    |alpha - 2 eta| <= 1 bounds the retention of both). W1: [..., d, h]; W2: [..., h, d]; z: [..., T, d]."""
    return z + _unit(F.silu(z @ W2.transpose(-1, -2)))[0] @ W1.transpose(-1, -2)


def memory_errors(W1, W2, k, v, objective="l2", self_target=True, first_layer=True):
    """Closed-form inner-loss gradients of M at keys k: returns (n, delta1, delta2) (delta2 None without `first_layer`).

    The target is vhat = M(v) (self-generated, Eq. 87), or v itself with `self_target=False` (plain Titans).
    L = 1/2 ||M(k) - vhat||^2 ("l2", Eq. 88/93) or -<M(k), vhat> ("dot", Eq. 92). The gradient is
    delta1 n^T for W1 (input n = unit(silu(W2 k))) and delta2 k^T for W2. M(k) and M(v) come from one stacked pass."""
    c = k.shape[-2]
    z = torch.cat([k, v], -2) if self_target else k
    pre_all = z @ W2.transpose(-1, -2)
    n_all, inv_all = _unit(F.silu(pre_all))
    M = z + n_all @ W1.transpose(-1, -2)
    pre, n, inv = pre_all[..., :c, :], n_all[..., :c, :], inv_all[..., :c, :]
    vhat = M[..., c:, :] if self_target else v
    if objective == "l2":
        r = M[..., :c, :] - vhat
    else:
        r = -vhat.expand(*pre.shape[:-1], vhat.shape[-1])
    if not first_layer:
        return n, r, None
    gn = r @ W1                                                                   # dL/dn
    gs = (gn - n * (gn * n).sum(-1, keepdim=True)) * inv                          # through the unit norm
    sig = torch.sigmoid(pre)
    return n, r, gs * (sig * (1 + pre * (1 - sig)))


def clip_outer(d, a, clip):
    """d scaled so that the rank-one gradient d a^T has Frobenius norm |d| |a| <= clip (per token; None: no clip)."""
    if clip is None:
        return d
    norm = torch.linalg.vector_norm(d, dim=-1, keepdim=True) * torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    return d * (clip / norm.clamp_min(clip))


def _clip_matrix(g, clip):
    """Reference for `clip_outer`: one token's gradient matrix g scaled to Frobenius norm <= clip."""
    return g if clip is None else g * (clip / torch.linalg.vector_norm(g, dim=(-2, -1), keepdim=True).clamp_min(clip))


def _inner_loss(W1, W2, k, vhat, objective):
    out = mlp_memory(W1, W2, k)
    return 0.5 * (out - vhat).pow(2).sum() if objective == "l2" else -(out * vhat).sum()


def init_memory_state(W1, W2, batch_size, momentum, first_layer=True):
    """Fast state of a memory group from its meta-learned initial state M_0 (slow parameters [H, n, ...]): the running
    layers W1, W2, their chunk-start copies W1r, W2r (Eq. 90) and with `momentum` their S1, S2. Without `first_layer`
    writes W2 stays M_0's for good and is not part of the state (`_layers` supplies it)."""
    state = {}
    for i, W in ((1, W1), (2, W2)) if first_layer else ((1, W1),):
        W = W.unsqueeze(0).expand(batch_size, *W.shape)
        state.update({f"W{i}": W, f"W{i}r": W})
        if momentum:
            state[f"S{i}"] = torch.zeros_like(W)
    return state


def _layers(state, fixed_W2, chunk_start=False):
    """(W1, W2) of a memory group's running state, or of its chunk-start copy (Eq. 90); W2 is M_0's `fixed_W2` in a
    state that does not write its first layer."""
    r = "r" if chunk_start else ""
    return state["W1" + r], state.get("W2" + r, fixed_W2)


def _chunks(T, offset, size):
    """Column ranges [f, f_end) of a span whose column 0 sits at phase `offset` of the chunk grid."""
    cuts = [0] + [f for f in range(1, T) if (offset + f) % size == 0] + [T]
    return list(zip(cuts[:-1], cuts[1:]))


def _masked_gates(eta, log_alpha, log_beta, mask):
    """Per-token gates [B, H, 1, c], neutral (eta=0, alpha=beta=1) at masked positions (gates kept in log space)."""
    if mask is None:
        eta, log_alpha = eta.unsqueeze(2), log_alpha.unsqueeze(2)
        return eta, log_alpha, None if log_beta is None else log_beta[None, :, None, None].expand_as(eta)
    m = mask[:, None, None, :]
    eta = torch.where(m, eta.unsqueeze(2), torch.zeros_like(eta.unsqueeze(2)))
    log_alpha = torch.where(m, log_alpha.unsqueeze(2), torch.zeros_like(eta))
    log_beta = None if log_beta is None else torch.where(m, log_beta[None, :, None, None], torch.zeros_like(eta))
    return eta, log_alpha, log_beta


def memory_update(state, k, v, eta, log_alpha, log_beta, mask, objective, use_dgd, reference=False, query=None,
                  prior=None, self_target=True, clip=None, first_layer=True):
    """Write tokens [k, vhat] into a memory group; gradients use the chunk-start state (W1r, W2r) (Eq. 90-91).

    The targets are vhat = M_{chunk start}(v) (self-generated, Eq. 87), or v with `self_target=False`.
    state tensors: [B, H, n, ...]; k, v: [B, H, 1, c, d]; eta, log_alpha: [B, H, c];
    log_beta: [H] or None; mask: [B, c] or None (all real); clip: the bound of each layer's per-token gradient norm
    (`clip_outer`; None: unclipped). `first_layer=False` leaves W2 (and S2) as they are, or M_0's W2 (the prior) when
    the state holds none (`init_memory_state(first_layer=False)`): only W1 is written. With `query` [B, H, n, c, d]
    also returns the reads M_{t-1}(q_t) of the running state before each position's own write and after every earlier
    one (Eq. 86/94; design.md A1), else None.
    `prior`: (P1, P2), the states the retention pulls W1, W2 back to (None: zero). The fast path uses `dgd_chunk`
    (one token: `dgd_step`); the reference steps token by token with `dgd_step`, autograd gradients of the inner
    loss (Eq. 88 literally, then clipped) and `mlp_memory` reads. Returns (new_state, reads)."""
    eta_m, log_alpha, log_beta = _masked_gates(eta, log_alpha, log_beta, mask)
    P1, P2 = (None, None) if prior is None else prior
    if "W2" not in state and (first_layer or P2 is None):
        raise ValueError("this memory state holds no first layer W2 (it was made without first-layer writes, "
                         "memory_writes_first_layer=False): it needs the prior M_0 and first_layer=False")
    new = dict(state)
    if not reference:
        h, d1, d2 = memory_errors(*_layers(state, P2, True), k, v, objective, self_target, first_layer)
        d1, d2 = clip_outer(d1, h, clip), d2 if d2 is None else clip_outer(d2, k, clip)
        if k.shape[-2] == 1:                     # one token (decoding): the step itself, gradient delta a^T
            read = None if query is None else mlp_memory(*_layers(state, P2), query)
            e, w = eta_m[..., 0], _write(mask, k.dtype, 0)
            alpha, beta = torch.exp(log_alpha[..., 0]), None if log_beta is None else torch.exp(log_beta[..., 0])
            rho = e if use_dgd else torch.zeros_like(e)
            outer = lambda d, x: d[..., 0, :].unsqueeze(-1) * x[..., 0, :].unsqueeze(-2)  # noqa: E731
            new["W1"], S1 = dgd_step(state["W1"], state.get("S1"), h[..., 0, :], outer(d1, h), e, rho, alpha, beta, w,
                                     P1)
            if first_layer:
                new["W2"], S2 = dgd_step(state["W2"], state.get("S2"), k[..., 0, :], outer(d2, k), e, rho, alpha, beta,
                                         w, P2)
        else:
            rho = eta_m if use_dgd else None
            gates = chunk_gates(log_alpha, log_beta, _write(mask, k.dtype), rho)
            neg_eta = -eta_m.unsqueeze(-1)
            E1 = neg_eta * d1
            # layer 2 first: its in-chunk reads W2_{t-1} q_t give layer 1's read inputs n(silu(W2_{t-1} q_t))
            if first_layer:
                new["W2"], S2, r2 = dgd_chunk(state["W2"], state.get("S2"), k, neg_eta * d2, rho, None, gates=gates,
                                              X=query, prior=P2)
            else:
                r2 = None if query is None else query @ _layers(state, P2)[1].transpose(-1, -2)
            nq = None if query is None else _unit(F.silu(r2))[0]
            new["W1"], S1, r1 = dgd_chunk(state["W1"], state.get("S1"), h, E1, rho, None, gates=gates, X=nq, prior=P1)
            read = None if query is None else query + r1
        if log_beta is not None:
            new["S1"] = S1
            if first_layer:
                new["S2"] = S2
        return new, read
    reads = []
    vhat = mlp_memory(*_layers(state, P2, True), v) if self_target else v
    outer = torch.is_grad_enabled()    # without it nothing differentiates through the states: no graph across tokens
    with torch.enable_grad():
        # fresh aliases: the gradient is taken w.r.t. M only where M is applied to k (vhat is a fixed target)
        W1r, W2r = (w.view_as(w) if w.requires_grad else w.detach().requires_grad_()
                    for w in _layers(state, P2, True))
        for t in range(k.shape[-2]):
            if query is not None:                                   # read before this token's write
                reads.append(mlp_memory(*_layers(new, P2), query[..., t:t + 1, :]))
            kt, vt = k[..., t:t + 1, :], vhat[..., t:t + 1, :]
            loss = _inner_loss(W1r, W2r, kt, vt, objective)
            g1, g2 = (_clip_matrix(g, clip) for g in torch.autograd.grad(loss, (W1r, W2r), create_graph=outer))
            h = _unit(F.silu(kt @ W2r.transpose(-1, -2)))[0][..., 0, :]
            e, la = eta_m[..., t], log_alpha[..., t]
            a, rho = torch.exp(la), (e if use_dgd else torch.zeros_like(e))
            b = None if log_beta is None else torch.exp(log_beta[..., t])
            w = _write(mask, k.dtype, t)
            new["W1"], S1 = dgd_step(new["W1"], new.get("S1"), h, g1, e, rho, a, b, w, P1)
            if first_layer:
                new["W2"], S2 = dgd_step(new["W2"], new.get("S2"), kt[..., 0, :], g2, e, rho, a, b, w, P2)
            if log_beta is not None:
                new["S1"] = S1
                if first_layer:
                    new["S2"] = S2
    reads = torch.cat(reads, -2) if reads else None
    if not outer:
        new, reads = {key: x.detach() for key, x in new.items()}, None if reads is None else reads.detach()
    return new, reads


def _write(mask, dtype, t=None):
    """The write gate [B, 1, 1(, c)] of positions `t` (all if None) as numbers; None when every position is real."""
    if mask is None:
        return None
    return (mask[:, None, None, :] if t is None else mask[:, None, None, t]).to(dtype)


def _commit_reads(state, boundary, mask, f_end):
    """Samples that finished a chunk read from the new state from now on (A1: t' = C floor((t-1)/C)): at a chunk
    `boundary` (a Python bool) the samples whose last column `f_end - 1` is real (all of them when mask is None)."""
    if not boundary:
        return state
    names = ("W1", "W2") if "W2" in state else ("W1",)
    if mask is None:
        return {**state, **{f"{n}r": state[n] for n in names}}
    c = mask[:, f_end - 1, None, None, None, None]
    return {**state, **{f"{n}r": torch.where(c, state[n], state[f"{n}r"]) for n in names}}


def _cols(mask, f, f_end):
    return None if mask is None else mask[:, f:f_end]


def _column_ranges(T, offset, chunk, reference):
    return [(f, f + 1) for f in range(T)] if reference else _chunks(T, offset, chunk)


def projection_eta(eta, log_alpha, log_beta=None):
    """The learning rate of the self-modifying projection memories: eta capped so that alpha + 4 eta / (1 - beta) <= 1.

    Their targets M_box(v) come from their own state (Eq. 87), so a write adds eta W (n_v - n_k) n_k^T, |n_v - n_k|
    <= 2, on top of the retention W (alpha I - eta n n^T), and momentum repeats it up to 1 / (1 - beta) times: with
    alpha + 2 eta / (1 - beta) <= 1 that self-referential part of layer 1 cannot grow W. The factor 4 leaves a margin
    for layer 2 and the coupling between the memories (k and v feed every memory's writes). Measured on the tiny LM
    after the 300-step main job, one call vs split calls at 4k tokens (float32, max |logit difference|): uncapped
    0.58, factor 2: 0.34, factor 4: 1.9e-3 (1.6e-5 without the CMS commits). The cap binds only while the retention is
    near 1 (a memory that keeps its meta-learned state writes slowly). eta, log_alpha: [B, H, c]; log_beta: [H]."""
    room = -torch.expm1(log_alpha)                                               # 1 - alpha, accurate near 1
    if log_beta is not None:
        room = room * -torch.expm1(log_beta)[:, None]                           # (1 - alpha)(1 - beta)
    return torch.minimum(eta, room / 4)


def projection_memories(params, state, u, mask, offset, cfg, reference=False):
    """Self-modifying k, v, q, eta, alpha memories (arXiv Eq. 87-88, 94, 97), chunk size C_p.

    u: each memory's input stream [B, H, n, T, d] (memories ordered k, v, eta, alpha[, q]); mask: [B, T] real tokens
    (None: all); offset: phase of column 0 on the chunk grid. params: W1, W2 ([H, n, d, h] / [H, n, h, d]),
    eta_w/alpha_w [H, d], eta_b/alpha_b [H], lr_scale [H] (these memories learn at lr_scale * eta_t, capped by
    `projection_eta`), log_beta [H] or None. Each memory reads its input with its chunk-start state (Eq. 90) and
    writes (k_t, M_box(v_t)). Their retention pulls them back to M_0, not to 0 (issue #10: decaying to 0 forgets the
    meta-learned projections within ~100 tokens at alpha = 0.98, so the keys of a late query no longer match those
    written early). Returns (k, v, q or None, eta, log_alpha, new_state); k and q are L2-normalised;
    eta is the unscaled rate (the output memory's)."""
    chunk, eta_max = cfg["projection_chunk_size"], cfg["memory_lr_max"]
    M0 = (params["W1"][None], params["W2"][None])       # the retention pulls these memories back to M_0, not to 0
    outs = []
    alpha_w, alpha_b, eta_w, eta_b = (params[name][:, None] for name in ("alpha_w", "alpha_b", "eta_w", "eta_b"))
    for f, f_end in _column_ranges(u.shape[3], offset, chunk, reference):
        x = u[:, :, :, f:f_end]
        r = mlp_memory(*_layers(state, M0[1], True), x)                           # [B, H, n, c, d]
        k, v = F.normalize(r[:, :, 0], dim=-1), r[:, :, 1]
        log_alpha = F.logsigmoid((r[:, :, 3] * alpha_w).sum(-1) + alpha_b)
        gate = torch.sigmoid((r[:, :, 2] * eta_w).sum(-1) + eta_b)
        eta = torch.minimum(eta_max * gate, (1 + log_alpha.exp()) / 2)          # |alpha - 2 eta| <= 1 (A6)
        q = F.normalize(r[:, :, 4], dim=-1) if r.shape[2] > 4 else None
        own_eta = projection_eta(eta * params["lr_scale"][:, None], log_alpha, params["log_beta"])
        state, _ = memory_update(state, k.unsqueeze(2), v.unsqueeze(2), own_eta, log_alpha, params["log_beta"],
                                 _cols(mask, f, f_end), cfg["memory_objective"], cfg["use_dgd"], reference, prior=M0,
                                 clip=cfg.get("memory_grad_clip"),
                                 first_layer=cfg.get("memory_writes_first_layer", True))
        state = _commit_reads(state, (offset + f_end) % chunk == 0, mask, f_end)
        outs.append((k, v, q, eta, log_alpha))
    k, v, q, eta, log_alpha = (None if o[0] is None else torch.cat(o, dim=-2 if o[0].dim() == 4 else -1)
                           for o in zip(*outs))
    return k, v, q, eta, log_alpha, state


def output_memory(params, state, k, v, q, eta, log_alpha, mask, offset, cfg, reference=False):
    """The memory M_memory (arXiv Eq. 86/88/94-95), chunk size C_m: o_t = M_{memory,t-1}(q_t).

    The read sees the writes of every earlier token, those earlier in the same chunk included (design.md A1); the
    inner-loss gradients and the self-generated targets use the chunk-start state (Eq. 90-91).
    k, v, q: [B, H, T, d]; eta, log_alpha: [B, H, T]; params: W1, W2 (M_0, [H, 1, d, h] / [H, 1, h, d]), log_beta
    [H] or None. With self-modification the target is M(v_t) (Eq. 87), else v_t (plain Titans).
    Like the projection memories, its retention pulls the state back to M_0, not to 0 (issue #10): decaying W2 towards
    0 shrinks s = silu(W2 k), and the gradient through the unit norm n = s/|s| moves n by eta/|s|^2, so the trained
    memory turned chaotic past its training length (logit gain from a 1e-6 nudge of token 0: 44 at 8x, 2.5e5 at 16x;
    with W2's writes switched off, or with the pull to M_0, <= 0.03 past the first window). Trained on recall, its
    residuals M(k) - M(v) are heavy-tailed (median 3.5, max 315 against unit keys) and W2's writes made it chaotic
    anyway (gain 58 at 8x, 1.9e7 at 32x; switched off in evaluation: <= 0.27, recall unchanged), hence
    `memory_writes_first_layer=False` (the default: W2 stays M_0, only W1 is written) and the optional per-token
    gradient clip (`clip_outer`). Returns (o [B, H, T, d], new_state)."""
    chunk = cfg["memory_chunk_size"]
    M0 = (params["W1"][None], params["W2"][None])
    outs = []
    for f, f_end in _column_ranges(q.shape[2], offset, chunk, reference):
        state, o = memory_update(state, k[:, :, None, f:f_end], v[:, :, None, f:f_end], eta[..., f:f_end],
                                 log_alpha[..., f:f_end], params["log_beta"], _cols(mask, f, f_end),
                                 cfg["memory_objective"], cfg["use_dgd"], reference, query=q[:, :, None, f:f_end],
                                 prior=M0, self_target=cfg["self_modifying"], clip=cfg.get("memory_grad_clip"),
                                 first_layer=cfg.get("memory_writes_first_layer", True))
        state = _commit_reads(state, (offset + f_end) % chunk == 0, mask, f_end)
        outs.append(o[:, :, 0])
    return torch.cat(outs, dim=2), state


# ------------------------------------------------------------------ Continuum Memory System (NeurIPS Eq. 30-31)


def cms_preacts(theta, x):
    """The pre-activations (x W_gate^T, x W_up^T) of a CMS level's MLP, shared by its output and its gradient sum."""
    return x @ theta[0].transpose(-1, -2), x @ theta[1].transpose(-1, -2)


def cms_mlp(theta, x, ab=None):
    """One CMS level's SiLU-gated MLP. theta = (W_gate [.., I, D], W_up [.., I, D], W_down [.., D, I]); `ab`: its
    `cms_preacts` at x when already computed."""
    a, b = cms_preacts(theta, x) if ab is None else ab
    return (F.silu(a) * b) @ theta[2].transpose(-1, -2)


def cms_grad(theta, x, u, ab=None):
    """sum_t grad_theta <MLP_theta(x_t), u_t> in closed form, per sample (NeurIPS Eq. 31's f for one chunk).

    x, u: [B, T, D] (u = 0 where a position has no teach signal); `ab`: the forward's `cms_preacts` at x with the
    same theta (theta is constant inside a chunk), else recomputed. Returns per-sample (dW_gate, dW_up, dW_down)."""
    a, b = cms_preacts(theta, x) if ab is None else ab
    sig = torch.sigmoid(a)
    s = a * sig
    g = u @ theta[2]                                                             # W_down^T u_t
    dgate = g * b * sig * (1 + a * (1 - sig))                                     # through silu'(a)
    d_gate_up = torch.cat([dgate, g * s], -1).transpose(-1, -2) @ x              # both input-side layers at once
    return (*d_gate_up.chunk(2, -2), u.transpose(-1, -2) @ (s * b))


def cms_grad_reference(theta, x, u):
    """Reference for `cms_grad`: autograd of the inner objective, one token at a time."""
    B = x.shape[0]
    with torch.enable_grad():
        th = tuple(w.expand(B, *w.shape[-2:]) for w in theta)
        if not th[0].requires_grad:
            th = tuple(w.detach().requires_grad_() for w in th)
        total = None
        for t in range(x.shape[1]):
            obj = (cms_mlp(th, x[:, t:t + 1]) * u[:, t:t + 1]).sum()
            g = torch.autograd.grad(obj, th, create_graph=True, allow_unused=True)
            g = tuple(torch.zeros_like(w) if gi is None else gi for gi, w in zip(g, th))
            total = g if total is None else tuple(a + b for a, b in zip(total, g))
    return total
