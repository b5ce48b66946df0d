"""Which writes make the recall-trained model chaotic past 8L? Trains seed SEED with benchmarks.recall's recipe once
(cached in /work/ckpt), then measures the logit gain from a 1e-6 nudge of token 0 per 512-token window (float64) on a
4,096-token P = 8 sequence with inference-time variants of the memory writes.
PYTHONPATH=. python .exp/chaos_probe.py SEED VARIANT...

Historical (session 22): it patches `memory_update` / `memory_errors` with their signatures of that time (before
`first_layer=`), so it runs only at commits before aa49caf; `.exp/bound_probe.py` is its current counterpart."""
import json, os, sys, torch
import torch.nn.functional as F
from benchmarks import recall, common
from hope_hf import memory_hope as mh

torch.set_num_threads(1)
seed = int(sys.argv[1])
s = recall.settings(False, {})
L = s["seq_len"]
config = recall.hope_config(s) if "CKPT" in os.environ else recall.hope_config({**s, "hope_config": {"memory_grad_clip": None}})
model = common.build("hope", config, seed, 4 * L)
path = os.environ.get("CKPT", f"/work/ckpt/recall_s{seed}.pt")     # CKPT: a model trained with the default config
if os.path.exists(path):
    model.load_state_dict(torch.load(path))
else:
    ids, labels = recall.training_data(s, seed)
    recall.shifted_key_init(model)
    common.train_lm(model, ids, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed, labels=labels,
                    desc="hope", shuffle=False, after_backward=recall.query_warmup(model, s["query_warmup"]))
    torch.save(model.state_dict(), path)
model.eval()
x, _ = recall.make_batch(1, 4096, 8, 8, torch.Generator().manual_seed(int(os.environ.get("XSEED", 11))))
orig_update, orig_errors = mh.memory_update, mh.memory_errors
VAR = {"v": "base"}


def patched_update(state, k, v, eta, log_alpha, log_beta, mask, objective, use_dgd, reference=False, query=None,
                   prior=None, self_target=True, clip=None):
    out_mem = query is not None
    var = VAR["v"]
    if var == "no_proj_writes" and not out_mem:
        eta = torch.zeros_like(eta)
    if var == "no_out_writes" and out_mem:
        eta = torch.zeros_like(eta)
    if var.startswith("clip") and var[4:].replace(".", "").isdigit():   # clipTAU: every memory, as memory_grad_clip
        return orig_update(state, k, v, eta, log_alpha, log_beta, mask, objective, use_dgd, reference, query, prior,
                           self_target, clip=float(var[4:]))
    if out_mem and var.startswith("huber"):
        tau = float(var[5:])
        def errors(W1, W2, k, v, objective="l2", self_target=True):
            return huber_errors(W1, W2, k, v, tau, self_target)
        mh.memory_errors = errors
        try:
            return orig_update(state, k, v, eta, log_alpha, log_beta, mask, objective, use_dgd, reference, query,
                               prior, self_target, clip)
        finally:
            mh.memory_errors = orig_errors
    if out_mem and var in ("no_out_W2", "no_out_W1", "clip_d2", "clip_d2_01", "clip_both", "clipd2_huber") or out_mem and var.startswith("d2x"):
        def errors(W1, W2, k, v, objective="l2", self_target=True):
            n, d1, d2 = orig_errors(W1, W2, k, v, objective, self_target, clip)
            if var == "no_out_W2":
                d2 = torch.zeros_like(d2)
            if var == "no_out_W1":
                d1 = torch.zeros_like(d1)
            if var in ("clip_d2", "clip_d2_01", "clip_both", "clipd2_huber"):
                tau = 0.1 if var == "clip_d2_01" else 1.0
                d2 = d2 * (tau / d2.norm(dim=-1, keepdim=True).clamp_min(tau))
            if var.startswith("d2x"):
                d2 = d2 * float(var[3:])
            if var == "clip_both":
                d1 = d1 * (1.0 / d1.norm(dim=-1, keepdim=True).clamp_min(1.0))
            return n, d1, d2
        mh.memory_errors = errors
        try:
            return orig_update(state, k, v, eta, log_alpha, log_beta, mask, objective, use_dgd, reference, query,
                               prior, self_target, clip)
        finally:
            mh.memory_errors = orig_errors
    return orig_update(state, k, v, eta, log_alpha, log_beta, mask, objective, use_dgd, reference, query, prior,
                       self_target, clip)


def huber_errors(W1, W2, k, v, tau, self_target):
    """memory_errors with the residual r scaled by min(1, tau/|r|) (the Huber loss's gradient), before both layers."""
    c = k.shape[-2]
    z = torch.cat([k, v], -2) if self_target else k
    pre_all = z @ W2.transpose(-1, -2)
    n_all, inv_all = mh._unit(F.silu(pre_all))
    M = z + n_all @ W1.transpose(-1, -2)
    pre, n, inv = pre_all[..., :c, :], n_all[..., :c, :], inv_all[..., :c, :]
    vhat = M[..., c:, :] if self_target else v
    r = M[..., :c, :] - vhat
    RN.append(r.norm(dim=-1).flatten())
    r = r * (tau / r.norm(dim=-1, keepdim=True).clamp_min(tau))
    gn = r @ W1
    gs = (gn - n * (gn * n).sum(-1, keepdim=True)) * inv
    sig = torch.sigmoid(pre)
    return n, r, gs * (sig * (1 + pre * (1 - sig)))


RN = []
mh.memory_update = patched_update
m = model.double()
e = m.model.embed_tokens(x)
nudged = e.clone()
nudged[:, 0] += 1e-6 * torch.randn(e.shape[-1], dtype=e.dtype, generator=torch.Generator().manual_seed(1))
for var in sys.argv[2:]:
    VAR["v"] = var
    with torch.no_grad():
        base = m(inputs_embeds=e, use_cache=False).logits
        g = (m(inputs_embeds=nudged, use_cache=False).logits - base).abs().amax((0, 2)) / 1e-6
    rq = None
    if RN:
        rn = torch.cat(RN).float()
        rq = [round(v, 3) for v in torch.quantile(rn[:100000], torch.tensor([0.5, 0.9, 0.99, 1.0])).tolist()]
        RN.clear()
    print(json.dumps({"seed": seed, "variant": var, "r_quantiles": rq, "gain_per_512": [float(f"{g[i:i + 512].max().item():.2g}")
                                                                     for i in range(0, 4096, 512)]}), flush=True)
