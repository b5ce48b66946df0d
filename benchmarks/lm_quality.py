"""Language-modelling quality: validation perplexity of Hope vs a parameter-matched Llama on two offline corpora.

    python -m benchmarks.lm_quality [--quick] [--seeds 0 1 2] [--out benchmarks/results]

For each corpus ("docs": stdlib docstrings, English technical prose; "code": stdlib source code without docstrings
or comments, another domain) a byte-level BPE tokenizer is trained on that corpus; then, once per seed, the blocks
are split into train / validation and Hope `tiny` and a `LlamaForCausalLM` with the same vocabulary, width, depth,
heads and parameter count are trained from that seed on the same batches in the same order, with the same AdamW
learning rate and warm-up + cosine schedule (`benchmarks.common.train_lm`). Validation perplexity is measured every
`eval_every` steps (the learning curves in the PNG: the first seed) and at the end; the table reports the mean over
the seeds and its min-max. Target: Hope <= 0.95x Llama's perplexity (of the means).

Writes `<out>/lm_quality.json` and `<out>/lm_quality.png`.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks import common

# Blocks of 1,024 tokens, so that every CMS level of `tiny` (chunks 64 and 256) commits several times inside a training
# block (issue #10); one block per step keeps the tokens per step of the earlier 4 x 256 setup.
FULL = {"steps": 400, "batch_size": 1, "seq_len": 1024, "vocab_size": 2048, "max_chars": 800_000, "val_blocks": 12,
        "eval_every": 50, "lr": 3e-3, "preset": "tiny", "seeds": (0, 1, 2)}
QUICK = {"steps": 40, "batch_size": 4, "seq_len": 128, "vocab_size": 512, "max_chars": 150_000, "val_blocks": 8,
         "eval_every": 10, "lr": 3e-3, "preset": "tiny", "seeds": (0,)}
TARGET = 0.95


def run_corpus(name: str, s: dict, seeds) -> dict:
    """Both models on one corpus, once per seed (each seed: its own train / validation split, initialisation and batch
    order); `models` holds the mean over the seeds (see `aggregate`), `runs` each seed's results."""
    docs = common.corpus(name, s["max_chars"])
    tok = common.tokenizer_for(docs, s["vocab_size"])
    blocks = common.to_blocks(docs, tok, s["seq_len"])
    config = common.hope_config(s["preset"], tok)
    runs = []
    for seed in seeds:
        train, val = common.split_blocks(blocks, s["val_blocks"], seed)
        models = {}
        for kind in ("hope", "llama"):
            model = common.build(kind, config, seed, s["seq_len"])
            r = common.train_lm(model, train, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                                evals={"val": val}, eval_every=s["eval_every"], desc=f"{name}/{kind}/seed {seed}")
            loss = common.final_eval(r, "val")
            models[kind] = {"params": common.n_params(model), **r, "val_loss": loss,
                            "val_perplexity": common.perplexity(loss)}
        ratio = models["hope"]["val_perplexity"] / models["llama"]["val_perplexity"]
        runs.append({"seed": seed, "train_blocks": len(train), "val_blocks": len(val), "models": models,
                     "hope_over_llama_perplexity": ratio})
    res = {"corpus": name, "description": common.CORPUS_DESCRIPTIONS[name], "documents": len(docs),
           "chars": sum(map(len, docs)), "vocab_size": len(tok), "train_blocks": runs[0]["train_blocks"],
           "val_blocks": runs[0]["val_blocks"], "models": aggregate(runs), "runs": runs}
    h, l_ = res["models"]["hope"]["val_perplexity"], res["models"]["llama"]["val_perplexity"]
    res["hope_over_llama_perplexity"] = h / l_                  # of the mean perplexities
    ratios = [r["hope_over_llama_perplexity"] for r in runs]
    res["hope_over_llama_perplexity_min"], res["hope_over_llama_perplexity_max"] = min(ratios), max(ratios)
    res["target_met"] = bool(h / l_ <= TARGET)
    return res


def aggregate(runs: list[dict]) -> dict:
    """Per model: the first seed's record (params, learning curve) with the validation loss and perplexity replaced by
    their means over the seeds, plus `val_perplexity_min`/`_max` and the median step time over all seeds."""
    models = {}
    for kind, first in runs[0]["models"].items():
        ms = [r["models"][kind] for r in runs]
        ppl = [m["val_perplexity"] for m in ms]
        models[kind] = {**first, "val_loss": sum(m["val_loss"] for m in ms) / len(ms),
                        "val_perplexity": sum(ppl) / len(ppl), "val_perplexity_min": min(ppl),
                        "val_perplexity_max": max(ppl), "val_perplexities": ppl,
                        "median_step_s": statistics.median_high(m["median_step_s"] for m in ms)}
    return models


def run(quick: bool = False, out=common.RESULTS, seeds=None, corpora=("docs", "code"), **overrides) -> dict:
    """Train and evaluate both models on each corpus, once per seed (default 0 1 2; quick: 0); write
    `<out>/lm_quality.json` and `.png`."""
    bench = common.Run()
    s = {**(QUICK if quick else FULL), **overrides}
    seeds = [int(x) for x in (seeds if seeds is not None else s["seeds"])]
    s["seeds"] = seeds
    results = {"quick": quick, "seeds": seeds,
               "setup": {**s, "optimizer": "AdamW(0.9, 0.95), wd 0.01, clip 1.0",
                         "schedule": "10% linear warm-up, cosine to 0.1x"},
               "target_hope_over_llama_perplexity": TARGET,
               "corpora": {name: run_corpus(name, s, seeds) for name in corpora}}
    common.write_results(out, "lm_quality", bench.finish(results), plot)
    return results


def plot(results: dict, path: Path):
    plt = common.pyplot()
    names = list(results["corpora"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        c = results["corpora"][name]
        for kind, color in (("hope", "tab:blue"), ("llama", "tab:orange")):
            m = c["models"][kind]
            steps = [e[0] for e in m["evals"]]
            ax.plot(steps, [common.perplexity(e[1]["val"]) for e in m["evals"]], "o-", color=color, ms=3,
                    label=f"{kind} ({m['params'] / 1e6:.2f}M): mean {m['val_perplexity']:.1f}")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("validation perplexity (log)")
        seeds = results.get("seeds", [0])
        ax.set_title(f"{name}: Hope / Llama = {c['hope_over_llama_perplexity']:.3f}"
                     + (f" (mean of {len(seeds)} seeds; curves: seed {seeds[0]})" if len(seeds) > 1 else ""),
                     fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    seeds = results.get("seeds", [results.get("seed", 0)])
    spread = (lambda m, k: f" ({m[k + '_min']:.1f}-{m[k + '_max']:.1f})") if len(seeds) > 1 else (lambda m, k: "")
    header = ("| corpus | Hope params | Llama params | Hope val ppl | Llama val ppl | Hope / Llama | Hope s/step "
              "| Llama s/step |")
    st = results["setup"]
    lines = [f"Training: {st['steps']} steps of {st['batch_size']} x {st['seq_len']} tokens per model, lr {st['lr']}; "
             f"validation: {st['val_blocks']} held-out blocks of {st['seq_len']} tokens per corpus.\n", header,
             "|---|---|---|---|---|---|---|---|"]
    for name, c in results["corpora"].items():
        h, l_ = c["models"]["hope"], c["models"]["llama"]
        ratio = (f" ({c['hope_over_llama_perplexity_min']:.3f}-{c['hope_over_llama_perplexity_max']:.3f})"
                 if len(seeds) > 1 else "")
        lines.append(f"| {name} | {h['params'] / 1e6:.3f}M | {l_['params'] / 1e6:.3f}M | {h['val_perplexity']:.1f}"
                     f"{spread(h, 'val_perplexity')} | {l_['val_perplexity']:.1f}{spread(l_, 'val_perplexity')} "
                     f"| {c['hope_over_llama_perplexity']:.3f}x{ratio} | {h['median_step_s']:.3f} "
                     f"| {l_['median_step_s']:.3f} |")
    if len(seeds) > 1:
        lines.insert(0, f"Mean over seeds {', '.join(map(str, seeds))} (min-max over the seeds; the ratio column's "
                        "range is of the per-seed ratios).\n")
    met = [n for n, c in results["corpora"].items() if c["target_met"]]
    lines.append(f"\nTarget Hope <= {results['target_hope_over_llama_perplexity']}x Llama's perplexity: met on "
                 f"{', '.join(met) if met else 'no corpus'}.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps, small vocabulary, short blocks (a smoke run)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="training and validation block length in tokens")
    p.add_argument("--val-blocks", type=int, help="held-out blocks per corpus")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="one run per seed, reported as mean and min-max (default 0 1 2; --quick: 0)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results, --quick: .../quick)")
    a = p.parse_args(argv)
    a.out = a.out or (common.QUICK_RESULTS if a.quick else common.RESULTS)
    given = {k: getattr(a, k) for k in ("steps", "batch_size", "seq_len", "val_blocks") if getattr(a, k) is not None}
    res = run(quick=a.quick, out=a.out, seeds=a.seeds, **given)
    print(markdown(res))


if __name__ == "__main__":
    main()
