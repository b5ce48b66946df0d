"""Llama under variants of benchmarks.recall's recipe (is the query warm-up a handicap?): one JSON line per seed.
    PYTHONPATH=. python .exp/recall_llama.py CURRICULUM QUERY_WARMUP SEED..."""
import json, sys, torch
from benchmarks import recall, common

torch.set_num_threads(1)
curriculum, warm, seeds = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3:]]
s = recall.settings(False, {"curriculum": curriculum, "query_warmup": warm})
config = recall.hope_config(s)
pc = s["pair_counts"]
for seed in seeds:
    ids, labels = recall.training_data(s, seed)
    tests = recall.eval_data(s, seed)
    lengths = list(tests)
    model = common.build("llama", config, seed, max(lengths))
    common.train_lm(model, ids, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed, labels=labels,
                    desc="llama", shuffle=curriculum == "none", after_backward=recall.query_warmup(model, warm))
    ev = [recall.evaluate_length(model, *tests[n], pc) for n in lengths]
    print(json.dumps({"model": "llama", "curriculum": curriculum, "query_warmup": warm, "seed": seed,
                      "acc": [round(e["accuracy"], 3) for e in ev],
                      "by_pairs": {p: [round(e["accuracy_by_pairs"][str(p)], 2) for e in ev] for p in pc}}), flush=True)
