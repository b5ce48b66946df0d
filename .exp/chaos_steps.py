"""How short a recall training makes the l2 memory chaotic? benchmarks.recall's recipe with STEPS steps (warm-up 40%)
and HopeConfig overrides CFG; gain from a 1e-6 nudge of token 0 per 256-token window out to LEN tokens (float64).
PYTHONPATH=. python .exp/chaos_steps.py SEED STEPS 'CFG' LEN
chaos_steps.jsonl's rows predate memory_grad_clip (they ran unclipped: add "memory_grad_clip": null to reproduce them);
its "huber" row used the Huber objective of commit 2c80df5, since removed."""
import json, sys, time, torch
from benchmarks import recall

torch.set_num_threads(1)
seed, steps, cfg, n = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
s = recall.settings(False, {"hope_config": cfg, "steps": steps, "query_warmup": int(0.4 * steps)})
config = recall.hope_config(s)
ids, labels = recall.training_data(s, seed)
t = time.perf_counter()
model, _ = recall.train_model("hope", config, s, seed, ids, labels, 4 * s["seq_len"])
train_s = time.perf_counter() - t
x, _ = recall.make_batch(1, n, 8, 8, torch.Generator().manual_seed(11))
m = model.eval().double()
t = time.perf_counter()
with torch.no_grad():
    e = m.model.embed_tokens(x)
    base = m(inputs_embeds=e, use_cache=False).logits
    nudged = e.clone()
    nudged[:, 0] += 1e-6 * torch.randn(e.shape[-1], dtype=e.dtype, generator=torch.Generator().manual_seed(1))
    g = (m(inputs_embeds=nudged, use_cache=False).logits - base).abs().amax((0, 2)) / 1e-6
print(json.dumps({"seed": seed, "steps": steps, "cfg": cfg, "train_s": round(train_s), "eval_s": round(time.perf_counter() - t),
                  "gain_per_256": [float(f"{g[i:i + 256].max().item():.2g}") for i in range(0, n, 256)]}), flush=True)
