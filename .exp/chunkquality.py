"""Issue #10 item 5: lm_quality's Hope tiny (seed 0, FULL settings) at memory chunk / smallest CMS level 16, 64, 256.

    PYTHONPATH=. python .exp/chunkquality.py OUT.json [corpus:chunk[:cms] ...]

chunk C sets projection_chunk_size = memory_chunk_size = C and the CMS levels to [C, 4C] for C <= 128 ([64, 256] at the
default 64), [256, 512] at 256 (a 1024-token block must let the second level commit); `corpus:chunk:cms` keeps the
CMS levels of chunk `cms` instead (the memory chunk alone varies: e.g. docs:16:64). Llama is not rerun (its seed-0
perplexity is in benchmarks/results/lm_quality.json: same data, split and schedule)."""
import json
import sys
import time

import torch

from benchmarks import common
from benchmarks.lm_quality import FULL

LEVELS = {16: [16, 64], 64: [64, 256], 128: [128, 512], 256: [256, 512]}

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, todo = sys.argv[1], sys.argv[2:] or ["docs:256", "docs:64", "code:256", "code:64", "docs:16", "code:16"]
    s, results = FULL, {}
    for item in todo:
        name, chunk, *cms = item.split(":")
        chunk = int(chunk)
        cms = int(cms[0]) if cms else chunk
        docs = common.corpus(name, s["max_chars"])
        tok = common.tokenizer_for(docs, s["vocab_size"])
        blocks = common.to_blocks(docs, tok, s["seq_len"])
        config = common.hope_config(s["preset"], tok, projection_chunk_size=chunk, memory_chunk_size=chunk,
                                    cms_chunk_sizes=LEVELS[cms])
        train, val = common.split_blocks(blocks, s["val_blocks"], 0)
        model = common.build("hope", config, 0, s["seq_len"])
        start = time.perf_counter()
        r = common.train_lm(model, train, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=0,
                            evals={"val": val}, eval_every=s["eval_every"], desc=f"{name}/c{chunk}")
        loss = common.final_eval(r, "val")
        results[item] = {"val_loss": loss, "val_perplexity": common.perplexity(loss), "params": common.n_params(model),
                         "median_step_s": r["median_step_s"], "wall_s": time.perf_counter() - start,
                         "evals": r["evals"]}
        print(item, results[item]["val_perplexity"], r["median_step_s"], flush=True)
        json.dump(results, open(out, "w"), indent=1)
