"""Inference-time probe of a curvature (NLMS) bound on W2's write: d2 scaled by
f = min(1, (|r|^2 - eta |r|^2 |n|^2) / (eta |d2|^2 |k|^2)), so that one token's linearised step along its own
residual never overshoots. Recall accuracy at L/2L/4L + gain per 512 on a trained checkpoint.
PYTHONPATH=. python .exp/bound_probe.py CKPT VARIANT...   (VARIANT: base | out | all | outK (K: margin factor))"""
import json, os, sys, torch
from benchmarks import recall, common
from hope_hf import memory_hope as mh

torch.set_num_threads(1)
s = recall.settings(False, {"hope_config": json.loads(os.environ.get("CFG", "{}"))})
L, pc = s["seq_len"], s["pair_counts"]
config = recall.hope_config(s)
model = common.build("hope", config, 0, 4 * L)
model.load_state_dict(torch.load(sys.argv[1]))
model.eval()
tests = recall.eval_data(s, 0)
orig_update, orig_errors = mh.memory_update, mh.memory_errors
VAR = {"v": "base"}
STATS = []


def patched_update(state, k, v, eta, *a, **kw):
    var = VAR["v"]
    out_mem = kw.get("query") is not None
    if var == "noproj" and not out_mem:
        return orig_update(state, k, v, torch.zeros_like(eta), *a, **kw)
    if var in ("projfirst0", "allfirst0") and not out_mem or var == "allfirst0" and out_mem:
        return orig_update(state, k, v, eta, *a, **{**kw, "first_layer": False})
    if var == "noout" and out_mem:
        return orig_update(state, k, v, torch.zeros_like(eta), *a, **kw)
    if var in ("base", "noproj", "noout", "projfirst0", "allfirst0") or (var.startswith("out") and not out_mem):
        return orig_update(state, k, v, eta, *a, **kw)
    margin = float(var[3:]) if var.startswith("out") and var[3:].replace(".", "").isdigit() else 1.0

    def errors(W1, W2, kk, vv, objective="l2", self_target=True):
        n, r, d2 = orig_errors(W1, W2, kk, vv, objective, self_target)
        e = eta[:, :, None, :, None].to(r.dtype)
        r2 = r.pow(2).sum(-1, keepdim=True)
        room = r2 - e * r2 * n.pow(2).sum(-1, keepdim=True)
        q = e * d2.pow(2).sum(-1, keepdim=True) * kk.pow(2).sum(-1, keepdim=True)
        f = (room / margin / q.clamp_min(1e-30)).clamp(0, 1)
        if var == "outW2zero":
            f = torch.zeros_like(f)
        STATS.append(f.flatten().float())
        return n, r, d2 * f
    mh.memory_errors = errors
    try:
        return orig_update(state, k, v, eta, *a, **kw)
    finally:
        mh.memory_errors = orig_errors


mh.memory_update = patched_update
x, _ = recall.make_batch(1, 4096, 8, 8, torch.Generator().manual_seed(11))
for var in sys.argv[2:]:
    VAR["v"] = var
    STATS.clear()
    if var.startswith("mc") or var.startswith("pc"):     # mcN / pcN: memory / projection chunk N at inference
        setattr(model.config, "memory_chunk_size" if var.startswith("mc") else "projection_chunk_size", int(var[2:]))
        VAR["v"] = "base"
    out = {"ckpt": os.path.basename(sys.argv[1]), "variant": var}
    with torch.no_grad():
        evals = [recall.evaluate_length(model, *tests[n], pc) for n in sorted(tests)]
        out["accuracy"] = [round(100 * e["accuracy"], 1) for e in evals]
        if STATS:
            f = torch.cat(STATS)[:2_000_000]
            out["f_frac_bound"] = round((f < 1).float().mean().item(), 3)
            out["f_quantiles"] = [round(v, 4) for v in torch.quantile(f[:100000], torch.tensor([0.01, 0.1, 0.5])).tolist()]
        m = model.double()
        e = m.model.embed_tokens(x)
        base = m(inputs_embeds=e, use_cache=False).logits
        nudged = e.clone()
        nudged[:, 0] += 1e-6 * torch.randn(e.shape[-1], dtype=e.dtype, generator=torch.Generator().manual_seed(1))
        g = (m(inputs_embeds=nudged, use_cache=False).logits - base).abs().amax((0, 2)) / 1e-6
        out["gain_per_512"] = [float(f"{g[i:i + 512].max().item():.2g}") for i in range(0, 4096, 512)]
        model.float()
        model.config.memory_chunk_size = model.config.projection_chunk_size = 64
    print(json.dumps(out), flush=True)
