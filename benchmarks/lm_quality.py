"""Language-modelling quality: validation perplexity of Hope vs a parameter-matched Llama on two offline corpora.

    python -m benchmarks.lm_quality [--quick] [--out benchmarks/results]

For each corpus ("docs": stdlib docstrings, English technical prose; "code": stdlib source code without docstrings
or comments, another domain) a byte-level BPE tokenizer is trained on that corpus, the blocks are split once into
train / validation, and Hope `tiny` and a `LlamaForCausalLM` with the same vocabulary, width, depth, heads and
parameter count are trained from the same seed on the same batches in the same order, with the same AdamW learning
rate and warm-up + cosine schedule (`benchmarks.common.train_lm`). Validation perplexity is measured every
`eval_every` steps (the learning curves in the PNG) and at the end. Target: Hope <= 0.95x Llama's perplexity.

Writes `<out>/lm_quality.json` and `<out>/lm_quality.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import common

FULL = {"steps": 400, "batch_size": 4, "seq_len": 256, "vocab_size": 2048, "max_chars": 800_000, "val_blocks": 48,
        "eval_every": 50, "lr": 3e-3, "preset": "tiny"}
QUICK = {"steps": 40, "batch_size": 4, "seq_len": 128, "vocab_size": 512, "max_chars": 150_000, "val_blocks": 8,
         "eval_every": 10, "lr": 3e-3, "preset": "tiny"}
TARGET = 0.95


def run_corpus(name: str, s: dict, seed: int) -> dict:
    docs = common.corpus(name, s["max_chars"])
    tok = common.tokenizer_for(docs, s["vocab_size"])
    train, val = common.split_blocks(common.to_blocks(docs, tok, s["seq_len"]), s["val_blocks"], seed)
    config = common.hope_config(s["preset"], tok)
    res = {"corpus": name, "description": common.CORPUS_DESCRIPTIONS[name], "documents": len(docs),
           "chars": sum(map(len, docs)), "vocab_size": len(tok), "train_blocks": len(train), "val_blocks": len(val),
           "models": {}}
    for kind in ("hope", "llama"):
        model = common.build(kind, config, seed, s["seq_len"])
        r = common.train_lm(model, train, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                            evals={"val": val}, eval_every=s["eval_every"], desc=f"{name}/{kind}")
        loss = common.final_eval(r, "val")
        res["models"][kind] = {"params": common.n_params(model), **r, "val_loss": loss,
                               "val_perplexity": common.perplexity(loss)}
    h, l_ = res["models"]["hope"]["val_perplexity"], res["models"]["llama"]["val_perplexity"]
    res["hope_over_llama_perplexity"] = h / l_
    res["target_met"] = bool(h / l_ <= TARGET)
    return res


def run(quick: bool = False, out=common.RESULTS, seed: int = 0, corpora=("docs", "code"), **overrides) -> dict:
    """Train and evaluate both models on each corpus; write `<out>/lm_quality.json` and `.png`."""
    bench = common.Run()
    s = {**(QUICK if quick else FULL), **overrides}
    results = {"quick": quick, "seed": seed, "setup": {**s, "optimizer": "AdamW(0.9, 0.95), wd 0.01, clip 1.0",
                                                       "schedule": "10% linear warm-up, cosine to 0.1x"},
               "target_hope_over_llama_perplexity": TARGET,
               "corpora": {name: run_corpus(name, s, seed) for name in corpora}}
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
                    label=f"{kind} ({m['params'] / 1e6:.2f}M): {m['val_perplexity']:.1f}")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("validation perplexity (log)")
        ax.set_title(f"{name}: Hope / Llama = {c['hope_over_llama_perplexity']:.3f}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    header = ("| corpus | Hope params | Llama params | Hope val ppl | Llama val ppl | Hope / Llama | Hope s/step "
              "| Llama s/step |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for name, c in results["corpora"].items():
        h, l_ = c["models"]["hope"], c["models"]["llama"]
        lines.append(f"| {name} | {h['params'] / 1e6:.3f}M | {l_['params'] / 1e6:.3f}M | {h['val_perplexity']:.1f} "
                     f"| {l_['val_perplexity']:.1f} | {c['hope_over_llama_perplexity']:.3f}x "
                     f"| {h['median_step_s']:.3f} | {l_['median_step_s']:.3f} |")
    met = [n for n, c in results["corpora"].items() if c["target_met"]]
    lines.append(f"\nTarget Hope <= {results['target_hope_over_llama_perplexity']}x Llama's perplexity: met on "
                 f"{', '.join(met) if met else 'no corpus'}.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps, small vocabulary, short blocks (a smoke run)")
    p.add_argument("--steps", type=int)
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results, --quick: .../quick)")
    a = p.parse_args(argv)
    a.out = a.out or (common.QUICK_RESULTS if a.quick else common.RESULTS)
    res = run(quick=a.quick, out=a.out, **({"steps": a.steps} if a.steps else {}))
    print(markdown(res))


if __name__ == "__main__":
    main()
