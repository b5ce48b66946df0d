"""Hope alone with benchmarks.recall's recipe and HopeConfig overrides CFG (JSON): recall accuracy at L / 2L / 4L,
then the logit gain from a 1e-6 nudge of token 0 per 512-token window (float64) and float32 one call vs split at
1000, on one 4,096-token P = 8 sequence. PYTHONPATH=. python .exp/recall_stability.py SEED 'CFG' [TAG]
recall_s22.jsonl: the "huber" rows ran the Huber objective of commit 2c80df5 (since removed), unclipped."""
import json, os, sys, time, torch
from benchmarks import recall, common

torch.set_num_threads(1)
if os.environ.get("W2_ONLY"):       # memory_grad_clip on every memory's first layer (W2) only, W1 unclipped
    from hope_hf import memory_hope as MM
    _clip, _calls = MM.clip_outer, [0]

    def _w2_only(d, a, clip):          # memory_update clips (d1, n) then (d2, k)
        _calls[0] += 1
        return _clip(d, a, clip if _calls[0] % 2 == 0 else None)
    MM.clip_outer = _w2_only
if os.environ.get("OUT_ONLY"):      # memory_grad_clip for the output memory only (the projection memories unclipped)
    from hope_hf import modeling_hope as MH
    _proj = MH.projection_memories
    MH.projection_memories = lambda p, st, u, m, off, cfg, *a, **kw: _proj(p, st, u, m, off,
                                                                           {**cfg, "memory_grad_clip": None}, *a, **kw)
if os.environ.get("FIRST_UNTIL"):   # M_memory's first layer written for the first N steps, then fixed (config flipped)
    _qw, _until = recall.query_warmup, int(os.environ["FIRST_UNTIL"])

    def _warmup(model, steps):
        hook = _qw(model, steps)

        def both(step):
            hook(step)
            if step + 1 >= _until:
                model.config.memory_writes_first_layer = False
        return both
    recall.query_warmup = _warmup
seed, cfg = int(sys.argv[1]), json.loads(sys.argv[2])
tag = sys.argv[3] if len(sys.argv) > 3 else ""
s = recall.settings(False, {"hope_config": cfg})
L, pc = s["seq_len"], s["pair_counts"]
config = recall.hope_config(s)
ids, labels = recall.training_data(s, seed)
tests = recall.eval_data(s, seed)
t = time.perf_counter()
model, tr = recall.train_model("hope", config, s, seed, ids, labels, 4 * L)
if os.environ.get("FINETUNE_CLIP"):  # then N more steps with memory_grad_clip 1.0 on the last N x batch sequences
    n = int(os.environ["FINETUNE_CLIP"])
    model.config.memory_grad_clip = 1.0
    common.train_lm(model, ids[-n * s["batch_size"]:], n, batch_size=s["batch_size"], lr=1e-3, seed=seed,
                    labels=labels[-n * s["batch_size"]:], desc=None, shuffle=False)
    out_ft = {"finetune_clip_steps": n}
else:
    out_ft = {}
if tag:
    torch.save(model.state_dict(), f"/work/ckpt/recall_{tag}_s{seed}.pt")
out = {"seed": seed, "cfg": cfg, "first_until": os.environ.get("FIRST_UNTIL"), "out_only": bool(os.environ.get("OUT_ONLY")), "w2_only": bool(os.environ.get("W2_ONLY")), **out_ft, "train_s": round(time.perf_counter() - t), "diverged": tr["diverged"]}
evals = [recall.evaluate_length(model, *tests[n], pc) for n in sorted(tests)]
out["accuracy"] = [round(100 * e["accuracy"], 1) for e in evals]
out["by_pairs_4L"] = {p: round(100 * evals[-1]["accuracy_by_pairs"][str(p)], 1) for p in pc}
model.eval()
x, _ = recall.make_batch(1, 4096, 8, 8, torch.Generator().manual_seed(11))
with torch.no_grad():
    one = model(input_ids=x).logits
    first = model(input_ids=x[:, :1000], use_cache=True)
    rest = model(input_ids=x[:, 1000:], past_key_values=first.past_key_values, use_cache=True)
    d = (one - torch.cat([first.logits, rest.logits], 1)).abs().amax(-1)[0]
    out["split_diff_per_512"] = [float(f"{d[i:i + 512].max().item():.2g}") for i in range(0, 4096, 512)]
    m = model.double()
    e = m.model.embed_tokens(x)
    base = m(inputs_embeds=e, use_cache=False).logits
    nudged = e.clone()
    nudged[:, 0] += 1e-6 * torch.randn(e.shape[-1], dtype=e.dtype, generator=torch.Generator().manual_seed(1))
    g = (m(inputs_embeds=nudged, use_cache=False).logits - base).abs().amax((0, 2)) / 1e-6
    out["gain_per_512"] = [float(f"{g[i:i + 512].max().item():.2g}") for i in range(0, 4096, 512)]
print(json.dumps(out), flush=True)
