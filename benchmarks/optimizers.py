"""Optimizer benchmark: tiny Hope on the embedded stdlib-docstring corpus, AdamW vs M3 vs DMGD at equal steps.

    python -m benchmarks.optimizers [--quick] [--steps N] [--out benchmarks/results]

Every optimizer starts from the same initial weights and sees the same batches in the same order (linear warmup,
then cosine decay to 10%). Records the training loss per step, the time per step (median, seconds) and the
validation loss / perplexity on held-out blocks at the end. Writes `<out>/optimizers.json` and
`<out>/optimizers.png` (loss curves), and prints a markdown table. `--quick` is a smoke run (small vocab, few
steps, short blocks): its numbers say nothing about which optimizer is better.

Runs (`RUNS`): AdamW; M3 as Alg. 1 writes it (orthogonalised update over sqrt(V)); "m3-muon", M3 with Muon's plain
orthogonalised step (`denominator="none"`); DMGD's "deep" variant (an SGD-with-momentum scale method). Learning rates
are per run (`--lr label=value` to override) because the step scales differ; CMS level 2's initial state is stepped
every 4 steps in every run (`cms_periods=(1, 4)`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import transformers

from benchmarks.common import (
    QUICK_RESULTS,
    RESULTS,
    final_eval,
    perplexity,
    to_blocks,
    train_lm,
)
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.corpus import stdlib_docs_text
from hope_hf.optim import create_optimizer
from hope_hf.tokenizer import train_bpe_tokenizer

# label -> (create_optimizer name, lr, kwargs). lrs from a 40-step --quick probe (vocab 512, 4 x 64 tokens/step);
# "m3" is Alg. 1 as written (Adam denominator), "m3-muon" the same with Muon's plain orthogonalised step.
RUNS = {
    "adamw": ("adamw", 3e-3, {}),
    "m3": ("m3", 1e-3, {"slow_every": 16, "alpha": 0.5, "adamw_lr_ratio": 15.0}),
    "m3-muon": ("m3", 2e-2, {"slow_every": 16, "alpha": 0.5, "adamw_lr_ratio": 0.15, "denominator": "none"}),
    "dmgd": ("dmgd", 1e-1, {"variant": "deep", "momentum": 0.9}),
}


def load_blocks(vocab_size: int, seq_len: int, max_chars: int | None, val_blocks: int):
    """Tokenize the corpus (documents joined by EOS) into `seq_len` blocks; the last `val_blocks` are held out."""
    docs = stdlib_docs_text(max_chars=max_chars)
    tok = train_bpe_tokenizer(docs, vocab_size=vocab_size)
    blocks = to_blocks(docs, tok, seq_len)
    if len(blocks) <= val_blocks:
        raise ValueError(f"corpus gives only {len(blocks)} blocks of {seq_len} tokens")
    return tok, blocks[:-val_blocks], blocks[-val_blocks:]


def train_one(label, lr, config, init_state, train, val, steps, batch_size, warmup, seed, cms_periods):
    model = HopeForCausalLM(config)
    model.load_state_dict(init_state)
    name, _, kwargs = RUNS[label]
    r = train_lm(model, train, steps, batch_size=batch_size, lr=lr, seed=seed, evals={"val": val}, warmup=warmup,
                 make_optimizer=lambda m: create_optimizer(m, name, lr=lr, weight_decay=0.01, cms_periods=cms_periods,
                                                           **kwargs), desc=label)
    val_loss = final_eval(r, "val")
    return {"optimizer": name, "lr": lr, "kwargs": kwargs, "train_loss": r["train_loss"], "steps_done": r["steps_done"],
            "median_step_s": r["median_step_s"], "val_loss": val_loss, "val_perplexity": perplexity(val_loss)}


def run(quick=False, steps=None, batch_size=None, seq_len=None, optimizers=tuple(RUNS), lrs=None,
        out=Path("benchmarks/results"), seed=0, cms_periods=(1, 4)):
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    steps = steps or (15 if quick else 400)
    batch_size = batch_size or (4 if quick else 8)
    seq_len = seq_len or (64 if quick else 128)
    vocab = 512 if quick else 2048
    val_blocks = 8 if quick else 64
    lrs = {**{k: v[1] for k, v in RUNS.items()}, **(lrs or {})}
    t_start = time.perf_counter()
    load_1m = os.getloadavg()[0]
    tok, train, val = load_blocks(vocab, seq_len, 400_000 if quick else None, val_blocks)
    config = HopeConfig.from_preset("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    init_state = {k: v.clone() for k, v in HopeForCausalLM(config).state_dict().items()}
    results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "load_avg_1m_at_start": load_1m},
               "setup": {"quick": quick, "preset": "tiny", "vocab_size": len(tok), "steps": steps,
                         "batch_size": batch_size, "seq_len_tokens": seq_len, "train_blocks": len(train),
                         "val_blocks": len(val), "tokens_per_step": batch_size * seq_len, "seed": seed,
                         "schedule": "linear warmup 10% then cosine to 0.1x", "grad_clip": 1.0, "weight_decay": 0.01,
                         "cms_outer_periods_steps": list(cms_periods)},
               "optimizers": {}}
    for name in optimizers:
        results["optimizers"][name] = train_one(name, lrs[name], config, init_state, train, val, steps, batch_size,
                                                max(1, steps // 10), seed, list(cms_periods))
    results["wall_time_s"] = time.perf_counter() - t_start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimizers.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "optimizers.png")
    return results


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["optimizers"].items():
        ax.plot(range(1, len(r["train_loss"]) + 1), r["train_loss"],
                label=f"{name} (lr {r['lr']:g}, val ppl {r['val_perplexity']:.1f})")
    s = results["setup"]
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(f"Hope tiny, {s['tokens_per_step']} tokens/step{' (quick)' if s['quick'] else ''}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results) -> str:
    rows = ["| optimizer | lr | final train loss | val loss | val perplexity | s/step |", "|---|---|---|---|---|---|"]
    for name, r in results["optimizers"].items():
        rows.append(f"| {name} | {r['lr']:g} | {r['train_loss'][-1]:.3f} | {r['val_loss']:.3f} | "
                    f"{r['val_perplexity']:.1f} | {r['median_step_s']:.3f} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, small vocab, short blocks")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="a multiple of 64 (the tiny preset's smallest CMS chunk)")
    p.add_argument("--optimizers", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--lr", action="append", default=[], metavar="NAME=VALUE", help="override a learning rate")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results, --quick: .../quick)")
    a = p.parse_args(argv)
    a.out = a.out or (QUICK_RESULTS if a.quick else RESULTS)
    lrs = {k: float(v) for k, v in (s.split("=", 1) for s in a.lr)}
    res = run(quick=a.quick, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, optimizers=a.optimizers,
              lrs=lrs, out=a.out)
    print(markdown(res))


if __name__ == "__main__":
    main()
