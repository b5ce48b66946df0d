"""lm_quality's tiny setup (one corpus, one seed) for Hope with the output memory's read variant `full` (paper),
`delta` (M_{t-1}(q) - M_0(q)) or `noskip` (M_{t-1}(q) - q), or `shifted`: the full read from
benchmarks.recall's shifted_key_init; CFG (JSON): HopeConfig overrides. Usage: lmread.py CORPUS SEED READ [CFG]"""
import os, sys, json, time, torch
from benchmarks import common, lm_quality
from hope_hf import modeling_hope as MH, memory_hope as MM

torch.set_num_threads(1)
if os.environ.get("W2_ONLY"):       # memory_grad_clip on every memory's first layer (W2) only, W1 unclipped
    _clip, _calls = MM.clip_outer, [0]

    def _w2_only(d, a, clip):          # memory_update clips (d1, n) then (d2, k)
        _calls[0] += 1
        return _clip(d, a, clip if _calls[0] % 2 == 0 else None)
    MM.clip_outer = _w2_only
name, seed, read = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if read not in ("full", "shifted"):
    _orig = MH.output_memory

    def _om(params, state, k, v, q, *a, **kw):
        o, st = _orig(params, state, k, v, q, *a, **kw)
        if read == "noskip":
            return o - q, st
        return o - MM.mlp_memory(params["W1"][None, :, 0], params["W2"][None, :, 0], q), st
    MH.output_memory = _om
s = lm_quality.FULL
docs = common.corpus(name, s["max_chars"])
tok = common.tokenizer_for(docs, s["vocab_size"])
blocks = common.to_blocks(docs, tok, s["seq_len"])
config = common.hope_config(s["preset"], tok, **(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}))
train, val = common.split_blocks(blocks, s["val_blocks"], seed)
model = common.build("hope", config, seed, s["seq_len"])
if read == "shifted":
    from benchmarks import recall
    recall.shifted_key_init(model)
t = time.perf_counter()
r = common.train_lm(model, train, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                    evals={"val": val}, eval_every=s["eval_every"], desc=f"{name}/{read}")
loss = common.final_eval(r, "val")
print(json.dumps({"corpus": name, "seed": seed, "read": read, "cfg": sys.argv[4:], "w2_only": bool(os.environ.get("W2_ONLY")), "val_perplexity": round(common.perplexity(loss), 3),
                  "train_s": round(time.perf_counter() - t)}))
