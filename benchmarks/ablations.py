"""Ablation benchmark (the paper's Table 6 at small scale): Hope tiny with one component switched off at a time.

    python -m benchmarks.ablations [--quick] [--steps N] [--variants hope no_cms ...] [--seeds 0 1 2] [--out DIR]

Variants (`VARIANTS`, flags of `HopeConfig`): "hope" (full model), "no_cms" (`cms_chunk_sizes=[]`: no Continuum
Memory System), "no_self_modification" (`self_modifying=False`: static k/v/q/eta/alpha projections, a plain Titans
memory), "no_dgd" (`use_dgd=False`: plain gradient step with retention instead of Delta Gradient Descent),
"no_momentum" (`use_momentum=False`), "fixed_q" (`adaptive_query=False`: a fixed linear query), and one variant that
switches a component on: "writes_first_layer" (`memory_writes_first_layer=True`: every memory's first layer W2 is
written too, as Eq. 88 literally does, instead of staying its meta-learned M_0).

Every variant is trained on the stdlib-docstring corpus with the same tokenizer, the same train/validation blocks,
the same batches in the same order, the same seeds, steps, learning rate and schedule (`common.train_lm`: AdamW,
linear warm-up over 10% of the steps, cosine decay to 10%), and evaluated with `common.evaluate` on the same
held-out blocks every `eval_every` steps and at the end. Records per variant: the flags, parameter count, final
validation loss / perplexity and their curve, the training loss per step and the median seconds per step.
Writes `<out>/ablations.json` and `<out>/ablations.png` (final perplexity vs full Hope + validation curves) and prints a
markdown table; with several seeds (default 0 1 2: each its own split, initialisation and batch order) the table
and plot report the means (min-max) and the first seed's curves. Timings are per-process on a CPU that may be
shared (`machine.other_processes_avg_cores_busy`).
`--quick` is a smoke run (small vocab, short blocks, few steps): its numbers say nothing about the components.
Non-finite losses (a diverged run) are stored as Infinity.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from benchmarks import common

NAME = "ablations"
CORPUS = "docs"
PRESET = "tiny"
VARIANTS = {
    "hope": {},
    "no_cms": {"cms_chunk_sizes": []},
    "no_self_modification": {"self_modifying": False},
    "no_dgd": {"use_dgd": False},
    "no_momentum": {"use_momentum": False},
    "fixed_q": {"adaptive_query": False},
    "writes_first_layer": {"memory_writes_first_layer": True},
}
# The config fields the variants touch, recorded for every variant.
ABLATION_FIELDS = ("cms_chunk_sizes", "self_modifying", "use_dgd", "use_momentum", "adaptive_query",
                   "memory_writes_first_layer")
# Blocks of 1,024 tokens, so that every CMS level of `tiny` (chunks 64 and 256) commits several times inside a training
# block (issue #10); one block per step keeps the tokens per step of the earlier 8 x 128 setup, and the 8 validation
# blocks its 8,192 validation tokens.
DEFAULTS = {"steps": 300, "batch_size": 1, "seq_len": 1024, "vocab_size": 2048, "max_chars": 800_000,
            "val_blocks": 8, "eval_every": 50, "lr": 3e-3, "variants": tuple(VARIANTS), "seeds": (0, 1, 2)}
QUICK = {"steps": 40, "batch_size": 4, "seq_len": 64, "vocab_size": 512, "max_chars": 200_000, "val_blocks": 16,
         "eval_every": 10, "seeds": (0,)}


def _settings(quick: bool, overrides: dict) -> dict:
    s = common.settings(DEFAULTS, QUICK, quick, overrides)
    bad = [v for v in s["variants"] if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    s["variants"] = list(s["variants"])
    return s


def train_variant(name: str, tok, train: torch.Tensor, val: torch.Tensor, s: dict, seed: int) -> dict:
    flags = VARIANTS[name]
    config = common.hope_config(PRESET, tok, **flags)
    model = common.build("hope", config, seed, s["seq_len"])
    r = common.train_lm(model, train, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                        evals={"val": val}, eval_every=s["eval_every"], desc=name)
    val_loss = common.finite_or_inf(common.final_eval(r, "val"))
    return {"flags": dict(flags), "config": {k: getattr(config, k) for k in ABLATION_FIELDS},
            "params": common.n_params(model), "val_loss": val_loss, "val_perplexity": common.perplexity(val_loss),
            "val_curve": [[step, common.finite_or_inf(losses["val"])] for step, losses in r["evals"]],
            "train_loss": [common.finite_or_inf(x) for x in r["train_loss"]], "steps_done": r["steps_done"],
            "diverged": r["diverged"], "median_step_s": r["median_step_s"]}


def aggregate(runs: list[dict]) -> dict:
    """Per variant over the seeds: the first seed's record (flags, params, curves) with the validation loss and
    perplexity replaced by their means (inf if any seed diverged), plus `val_perplexity_min` / `_max`."""
    variants = {}
    for name, first in runs[0]["variants"].items():
        losses = [r["variants"][name]["val_loss"] for r in runs]
        ppl = [r["variants"][name]["val_perplexity"] for r in runs]
        ok = all(math.isfinite(x) for x in ppl)
        variants[name] = {**first, "val_loss": sum(losses) / len(losses) if ok else float("inf"),
                          "val_perplexity": sum(ppl) / len(ppl) if ok else float("inf"),
                          "val_perplexity_min": min(ppl), "val_perplexity_max": max(ppl),
                          "median_step_s": statistics.median_high(r["variants"][name]["median_step_s"] for r in runs)}
    return variants


def run(quick=False, out=common.RESULTS, seeds=None, **overrides) -> dict:
    """Train every variant once per seed (default 0 1 2, `quick`: 0; each seed its own split, initialisation and
    batch order; settings: `DEFAULTS`, `QUICK` with `quick`, then `overrides`); write and return the results:
    `variants` holds the means over the seeds (`aggregate`), `runs` each seed's."""
    s = _settings(quick, overrides)
    seeds = [int(x) for x in (seeds if seeds is not None else s["seeds"])]
    bench = common.Run()  # honours BENCH_THREADS
    docs = common.corpus(CORPUS, s["max_chars"])
    tok = common.tokenizer_for(docs, s["vocab_size"])
    blocks = common.to_blocks(docs, tok, s["seq_len"])
    runs = []
    for seed in seeds:
        train, val = common.split_blocks(blocks, s["val_blocks"], seed)
        variants = {name: train_variant(name, tok, train, val, s, seed) for name in s["variants"]}
        _add_deltas(variants)
        runs.append({"seed": seed, "variants": variants})
    results = {"setup": {"quick": quick, "preset": PRESET, "corpus": CORPUS,
                         "corpus_description": common.CORPUS_DESCRIPTIONS[CORPUS], "max_chars": s["max_chars"],
                         "vocab_size": len(tok), "steps": s["steps"], "batch_size": s["batch_size"],
                         "seq_len_tokens": s["seq_len"], "tokens_per_step": s["batch_size"] * s["seq_len"],
                         "train_blocks": len(train), "val_blocks": len(val), "eval_every": s["eval_every"],
                         "lr": s["lr"], "optimizer": "AdamW (betas 0.9, 0.95), weight decay 0.01",
                         "schedule": "linear warm-up over 10% of the steps, then cosine to 0.1x", "grad_clip": 1.0,
                         "seeds": seeds},
               "variants": aggregate(runs) if len(runs) > 1 else runs[0]["variants"], "runs": runs}
    _add_deltas(results["variants"])
    common.write_results(out, NAME, bench.finish(results), plot)
    return results


def _add_deltas(variants: dict):
    full = variants.get("hope")
    for r in variants.values():
        r["val_ppl_delta_vs_hope"], r["val_ppl_rel_delta_vs_hope"] = _delta(r, full)


def _delta(r: dict, full: dict | None):
    """(absolute, relative) change of the final validation perplexity against full Hope; None if undefined."""
    if full is None or not (math.isfinite(r["val_perplexity"]) and math.isfinite(full["val_perplexity"])):
        return None, None
    return r["val_perplexity"] - full["val_perplexity"], r["val_perplexity"] / full["val_perplexity"] - 1


def plot(results: dict, path):
    plt = common.pyplot()
    variants = results["variants"]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(variants)
    colors = [f"C{i}" for i in range(len(names))]
    ppl = [variants[n]["val_perplexity"] for n in names]
    rel = [variants[n]["val_ppl_rel_delta_vs_hope"] for n in names]
    shown = [100 * r if r is not None else 0.0 for r in rel]
    bars.bar(range(len(names)), shown, color=colors)
    for i, (p, r) in enumerate(zip(ppl, rel)):
        label = "diverged" if not math.isfinite(p) else f"ppl {p:.1f}" + ("" if r is None else f"\n{100 * r:+.1f}%")
        bars.annotate(label, (i, shown[i]), textcoords="offset points", xytext=(0, 3 if shown[i] >= 0 else -3),
                      ha="center", va="bottom" if shown[i] >= 0 else "top", fontsize=7)
    bars.axhline(0, color="k", linewidth=0.8)
    bars.margins(y=0.25)
    bars.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    bars.set_ylabel("final validation perplexity vs full Hope (%)")
    for name, color in zip(names, colors):
        pts = [(step, common.perplexity(loss)) for step, loss in variants[name]["val_curve"]]
        pts = [(x, y) for x, y in pts if math.isfinite(y)]
        if pts:
            curves.plot(*zip(*pts), marker="o", markersize=3, color=color, label=name)
    curves.set_yscale("log")
    curves.set_xlabel("training step")
    curves.set_ylabel("validation perplexity (log)")
    curves.legend(fontsize=8)
    s = results["setup"]
    fig.suptitle(f"Hope {s['preset']} ablations on {s['corpus']}: {s['steps']} steps x {s['tokens_per_step']} "
                 f"tokens, lr {s['lr']:g}{' (quick)' if s['quick'] else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    seeds = results["setup"].get("seeds", [results["setup"].get("seed", 0)])
    many = len(seeds) > 1
    rows = ["| variant | params | val loss | val perplexity | vs full Hope | s/step |", "|---|---|---|---|---|---|"]
    for name, r in results["variants"].items():
        d, rel = r["val_ppl_delta_vs_hope"], r["val_ppl_rel_delta_vs_hope"]
        delta = "-" if name == "hope" else "n/a" if d is None else f"{d:+.1f} ({rel:+.1%})"
        span = f" ({r['val_perplexity_min']:.1f}-{r['val_perplexity_max']:.1f})" if many else ""
        paired = [run["variants"][name]["val_ppl_rel_delta_vs_hope"] for run in results.get("runs", [])]
        if many and name != "hope" and None not in paired:                 # the same seed's full Hope as baseline
            delta += "; per seed " + " / ".join(f"{x:+.1%}" for x in paired)
        rows.append(f"| {name} | {r['params']:,} | {r['val_loss']:.3f} | {r['val_perplexity']:.1f}{span} | {delta} | "
                    f"{r['median_step_s']:.3f} |")
    if many:
        rows.insert(0, f"Mean over seeds {', '.join(map(str, seeds))} (min-max over the seeds).\n")
    st = results["setup"]
    rows.insert(0, f"Training: {st['steps']} steps of {st['batch_size']} x {st['seq_len_tokens']} tokens, "
                   f"lr {st['lr']}.\n")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, small vocab, short blocks")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="a multiple of 64 (the tiny preset's smallest CMS chunk)")
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--max-chars", type=int, help="characters of the corpus to use")
    p.add_argument("--val-blocks", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", help="one run per seed, reported as mean and min-max (default "
                   "0 1 2; --quick: 0)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results, --quick: .../quick)")
    a = p.parse_args(argv)
    a.out = a.out or (common.QUICK_RESULTS if a.quick else common.RESULTS)
    res = run(quick=a.quick, out=a.out, seeds=a.seeds, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
              vocab_size=a.vocab_size, max_chars=a.max_chars, val_blocks=a.val_blocks, eval_every=a.eval_every,
              lr=a.lr, variants=a.variants)
    print(markdown(res))


if __name__ == "__main__":
    main()
