"""Llama under variants of benchmarks.recall's recipe (is the query warm-up a handicap?): one JSON line per seed.
    PYTHONPATH=. python .exp/recall_llama.py CURRICULUM QUERY_WARMUP SEED..."""
import json, sys, torch
from benchmarks import recall, common
from hope_hf import HopeConfig

torch.set_num_threads(1)
curriculum, warm, seeds = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3:]]
s = recall.settings(False, {"curriculum": curriculum, "query_warmup": warm})
config = HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE, pad_token_id=recall.PAD,
                                bos_token_id=recall.BOS, eos_token_id=recall.EOS)
L, pc = s["seq_len"], s["pair_counts"]
for seed in seeds:
    gen = torch.Generator().manual_seed(seed)
    if curriculum != "none":
        ids, labels = recall.make_curriculum(s["steps"] * s["batch_size"], L, recall.curriculum_stages(pc, curriculum), gen)
    else:
        ids, labels, _ = recall.make_data(s["steps"] * s["batch_size"], L, pc, gen)
    lengths = [L * m for m in s["multiples"]]
    tests = {n: recall.make_data(s["eval_seqs"] * len(pc), n, pc, torch.Generator().manual_seed(1_000_003 * (seed + 1) + n))
             for n in lengths}
    model = common.build("llama", config, seed, max(lengths))
    common.train_lm(model, ids, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed, labels=labels,
                    desc="llama", shuffle=curriculum == "none", after_backward=recall.query_warmup(model, warm))
    ev = [recall.evaluate_length(model, *tests[n], pc) for n in lengths]
    print(json.dumps({"model": "llama", "curriculum": curriculum, "query_warmup": warm, "seed": seed,
                      "acc": [round(e["accuracy"], 3) for e in ev],
                      "by_pairs": {p: [round(e["accuracy_by_pairs"][str(p)], 2) for e in ev] for p in pc}}), flush=True)
