import sys, json, time, torch
from benchmarks import recall, common
from hope_hf import HopeConfig
if __name__ == "__main__":
    torch.set_num_threads(1)
    seed = int(sys.argv[1]); over = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    s = recall.settings(False, {"steps": steps})
    L = s["seq_len"]; lengths = [L * m for m in s["multiples"]]; pc = s["pair_counts"]
    config = HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE, pad_token_id=recall.PAD,
                                    bos_token_id=recall.BOS, eos_token_id=recall.EOS, **over)
    gen = torch.Generator().manual_seed(seed)
    ids, labels = recall.make_curriculum(s["steps"] * s["batch_size"], L, pc, gen)
    tests = {n: recall.make_data(s["eval_seqs"] * len(pc), n, pc, torch.Generator().manual_seed(1_000_003 * (seed + 1) + n))
             for n in lengths}
    model = common.build("hope", config, seed, max(lengths))
    t = time.perf_counter()
    tr = common.train_lm(model, ids, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed, labels=labels,
                         desc="train", shuffle=False)
    evals = [recall.evaluate_length(model, *tests[n], pc) for n in lengths]
    print(json.dumps({"over": over, "seed": seed, "steps": steps, "train_s": round(time.perf_counter() - t),
                      "acc": [round(e["accuracy"], 3) for e in evals],
                      "by_pairs": {p: [round(e["accuracy_by_pairs"][str(p)], 2) for e in evals] for p in pc}}))
