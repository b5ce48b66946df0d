"""CPU speed benchmark: Hope vs a parameter-matched Llama, and Hope's chunk-parallel memories vs the reference.

    python -m benchmarks.speed [--quick] [--out benchmarks/results]

1. Training throughput (forward + backward, tokens/s) of Hope presets next to a `LlamaForCausalLM` with the same
   vocabulary, width, depth and heads, tied embeddings, and an MLP width chosen so both have ~equal parameters.
2. Forward-only time of Hope tiny with `set_memory_impl("fast")` vs `("reference")` under `torch.no_grad()`.

Writes `<out>/speed.json` (machine description and every measurement, units in the key names) and `<out>/speed.png`,
and prints a markdown table.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import busy_cpu_s, machine_info, matched_llama, n_params
from hope_hf import HopeConfig, HopeForCausalLM

VOCAB = {"tiny": 2048, "small": 32000}
REFERENCE_LIMIT_S = 60.0


def time_iters(fn, iters: int, budget_s: float, warmup: bool = True) -> list[float]:
    """One untimed warm-up call, then up to `iters` timed calls (at least one; stop early past `budget_s`)."""
    if warmup:
        fn()
    times = []
    while len(times) < iters and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def train_throughput(model, seq_len: int, batch_size: int, iters: int, budget_s: float, warmup: bool = True) -> dict:
    """Forward + backward (next-token loss) on random ids; no optimizer step."""
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (batch_size, seq_len))

    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()

    times = time_iters(step, iters, budget_s, warmup)
    med = statistics.median(times)
    return {"seq_len_tokens": seq_len, "batch_size": batch_size, "timed_iters": len(times), "times_s": times,
            "median_s": med, "tokens_per_s": batch_size * seq_len / med}


def memory_impl_speedup(seq_len: int, iters: int, budget_s: float, limit_s: float = REFERENCE_LIMIT_S) -> dict:
    """Hope tiny forward-only time, chunk-parallel ("fast") vs token-by-token ("reference") memories.

    The reference is linear in length: a 128-token run predicts it, and the length is halved until the prediction
    fits `limit_s`."""
    torch.manual_seed(0)
    model = HopeForCausalLM(HopeConfig.from_preset("tiny", vocab_size=VOCAB["tiny"])).eval()
    ids = torch.randint(3, model.config.vocab_size, (1, seq_len))

    def forward(impl, n):
        model.set_memory_impl(impl)
        with torch.no_grad():
            model(input_ids=ids[:, :n], use_cache=False)

    probe = min(128, seq_len)
    start = time.perf_counter()
    forward("reference", probe)
    per_token = (time.perf_counter() - start) / probe
    n = seq_len
    while n > probe and per_token * n > limit_s:
        n //= 2
    fast = time_iters(lambda: forward("fast", n), iters, budget_s)
    ref = time_iters(lambda: forward("reference", n), max(1, iters // 2), budget_s, warmup=False)  # probe warmed it
    note = "" if n == seq_len else f"reference predicted > {limit_s:.0f} s at {seq_len} tokens; measured at {n}"
    return {"preset": "tiny", "requested_seq_len_tokens": seq_len, "seq_len_tokens": n, "batch_size": 1,
            "fast_times_s": fast, "reference_times_s": ref, "fast_median_s": statistics.median(fast),
            "reference_median_s": statistics.median(ref),
            "speedup_x": statistics.median(ref) / statistics.median(fast), "note": note}


def plot(rows: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['preset']} @ {r['seq_len_tokens']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) + 2.0), 4.5))
    for offset, key, color in ((-0.2, "hope", "tab:blue"), (0.2, "llama", "tab:orange")):
        values = [r[key]["tokens_per_s"] for r in rows]
        bars = ax.bar([i + offset for i in x], values, width=0.4, color=color,
                      label=f"{key.capitalize()} (fwd+bwd)")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
    ax.set_xticks(list(x), labels)
    ax.set_yscale("log")
    speeds = [r[k]["tokens_per_s"] for r in rows for k in ("hope", "llama")]
    ax.set_ylim(min(speeds) / 2, max(speeds) * 10)  # head room for the legend
    ax.set_ylabel("training tokens / s (log scale)")
    ax.set_title(f"Hope vs parameter-matched Llama, CPU, {torch.get_num_threads()} threads", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(results: dict) -> str:
    lines = ["| preset | tokens | Hope params | Llama params | Hope tok/s | Llama tok/s | Llama / Hope |",
             "|---|---|---|---|---|---|---|"]
    for r in results["throughput"]:
        h, l = r["hope"], r["llama"]
        lines.append(f"| {r['preset']} | {r['seq_len_tokens']} | {h['params'] / 1e6:.2f}M | {l['params'] / 1e6:.2f}M "
                     f"| {h['tokens_per_s']:,.1f} | {l['tokens_per_s']:,.1f} "
                     f"| {l['tokens_per_s'] / h['tokens_per_s']:.1f}x |")
    s = results["memory_impl_speedup"]
    lines.append(f"\nHope tiny forward, {s['seq_len_tokens']} tokens: fast {s['fast_median_s']:.3f} s, "
                 f"reference {s['reference_median_s']:.3f} s -> **{s['speedup_x']:.1f}x** speedup"
                 + (f" ({s['note']})" if s["note"] else ""))
    m = results["machine"]
    if m.get("other_processes_avg_cores_busy", 0) > 0.1:
        lines.append(f"\nWARNING: other processes kept {m['other_processes_avg_cores_busy']:.2f} of {m['cpu_count']} "
                     f"CPUs busy on average during the run; Hope's many small ops slow down far more than Llama's "
                     f"under such contention, so rerun on an idle machine")
    return "\n".join(lines)


def run(presets=("tiny", "small"), lengths=(512, 2048), ref_len=1024, iters=3, budget_s=60.0, batch_size=1,
        out="benchmarks/results", quick=False) -> dict:
    """Run every benchmark, write `<out>/speed.json` and `<out>/speed.png`, return the results."""
    wall, machine, busy = time.perf_counter(), machine_info(), busy_cpu_s()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    progress = tqdm(total=len(presets) * len(lengths), desc="throughput")
    for preset in presets:
        torch.manual_seed(0)
        hope = HopeForCausalLM(HopeConfig.from_preset(preset, vocab_size=VOCAB[preset]))
        torch.manual_seed(0)
        llama = matched_llama(hope.config, max(lengths))
        for i, seq_len in enumerate(lengths):  # one warm-up per model, at its first length
            row = {"preset": preset, "seq_len_tokens": seq_len}
            for name, model in (("hope", hope), ("llama", llama)):
                cfg = model.config
                row[name] = {"params": n_params(model), "hidden_size": cfg.hidden_size,
                             "num_hidden_layers": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
                             "tie_word_embeddings": cfg.tie_word_embeddings,
                             **({"intermediate_size": cfg.intermediate_size} if name == "llama" else {}),
                             **train_throughput(model, seq_len, batch_size, iters, budget_s, warmup=i == 0)}
            row["param_ratio_llama_over_hope"] = row["llama"]["params"] / row["hope"]["params"]
            rows.append(row)
            progress.update()
        del hope, llama
    progress.close()
    results = {"machine": machine,
               "settings": {"quick": quick, "batch_size": batch_size, "max_timed_iters": iters,
                            "per_case_budget_s": budget_s, "dtype": "float32", "device": "cpu",
                            "warmup": "one untimed fwd+bwd per model at its first length; the model is reused for "
                                      "longer lengths"},
               "throughput": rows,
               "memory_impl_speedup": memory_impl_speedup(ref_len, iters, budget_s)}
    results["wall_time_s"] = time.perf_counter() - wall
    machine["load_avg_1m_at_end"] = os.getloadavg()[0]
    if busy is not None:  # CPU cores kept busy by *other* processes, averaged over the run (should be ~0)
        (all0, own0), (all1, own1) = busy, busy_cpu_s()
        machine["other_processes_avg_cores_busy"] = max(0.0, (all1 - all0) - (own1 - own0)) / results["wall_time_s"]
    (out / "speed.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(rows, out / "speed.png")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset at 512 tokens only, fewer iterations")
    parser.add_argument("--out", default="benchmarks/results", help="folder for speed.json and speed.png")
    args = parser.parse_args(argv)
    if args.quick:
        results = run(presets=("tiny",), lengths=(512,), ref_len=256, iters=3, budget_s=20.0, out=args.out,
                      quick=True)
    else:
        results = run(out=args.out)
    print(markdown(results))
    print(f"\nwall time {results['wall_time_s']:.0f} s; wrote {Path(args.out) / 'speed.json'} and "
          f"{Path(args.out) / 'speed.png'}")


if __name__ == "__main__":
    main()
