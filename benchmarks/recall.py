"""In-context recall benchmark: synthetic associative recall trained at length L, tested at L, 2L and 4L, Hope vs a
parameter-matched LlamaForCausalLM, in one run.

    python -m benchmarks.recall [--quick] [--steps N] [--batch-size B] [--seq-len L] [--out benchmarks/results]

The task (`make_batch`). A 64-token vocabulary: ids 0/1/2 are pad/bos/eos (HopeConfig's defaults), 3/4/5 the
markers KEY/VAL/QUERY, then 16 key ids, 16 value ids and 26 filler ids. A sequence of `n` tokens is BOS, then a
body of random filler with `pairs` records `KEY k VAL v` dropped at random places (distinct keys, values drawn
independently, so two keys may share a value), then `queries` records `QUERY k v` asking for distinct keys of the
body in random order. Only the answers v after a query are scored (labels -100 everywhere else; HF shifts the
labels, so v is predicted from the position of k). Accuracy = fraction of queried values whose argmax prediction is
right, teacher-forced, one forward pass per batch in eval mode; chance is 1/16 (1/`pairs` for a model that only
learned to pick some value of the sequence). Longer test sequences keep the pairs and queries and add filler, so
the distance between a record and its query grows with the length (uniformly placed records: on average ~n/2).

Both models start from the same seed, see the same freshly generated training sequences (each once, length L) in
the same order, with AdamW, the same learning rate and warm-up + cosine schedule (`common.train_lm`); Llama's RoPE
table covers the longest test length. The test sets are generated from a different seed, one per length.

Writes `<out>/recall.json` (setup, per model: params, accuracy and answer loss per test length, training loss per
step, median s/step; the target check for Hope at 4L as data) and `<out>/recall.png` (accuracy vs test length, and
the training-loss curves), and prints a markdown table. `--quick` is a smoke run: too few steps to learn the task.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks import common
from hope_hf import HopeConfig

PAD, BOS, EOS, KEY, VAL, QUERY = range(6)
N_KEYS, N_VALUES, N_FILLER = 16, 16, 26
KEYS = torch.arange(6, 6 + N_KEYS)
VALUES = torch.arange(KEYS[-1] + 1, KEYS[-1] + 1 + N_VALUES)
FILLER = torch.arange(VALUES[-1] + 1, VALUES[-1] + 1 + N_FILLER)
VOCAB_SIZE = int(FILLER[-1]) + 1  # 64
TARGET_ACC_AT_4L = 0.9

FULL = {"steps": 800, "batch_size": 8, "seq_len": 128, "multiples": (1, 2, 4), "pairs": 8, "queries": 4,
        "lr": 3e-3, "eval_seqs": 128}
QUICK = {"steps": 30, "batch_size": 8, "seq_len": 128, "multiples": (1, 2, 4), "pairs": 8, "queries": 4,
         "lr": 3e-3, "eval_seqs": 32}


# ------------------------------------------------------------------------------------------------------ data


def make_batch(n_seqs: int, seq_len: int, pairs: int, queries: int, generator: torch.Generator):
    """(input_ids, labels), both [n_seqs, seq_len]: BOS, filler with `pairs` `KEY k VAL v` records at random places,
    then `queries` `QUERY k v` records for distinct keys of the body; labels hold v at each queried answer, else -100.
    """
    if not 1 <= queries <= pairs <= N_KEYS:
        raise ValueError(f"need 1 <= queries ({queries}) <= pairs ({pairs}) <= {N_KEYS}")
    body = seq_len - 1 - 3 * queries
    n_filler = body - 4 * pairs
    if n_filler < 0:
        raise ValueError(f"seq_len {seq_len} is too short for {pairs} pairs and {queries} queries")
    g = generator
    rows = torch.arange(n_seqs)[:, None]
    keys = KEYS[torch.rand(n_seqs, N_KEYS, generator=g).argsort(-1)[:, :pairs]]  # distinct keys, order of writing
    values = VALUES[torch.randint(N_VALUES, (n_seqs, pairs), generator=g)]
    # records and filler tokens are n_filler + pairs items in a random order: pick the records' item slots, sorted;
    # record i starts at its slot + 3 i (each earlier record is 3 tokens longer than one filler token)
    slots = torch.rand(n_seqs, n_filler + pairs, generator=g).argsort(-1)[:, :pairs].sort(-1).values
    starts = 1 + slots + 3 * torch.arange(pairs)
    ids = FILLER[torch.randint(N_FILLER, (n_seqs, seq_len), generator=g)]
    ids[:, 0] = BOS
    ids[rows, starts], ids[rows, starts + 1], ids[rows, starts + 2], ids[rows, starts + 3] = KEY, keys, VAL, values
    asked = torch.rand(n_seqs, pairs, generator=g).argsort(-1)[:, :queries]  # which records, in asking order
    q0 = 1 + body + 3 * torch.arange(queries)
    ids[rows, q0], ids[rows, q0 + 1], ids[rows, q0 + 2] = QUERY, keys.gather(1, asked), values.gather(1, asked)
    labels = torch.full_like(ids, -100)
    labels[rows, q0 + 2] = ids[rows, q0 + 2]
    return ids, labels


# ------------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def recall_accuracy(model, ids: torch.Tensor, labels: torch.Tensor, batch_size: int) -> dict:
    """Teacher-forced argmax accuracy and mean cross-entropy (nats) over the scored answers."""
    was_training = model.training
    model.eval()
    correct, total, loss = 0, 0, 0.0
    for i in range(0, len(ids), batch_size):
        x, y = ids[i:i + batch_size], labels[i:i + batch_size, 1:]
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        mask = y != -100
        logits, y = logits[mask], y[mask]
        correct += (logits.argmax(-1) == y).sum().item()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        total += y.numel()
    model.train(was_training)
    return {"accuracy": correct / total, "answer_loss": loss / total, "answers": total}


# ---------------------------------------------------------------------------------------------------- the run


def run(quick: bool = False, out=common.RESULTS, seed: int = 0, **overrides) -> dict:
    """Train both models at `seq_len`, test at `seq_len` x each of `multiples`, write `<out>/recall.{json,png}`.

    Overrides (defaults in `FULL` / `QUICK`): steps, batch_size, seq_len (a multiple of 64), multiples, pairs,
    queries, lr, eval_seqs."""
    unknown = set(overrides) - set(FULL)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; choose from {sorted(FULL)}")
    s = {**(QUICK if quick else FULL), **{k: v for k, v in overrides.items() if v is not None}}
    s["multiples"] = list(s["multiples"])
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    timer = common.Run()
    L = s["seq_len"]
    lengths = [L * m for m in s["multiples"]]
    config = HopeConfig.from_preset("tiny", vocab_size=VOCAB_SIZE, pad_token_id=PAD, bos_token_id=BOS,
                                    eos_token_id=EOS)
    span = config.span_size or 1
    if any(n % span for n in lengths):
        raise ValueError(f"every length must be a multiple of Hope's smallest CMS chunk {span}: {lengths}")
    train_ids, train_labels = make_batch(s["steps"] * s["batch_size"], L, s["pairs"], s["queries"],
                                         torch.Generator().manual_seed(seed))
    tests = {n: make_batch(s["eval_seqs"], n, s["pairs"], s["queries"],
                           torch.Generator().manual_seed(10_000 + 97 * seed + n)) for n in lengths}
    results = {"setup": {"quick": quick, "preset": "tiny", "vocab_size": VOCAB_SIZE, "seed": seed,
                         "train_seq_len_tokens": L, "test_lengths_tokens": lengths, **s,
                         "train_sequences": len(train_ids), "tokens_per_step": s["batch_size"] * L,
                         "scored_answers_per_step": s["batch_size"] * s["queries"],
                         "n_keys": N_KEYS, "n_values": N_VALUES, "n_filler": N_FILLER,
                         "chance_accuracy": 1 / N_VALUES, "optimizer": "AdamW (betas 0.9, 0.95), weight decay 0.01",
                         "schedule": "linear warm-up 10% then cosine to 0.1x", "grad_clip": 1.0,
                         "threads": torch.get_num_threads()},
               "models": {}}
    for kind in tqdm(("hope", "llama"), desc="recall"):
        model = common.build(kind, config, seed, max(lengths))
        t0 = time.perf_counter()
        tr = common.train_lm(model, train_ids, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                             labels=train_labels, desc=f"train {kind}")
        train_s = time.perf_counter() - t0
        evals = {n: recall_accuracy(model, *tests[n], s["batch_size"]) for n in lengths} if not tr["diverged"] else {}
        nan = float("nan")
        results["models"][kind] = {
            "params": common.n_params(model), "train_loss": tr["train_loss"], "steps_done": tr["steps_done"],
            "diverged": tr["diverged"], "median_step_s": tr["median_step_s"], "train_s": train_s,
            "accuracy": [evals[n]["accuracy"] if evals else nan for n in lengths],
            "answer_loss": [evals[n]["answer_loss"] if evals else nan for n in lengths],
            "answers_per_length": s["eval_seqs"] * s["queries"]}
        if kind == "llama":
            results["models"][kind]["intermediate_size"] = model.config.intermediate_size
        del model
    i4 = s["multiples"].index(4) if 4 in s["multiples"] else len(lengths) - 1
    for kind in ("hope", "llama"):
        results[f"{kind}_acc_at_{s['multiples'][i4]}L"] = results["models"][kind]["accuracy"][i4]
    hope_4l = results["models"]["hope"]["accuracy"][i4]
    results.update({"target_length_multiple": s["multiples"][i4], "target_hope_acc_at_4L": TARGET_ACC_AT_4L,
                    "target_met": bool(hope_4l >= TARGET_ACC_AT_4L)})
    results = timer.finish(results)
    common.write_results(out, "recall", results, plot)
    return results


# ------------------------------------------------------------------------------------------------ reporting


def plot(results: dict, path):
    plt = common.pyplot()
    s, models = results["setup"], results["models"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, m in models.items():
        a.plot(s["test_lengths_tokens"], m["accuracy"], "o-", label=f"{kind} ({m['params'] / 1e3:.0f}k params)")
        b.plot(range(1, len(m["train_loss"]) + 1), m["train_loss"], label=kind, alpha=0.8)
    a.axhline(s["chance_accuracy"], color="gray", ls=":", label="chance (1/16)")
    a.axhline(results["target_hope_acc_at_4L"], color="green", ls="--", lw=0.8, label="target for Hope at 4L")
    a.axvline(s["train_seq_len_tokens"], color="gray", ls="--", lw=0.8)
    a.set_xscale("log", base=2)
    a.set_xticks(s["test_lengths_tokens"], [str(n) for n in s["test_lengths_tokens"]])
    a.set_ylim(0, 1.02)
    a.set_xlabel("test sequence length (tokens; trained at the dashed line)")
    a.set_ylabel("recall accuracy (teacher-forced argmax)")
    a.legend(fontsize=8)
    b.set_xlabel("step")
    b.set_ylabel("training loss on the answers (nats)")
    b.legend(fontsize=8)
    fig.suptitle(f"Associative recall, {s['pairs']} pairs / {s['queries']} queries, trained at {s['seq_len']} tokens, "
                 f"{s['steps']} steps x {s['batch_size']}{' (quick)' if s['quick'] else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    s = results["setup"]
    mult = s["multiples"]
    head = " | ".join(f"acc@{m}L ({n})" if m != 1 else f"acc@L ({n})" for m, n in zip(mult, s["test_lengths_tokens"]))
    lines = [f"| model | params | {head} |", "|---|---|" + "---|" * len(mult)]
    for kind, m in results["models"].items():
        lines.append(f"| {kind} | {m['params'] / 1e3:.0f}k | " + " | ".join(f"{a:.1%}" for a in m["accuracy"]) + " |")
    k = results["target_length_multiple"]
    acc = results["models"]["hope"]["accuracy"][mult.index(k)]
    lines.append(f"\nTarget: Hope >= {results['target_hope_acc_at_4L']:.0%} at {k}L ({s['test_lengths_tokens'][-1]} "
                 f"tokens); measured {acc:.1%}, target {'met' if results['target_met'] else 'NOT met'} "
                 f"(chance {s['chance_accuracy']:.1%}).")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: too few steps to learn the task")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="training length L, a multiple of 64 (the tiny preset's CMS chunk)")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=common.RESULTS)
    a = p.parse_args(argv)
    res = run(quick=a.quick, out=a.out, seed=a.seed, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
              lr=a.lr)
    print(markdown(res))


if __name__ == "__main__":
    main()
