"""GPU: a whole training step (forward + backward) captured as one CUDA graph, Hope vs the matched Llama.

    python -m benchmarks.cuda_graphs case --model hope --preset small --length 512 [--batch-size 1] [--chunk 256]
                                          [--compile] --out DIR
    python -m benchmarks.cuda_graphs collect DIR [--out benchmarks/results]

On a GPU Hope is launch bound (`gpu_speed.json`: small does ~250k kernel launches per 512-token step, ~8 us of host
time each, so the step time follows the number of memory chunks, not the FLOPs). A CUDA graph replays every kernel of
a captured step without the host: what is left is the GPU's own time per kernel. A fresh unpadded batch takes Hope's
static path (no value read back to the host; pinned by tests/test_compile.py), so the whole step can be captured, as
can Llama's.

`case` measures one model in one process (a failed capture can leave the CUDA context unusable, so each case runs
alone): eager tokens/s (or, with `--compile`, with compiled memories, `compile_memories`), then the same step
captured (`capture_step`) and replayed, with the replayed loss and gradient norm checked against the eager ones, and
the loss replayed on other ids (copied into the captured input) against an eager forward on them.
`--chunk C` sets Hope's projection and memory chunks and its smallest CMS level to C (fewer, larger chunks: fewer
launches per token). `collect` joins the cases into `gpu_graphs.json` and `gpu_graphs.png`. bf16 autocast throughout.
`benchmarks/gpu.sh` runs the cases that fit one lease.
"""

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch

from benchmarks.common import RESULTS, Run, n_params, pyplot, write_results
from benchmarks.speed import (hope_preset, llama_matching, matmul_peak_flops, percent, preset_config, time_iters,
                              train_throughput)
from hope_hf import HopeConfig, HopeForCausalLM

LLAMA_MAX_LEN = 8192


def build(model: str, preset: str, chunk: int | None = None):
    """Hope `preset` (with its memory chunks and smallest CMS level set to `chunk`; levels below `chunk` merge into
    it), or its matched Llama."""
    torch.manual_seed(0)
    if model == "llama":
        return llama_matching(preset, LLAMA_MAX_LEN)
    if chunk is None:
        return hope_preset(preset)
    c = preset_config(preset)
    return HopeForCausalLM(HopeConfig.from_preset(
        preset, vocab_size=c.vocab_size, projection_chunk_size=chunk, memory_chunk_size=chunk,
        cms_chunk_sizes=sorted({chunk, *(C for C in c.cms_chunk_sizes if C > chunk)})))


def _grad_norm(model) -> float:
    return float(torch.stack([p.grad.float().norm() for p in model.parameters() if p.grad is not None]).norm())


def capture_step(model, ids, autocast_dtype=None):
    """Capture `model`'s next-token loss and its backward on `ids` as one `torch.cuda.CUDAGraph`.

    Returns (graph, loss, eager): `graph.replay()` recomputes `loss` (a static tensor) and every parameter's `.grad`
    in place from the current contents of `ids`; `eager` = (loss, gradient norm) of the same step run eagerly on a
    side stream just before (the warm-up capture needs). Autocast's weight cache is off (cached casts would be
    captured as stale tensors)."""
    def step():
        with torch.autocast("cuda", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None,
                            cache_enabled=False):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        model.zero_grad(set_to_none=True)
        eager = (float(step()), _grad_norm(model))
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)           # backward allocates the gradients from the graph's pool
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()
    return graph, loss, eager


def graphed_throughput(model, seq_len: int, batch_size: int, iters: int, budget_s: float, autocast_dtype=None) -> dict:
    """Tokens/s of replaying the captured training step; `first_call_s` is the capture (with its eager warm-up)."""
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (batch_size, seq_len), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    graph, loss, (eager_loss, eager_norm) = capture_step(model, ids, autocast_dtype)
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    graph.replay()
    torch.cuda.synchronize()
    replay_loss, replay_norm = float(loss), _grad_norm(model)
    other = torch.randint_like(ids, 3, model.config.vocab_size)
    ids.copy_(other)                                             # the graph reads whatever the input buffer holds
    graph.replay()
    other_replayed = float(loss)
    with torch.autocast("cuda", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None,
                        cache_enabled=False):                    # (with grad, as captured: no recompilation)
        other_eager = float(model(input_ids=other, labels=other, use_cache=False).loss)
    times = time_iters(graph.replay, iters, budget_s, warmup=False, device="cuda")
    med = statistics.median(times)
    return {"seq_len_tokens": seq_len, "batch_size": batch_size, "timed_iters": len(times), "times_s": times,
            "median_s": med, "tokens_per_s": batch_size * seq_len / med, "first_call_s": first,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(),
            "loss_eager": eager_loss, "loss_replayed": replay_loss,
            "grad_norm_eager": eager_norm, "grad_norm_replayed": replay_norm,
            "loss_other_ids_eager": other_eager, "loss_other_ids_replayed": other_replayed}


def case(model_kind: str, preset: str, seq_len: int, batch_size: int, chunk: int | None, compiled: bool, out: Path,
         iters: int = 3, budget_s: float = 20.0) -> dict:
    """One model, eager (or compiled) then graphed; writes `<out>/case_<label>.json`."""
    label = "_".join(str(x) for x in (model_kind, preset, f"c{chunk}" if chunk else "", "compiled" if compiled else "",
                                      seq_len, f"b{batch_size}") if x != "")
    bench = Run()
    model = build(model_kind, preset, chunk).cuda()
    if compiled:
        model.compile_memories()
    bf16 = torch.bfloat16
    base = train_throughput(model, seq_len, batch_size, iters, budget_s, "cuda", bf16, flops=not compiled)
    row = {"label": label, "model": model_kind, "preset": preset,
           "chunk": getattr(model.config, "memory_chunk_size", None), "compiled": compiled, "params": n_params(model),
           "seq_len_tokens": seq_len, "batch_size": batch_size, "gpu": torch.cuda.get_device_name(),
           "matmul_peak": matmul_peak_flops("cuda", bf16), "eager" if not compiled else "compiled_memories": base}
    try:
        row["graphed"] = graphed_throughput(model, seq_len, batch_size, iters, budget_s, bf16)
    except Exception:                                            # recorded: the case says why it could not capture
        row["graphed_error"] = traceback.format_exc()[-2000:]
    row = bench.finish(row)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"case_{label}.json").write_text(json.dumps(row, indent=1) + "\n")
    g = row.get("graphed")
    print(label, f"{base['tokens_per_s']:,.0f} tok/s", f"graphed {g['tokens_per_s']:,.0f} tok/s (capture "
          f"{g['first_call_s']:.1f} s; loss {g['loss_eager']:.5f} / {g['loss_replayed']:.5f}; grad norm "
          f"{g['grad_norm_eager']:.5f} / {g['grad_norm_replayed']:.5f}; other ids {g['loss_other_ids_eager']:.5f} / "
          f"{g['loss_other_ids_replayed']:.5f}; peak {g['peak_memory_bytes'] / 2**30:.1f} GiB)"
          if g else row["graphed_error"])
    return row


def collect(case_dir: Path, out: Path, name: str = "gpu_graphs", notes: str | None = None) -> dict:
    """Join the cases of `case_dir` into `<out>/<name>.json` (+ PNG): each case next to the Llama case of its preset,
    length and batch (ratios of tokens/s) and as a fraction of the bf16 matmul peak (eager Hope's FLOPs at that
    chunk size; the peak is the best of the cases' own measurements)."""
    cases = sorted((json.loads(p.read_text()) for p in Path(case_dir).glob("case_*.json")),   # by size, then Hope
                   key=lambda c: (round(c["params"], -7), c["seq_len_tokens"], c["batch_size"], c["model"],
                                  c["chunk"] or 0, c["compiled"], c["label"]))
    peaks = [c["matmul_peak"] for c in cases if c.get("matmul_peak")]
    peak = max(peaks, key=lambda p: p["flops_per_s"]) if peaks else None
    results = {"settings": {"device": "cuda", "dtype": "autocast bfloat16",
                            "gpu": cases[0].get("gpu") if cases else None,
                            "graphed": "forward + backward captured as one torch.cuda.CUDAGraph and replayed"},
               "matmul_peak": peak, "cases": join(cases, peak),
               "wall_time_s": sum(c.get("wall_time_s", 0.0) for c in cases),
               "machine": cases[0].get("machine", {}) if cases else {}, **({"notes": notes} if notes else {})}
    write_results(out, name, results, lambda res, path: plot(res["cases"], path))
    print(markdown(results))
    return results


def join(cases: list[dict], peak: dict | None) -> list[dict]:
    """The cases with `<measure>_over_llama_<eager|graphed>_tokens_per_s` and `<measure>_fraction_of_matmul_peak`."""
    llama = {(c["preset"], c["seq_len_tokens"], c["batch_size"]): c for c in cases if c["model"] == "llama"}
    flops = {(c["preset"], c["chunk"], c["seq_len_tokens"], c["batch_size"]): c["eager"]["flops_per_step"]
             for c in cases if "flops_per_step" in c.get("eager", {})}
    rows = []
    for c in cases:
        row = dict(c)
        base = llama.get((c["preset"], c["seq_len_tokens"], c["batch_size"]))
        step_flops = flops.get((c["preset"], c["chunk"], c["seq_len_tokens"], c["batch_size"]))
        for key in (k for k in ("eager", "compiled_memories", "graphed") if k in c):
            for ref in (r for r in ("eager", "graphed") if base is not None and r in base):
                row[f"{key}_over_llama_{ref}_tokens_per_s"] = c[key]["tokens_per_s"] / base[ref]["tokens_per_s"]
            if step_flops and peak:
                row[f"{key}_fraction_of_matmul_peak"] = step_flops / c[key]["median_s"] / peak["flops_per_s"]
        rows.append(row)
    return rows


def plot(cases: list[dict], path: Path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels, eager, graphed = [], [], []
    for c in cases:
        labels.append(c["label"].replace("_", " "))
        eager.append((c.get("eager") or c.get("compiled_memories"))["tokens_per_s"])
        graphed.append(c["graphed"]["tokens_per_s"] if "graphed" in c else 0)
    x = range(len(labels))
    ax.barh([i - 0.2 for i in x], eager, 0.4, label="eager (or compiled memories)")
    ax.barh([i + 0.2 for i in x], graphed, 0.4, label="whole step as one CUDA graph")
    ax.set_yticks(list(x), labels, fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()                                   # first case on top
    ax.set_xlabel("training tokens/s (fwd+bwd, bf16)")
    ax.legend(fontsize=8)
    ax.set_title("Hope vs Llama on one GPU: eager vs CUDA graph")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(results: dict) -> str:
    lines = ["| case | params | eager tok/s | graphed tok/s | graphed / eager | vs Llama graphed | % of peak (graphed) "
             "| loss eager / replayed |", "|---|---|---|---|---|---|---|---|"]
    for c in results["cases"]:
        base = c.get("eager") or c.get("compiled_memories")
        g = c.get("graphed")
        lines.append(
            f"| {c['label']} | {c['params'] / 1e6:.1f}M | {base['tokens_per_s']:,.0f} | "
            + (f"{g['tokens_per_s']:,.0f} | {g['tokens_per_s'] / base['tokens_per_s']:.1f}x | " if g else
               f"({c.get('graphed_error', 'not measured').strip().splitlines()[-1][:80]}) | | ")
            + (f"{c['graphed_over_llama_graphed_tokens_per_s']:.3f}x | " if "graphed_over_llama_graphed_tokens_per_s"
               in c else "| ")
            + (f"{percent(c['graphed_fraction_of_matmul_peak'])} | " if "graphed_fraction_of_matmul_peak" in c
               else "| ")
            + (f"{g['loss_eager']:.4f} / {g['loss_replayed']:.4f} |" if g else "|"))
    if results.get("notes"):
        lines += ["", results["notes"]]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("case", help="measure one model (eager or compiled, then graphed)")
    one.add_argument("--model", choices=("hope", "llama"), required=True)
    one.add_argument("--preset", default="small")
    one.add_argument("--length", type=int, default=512)
    one.add_argument("--batch-size", type=int, default=1)
    one.add_argument("--chunk", type=int, help="Hope's memory chunks and smallest CMS level (default: the preset's)")
    one.add_argument("--compile", action="store_true", help="Hope with compiled memories (compile_memories)")
    one.add_argument("--iters", type=int, default=3)
    one.add_argument("--out", type=Path, required=True, help="folder for case_<label>.json")
    join = sub.add_parser("collect", help="join the cases into gpu_graphs.json/.png")
    join.add_argument("cases", type=Path)
    join.add_argument("--out", type=Path, default=Path(RESULTS))
    join.add_argument("--notes", help="text printed under the table (how the cases were run)")
    args = parser.parse_args(argv)
    if args.command == "case":
        case(args.model, args.preset, args.length, args.batch_size, args.chunk, args.compile, args.out, args.iters)
    else:
        collect(args.cases, args.out, notes=args.notes)


if __name__ == "__main__":
    main()
