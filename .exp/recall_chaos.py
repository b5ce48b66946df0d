"""Is Hope trained with benchmarks.recall's recipe stable far past its training length? Trains seed SEED as the
benchmark does, then on one 4,096-token recall sequence (P = 8): the logits' gain from a 1e-6 nudge of token 0 per
512-token window (float64) and float32 one call vs split calls (cut at 1000) per 512 tokens. Also with the output
memory's W2 writes off. PYTHONPATH=. python .exp/recall_chaos.py SEED"""
import json, sys, torch
from benchmarks import recall

torch.set_num_threads(1)
seed = int(sys.argv[1])
s = recall.settings(False, {})
L, pc = s["seq_len"], s["pair_counts"]
config = recall.hope_config(s)
ids, labels = recall.training_data(s, seed)
model, _ = recall.train_model("hope", config, s, seed, ids, labels, 4 * L)
model.eval()
x, _ = recall.make_batch(1, 4096, 8, 8, torch.Generator().manual_seed(11))
W = 512
out = {"seed": seed}
with torch.no_grad():
    one = model(input_ids=x).logits
    first = model(input_ids=x[:, :1000], use_cache=True)
    rest = model(input_ids=x[:, 1000:], past_key_values=first.past_key_values, use_cache=True)
    d = (one - torch.cat([first.logits, rest.logits], 1)).abs().amax(-1)[0]
    drift = []                            # |W2_t - M_0| / |M_0| of the output memory, per layer and head
    cache = None
    for n in (512, 1024, 2048, 4096):
        prev = 0 if cache is None else cache.get_seq_length()
        r = model(input_ids=x[:, prev:n], past_key_values=cache, use_cache=True)
        cache = r.past_key_values
        row = []
        for layer, lc in zip(model.model.layers, cache.layers):
            W2, W20 = lc.state["mem"]["W2"][0], layer.memory.mem_W2
            row.append([round(((W2[h] - W20[h]).norm() / W20[h].norm()).item(), 2) for h in range(W2.shape[0])])
        drift.append([n, row])
    out["mem_W2_drift"] = drift
    out["split_diff_per_512"] = [float(f"{d[i:i + W].max().item():.2g}") for i in range(0, 4096, W)]
    m = model.double()
    e = m.model.embed_tokens(x)
    base = m(inputs_embeds=e, use_cache=False).logits
    nudged = e.clone()
    nudged[:, 0] += 1e-6 * torch.randn(e.shape[-1], dtype=e.dtype, generator=torch.Generator().manual_seed(1))
    g = (m(inputs_embeds=nudged, use_cache=False).logits - base).abs().amax((0, 2)) / 1e-6
    out["gain_per_512"] = [float(f"{g[i:i + W].max().item():.2g}") for i in range(0, 4096, W)]
print(json.dumps(out))
