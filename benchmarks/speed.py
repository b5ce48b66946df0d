"""CPU speed benchmark: Hope vs a parameter-matched Llama, and Hope's chunk-parallel memories vs the reference.

    python -m benchmarks.speed [--quick] [--contention] [--out benchmarks/results]

1. Training throughput (forward + backward, tokens/s) of Hope presets next to a `LlamaForCausalLM` with the same
   vocabulary, width, depth and heads, tied embeddings, and an MLP width chosen so both have ~equal parameters, at
   512, 2048 and 8192 tokens; the FLOPs of each step (torch's FlopCounterMode) over the median time, as a fraction of
   the dense-matmul FLOP/s measured in the same run; aten operator calls per token; on CPU the activations saved for
   backward (autograd's saved-tensor hooks) and the peak RSS of one step above the level before it. Hope is also
   measured with activation checkpointing ("hope_ckpt": tokens/s, activations, peak RSS).
2. Forward-only time of Hope tiny with `set_memory_impl("fast")` vs `("reference")` under `torch.no_grad()`.

With `--contention` every case runs next to one busy background process (`<out>/speed_contention.json`).

Writes `<out>/speed.json` (machine description and every measurement, units in the key names) and `<out>/speed.png`,
and prints a markdown table.
"""

import argparse
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import (
    QUICK_RESULTS,
    RESULTS,
    Run,
    matched_llama,
    n_params,
    write_results,
)
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.cli import ALLOCATOR_ENV, LEAN_MMAP_THRESHOLD, set_malloc, tune_allocator

VOCAB = {"tiny": 2048, "small": 32000}
# (preset, length) pairs left out of the default CPU run, with the reason recorded in the JSON
# cases where Hope without checkpointing does not fit: (why, whether Llama and checkpointed Hope are measured there).
# small 8k checkpointed fits (6.0 GiB peak RSS, README "Allocator") as long as no FlopCounterMode is around it
SKIP = {("small", 8192): ("fwd+bwd of Hope small at 8192 tokens without checkpointing filled all 24 GiB of this "
                          "machine's memory (swapping)", True)}
REFERENCE_LIMIT_S = 60.0
MIB = 2 ** 20


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_iters(fn, iters: int, budget_s: float, warmup: bool = True, device="cpu") -> list[float]:
    """One untimed warm-up call, then up to `iters` timed calls (at least one; stop early past `budget_s`)."""
    if warmup:
        fn()
        _sync(device)
    times = []
    while len(times) < iters and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_flops(device="cpu", dtype=torch.float32, n: int = 2048, budget_s: float = 3.0) -> dict:
    """The machine's measured dense-matmul FLOP/s: best of repeated n x n @ n x n products (2 n^3 FLOPs each)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = time_iters(lambda: a @ b, 50, budget_s, device=device)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "device": str(device), "timed_iters": len(times),
            "flops_per_s": 2 * n ** 3 / min(times)}


def _causal_share(query_shape, key_shape, is_causal: bool) -> float:
    """Share of the T x T score matrix a causal kernel computes: the lower triangle, T(T+1)/2 of T^2 entries."""
    s_q, s_k = query_shape[2], key_shape[2]
    return (s_k + 1) / (2 * s_k) if is_causal and s_q == s_k else 1.0


def _register_cpu_attention_flops():
    """FlopCounterMode (torch 2.13) has formulas for the CUDA SDPA kernels but not for the CPU flash kernel that
    Llama's sdpa attention runs here, so it counted no attention FLOPs on CPU. Give the CPU kernel and its backward
    torch's formulas, scaled to the lower triangle when causal (the kernel skips the masked blocks; counting the full
    T x T products made Llama's FLOP/s exceed the matmul peak at 8k tokens)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = aten._scaled_dot_product_flash_attention_for_cpu
    bwd = aten._scaled_dot_product_flash_attention_for_cpu_backward

    def forward(q, k, v, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs):
        return round(fc.sdpa_flop_count(q, k, v) * _causal_share(q, k, is_causal))

    def backward(grad_out, q, k, v, out, lse, dropout_p, is_causal, *args, out_shape=None, **kwargs):
        return round(fc.sdpa_backward_flop_count(grad_out, q, k, v) * _causal_share(q, k, is_causal))

    for op, formula in ((fwd, forward), (bwd, backward)):
        if op not in fc.flop_registry:
            fc.register_flop_formula(op)(formula)


def count_flops(fn) -> int:
    """FLOPs of one call of `fn`, counted by torch's FlopCounterMode (matmuls, convs, attention; the elementwise
    ops it does not count are a small share for both models)."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def forward_flops(model, seq_len: int, batch_size: int = 1, device="cpu") -> dict:
    """Where a Hope model's forward FLOPs go, per token (FlopCounterMode's module attribution of one training-mode
    forward): the self-modifying memories (projections, k/v/q/eta/alpha memories, output memory, gate), the CMS levels'
    MLPs, the rest of the blocks (the CMS gradient sums and commits of the in-context updates), and the rest of the
    model (embedding, LM head and the teach signals)."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (batch_size, seq_len), device=device)
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids, use_cache=False)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = per_module.get("Global", 0)
    layers = [name for name in per_module if name.rsplit(".", 1)[0].endswith("model.layers")]
    memory = sum(per_module.get(f"{name}.memory", 0) for name in layers)
    cms = sum(v for name, v in per_module.items()
              if name.rsplit(".", 1)[0].endswith(".cms") and name.rsplit(".", 1)[0].rsplit(".", 1)[0] in layers)
    blocks = sum(per_module[name] for name in layers)
    n = batch_size * seq_len
    return {"total_per_token": total / n, "memory_per_token": memory / n, "cms_mlp_per_token": cms / n,
            "cms_updates_per_token": (blocks - memory - cms) / n, "head_and_teach_per_token": (total - blocks) / n}


def next_token_loss(model, seq_len: int, batch_size: int = 1, device="cpu"):
    """`model` in training mode and a function computing its next-token loss on one fixed batch of random ids."""
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (batch_size, seq_len), device=device)
    return lambda: model(input_ids=ids, labels=ids, use_cache=False).loss


def profiled_step(model, seq_len: int, batch_size: int = 1, device="cpu"):
    """torch.profiler's record of one forward + backward (next-token loss) after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    loss = next_token_loss(model, seq_len, batch_size, device)

    def step():
        model.zero_grad(set_to_none=True)
        loss().backward()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof


def aten_calls(model, seq_len: int, batch_size: int = 1, device="cpu") -> dict:
    """aten operator calls of one forward + backward (`profiled_step`): every `aten::` event (calls made inside other
    aten ops included, the issue's measure) and the top-level ones (made from Python or autograd), each per token of
    the batch."""
    prof = profiled_step(model, seq_len, batch_size, device)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
    n = batch_size * seq_len
    return {"aten_calls_per_token": len(events) / n, "aten_top_level_calls_per_token": len(top) / n}


def saved_for_backward_bytes(fn, params=()) -> int:
    """Bytes of the distinct tensor storages autograd saves for backward while `fn()` builds its graph (the activation
    memory a training step holds at its peak, before backward frees it), parameters in `params` excluded."""
    own = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _rss_kib(field: str):
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def peak_rss_bytes(fn):
    """Peak resident memory of this process while `fn()` runs, above its resident memory just before (Linux: the
    VmHWM high-water mark, reset through /proc/self/clear_refs); None where that is not available."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _rss_kib("VmRSS")
    fn()
    peak = _rss_kib("VmHWM")
    return None if before is None or peak is None else 1024 * (peak - before)


@contextlib.contextmanager
def malloc_for(model):
    """glibc's mmap threshold as `hope-hf train` sets it for `model`: 256 KiB with activation checkpointing (memory
    first), else the environment's (`ALLOCATOR_ENV`, README "Allocator")."""
    lean = getattr(getattr(model, "model", None), "blocks_checkpointed", False)
    if lean:
        set_malloc(LEAN_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if lean:
            set_malloc(int(os.environ.get("MALLOC_MMAP_THRESHOLD_", ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"])))


def _memory_child(build, seq_len, batch_size, queue):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build()
    loss = next_token_loss(model, seq_len, batch_size)
    saved = []

    def step():
        saved.append(saved_for_backward_bytes(lambda: loss().backward(), list(model.parameters())))

    with malloc_for(model):
        rss = peak_rss_bytes(step)
    queue.put((saved[0], rss))


def _release_free_memory():
    """Hand the C heap's free pages back to the OS (glibc `malloc_trim`), so that a child process has room."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def allocator_environ():
    """`hope_hf.cli.ALLOCATOR_ENV` in the environment (where not set) while a child process starts, as `hope-hf train`
    runs: with glibc's default thresholds, checkpointed small at 8k tokens fragmented the heap past 18 GiB."""
    added = {k: v for k, v in ALLOCATOR_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            del os.environ[key]


def memory_in_fresh_process(build, seq_len: int, batch_size: int = 1):
    """(saved activation bytes, peak RSS bytes or None) of one fwd+bwd of `build()` (a picklable model factory) in a
    fresh process: this one's allocator keeps what earlier cases freed (a smaller model's step would not raise its
    resident set at all) and fragments (small at 2048 tokens ran it out of 24 GiB). (None, None) if the child dies."""
    import multiprocessing as mp
    import queue as queue_mod

    _release_free_memory()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(build, seq_len, batch_size, results))
    with allocator_environ():
        proc.start()
    try:
        while True:
            try:
                return results.get(timeout=5)
            except queue_mod.Empty:
                if not proc.is_alive():
                    return None, None
    finally:
        proc.join()


def preset_config(preset: str) -> HopeConfig:
    return HopeConfig.from_preset(preset, vocab_size=VOCAB.get(preset, 32000))


def hope_preset(preset: str, checkpointing: bool = False):
    """Hope `preset`; `checkpointing`: with activation checkpointing per block and span (`hope-hf train
    --gradient-checkpointing`), which recomputes each span's block forward in backward instead of saving it."""
    model = HopeForCausalLM(preset_config(preset))
    if checkpointing:
        model.activation_checkpointing_enable()
    return model


def llama_matching(preset: str, max_len: int):
    return matched_llama(preset_config(preset), max_len)


def train_memory(build, seq_len: int, batch_size: int = 1) -> dict:
    """Memory of one forward + backward (next-token loss) on CPU of the model `build()` makes (a picklable factory),
    in a fresh process (`memory_in_fresh_process`): the activations saved for backward (exact, from autograd's
    saved-tensor hooks) and the peak RSS of the step above the level before it (what the allocator really touched:
    activations, gradients, temporaries), each also per token."""
    n = batch_size * seq_len
    saved, rss = memory_in_fresh_process(build, seq_len, batch_size)
    per = lambda b: None if b is None else b / n  # noqa: E731
    return {"saved_activations_bytes": saved, "saved_activations_bytes_per_token": per(saved),
            "peak_rss_above_start_bytes": rss, "peak_rss_above_start_bytes_per_token": per(rss)}


def train_throughput(model, seq_len: int, batch_size: int, iters: int, budget_s: float, device="cpu",
                     autocast_dtype=None, flops: bool = True) -> dict:
    """Forward + backward (next-token loss) on random ids; no optimizer step. The untimed warm-up call counts the
    FLOPs (`flops=True`; achieved FLOP/s = counted FLOPs / median time), else its duration is `first_call_s`."""
    loss = next_token_loss(model, seq_len, batch_size, device)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            value = loss()
        value.backward()

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    counted = count_flops(step) if flops else step()
    _sync(device)
    first = time.perf_counter() - start
    times = time_iters(step, iters, budget_s, warmup=False, device=device)
    med = statistics.median(times)
    row = {"seq_len_tokens": seq_len, "batch_size": batch_size, "timed_iters": len(times), "times_s": times,
           "median_s": med, "tokens_per_s": batch_size * seq_len / med}
    if flops:
        row.update(flops_per_step=counted, achieved_flops_per_s=counted / med)
    else:                         # the untimed first call, e.g. the one that compiles
        row["first_call_s"] = first
    if cuda:
        row["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    return row


def compiled_throughput(build, seq_len: int, batch_size: int, iters: int, budget_s: float, device="cpu",
                        autocast_dtype=None, count_aten=False) -> dict:
    """`train_throughput` of `build()` with its blocks compiled (`compile_blocks`, what `hope-hf train --compile`
    does); the first call, which compiles (or loads torch's compile cache), is timed separately as `first_call_s`.
    `count_aten`: also `aten_calls` (the aten operators left outside inductor's generated kernels)."""
    torch._dynamo.reset()    # each case compiles afresh: earlier cases' graphs count towards the recompile limit
    torch.manual_seed(0)
    model = build().to(device).compile_blocks()
    r = train_throughput(model, seq_len, batch_size, iters, budget_s, device, autocast_dtype, flops=False)
    return {**r, **(aten_calls(model, seq_len, batch_size, device) if count_aten else {})}


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


@contextlib.contextmanager
def busy_process(on: bool = True):
    """One CPU-bound background process (`python -c "while True: pass"`) while the block runs: the shared machine a
    user trains on (README "Threads"). Yields {"command", and at the end "cpu_s": the CPU seconds it used}, or None
    when `on` is false."""
    if not on:
        yield None
        return
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    info = {"command": "python -c 'while True: pass'"}
    try:
        yield info
    finally:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(proc.pid).cpu_times()
            info["cpu_s"] = times.user + times.system
        proc.kill()
        proc.wait()


def at_peak_ratio(row: dict, peak: dict) -> float:
    """Hope / Llama tokens/s if every Hope FLOP ran at the measured matmul peak, against Llama as measured: the most an
    implementation doing these FLOPs could reach on this machine."""
    return row["llama"]["median_s"] / (row["hope"]["flops_per_step"] / peak["flops_per_s"])


def plot(rows: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['preset']} @ {r['seq_len_tokens']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) + 2.0), 4.5))
    for offset, key, color in ((-0.2, "hope", "tab:blue"), (0.2, "llama", "tab:orange")):
        values = [r.get(key, r.get("hope_ckpt"))["tokens_per_s"] for r in rows]
        bars = ax.bar([i + offset for i in x], values, width=0.4, color=color,
                      hatch=[None if key in r else "//" for r in rows],
                      label=f"{key.capitalize()} (fwd+bwd" + ("; hatched: with activation checkpointing)"
                                                            if key == "hope" else ")"))
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
    ax.set_xticks(list(x), labels)
    ax.set_yscale("log")
    speeds = [r.get(k, r.get("hope_ckpt"))["tokens_per_s"] for r in rows for k in ("hope", "llama")]
    ax.set_ylim(min(speeds) / 2, max(speeds) * 10)  # head room for the legend
    ax.set_ylabel("training tokens / s (log scale)")
    ax.set_title(f"Hope vs parameter-matched Llama, CPU, {torch.get_num_threads()} threads", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def percent(fraction: float) -> str:
    """A percentage that still shows something when it is tiny (Hope on a GPU: 0.03% of the bf16 peak)."""
    return f"{fraction:.1%}" if fraction >= 1e-3 else f"{fraction:.3%}"


def markdown(results: dict) -> str:
    peak = results["matmul_peak"]
    header = ("| preset | tokens | Hope params | Llama params | Hope tok/s | Llama tok/s | Hope / Llama "
              "| Hope % of peak | Llama % of peak | Hope / Llama aten calls per token "
              "| Hope / Llama activations KiB per token | Hope / Llama peak RSS MiB |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["throughput"]:
        h, l_ = r["hope"], r["llama"]
        lines.append(f"| {r['preset']} | {r['seq_len_tokens']} | {h['params'] / 1e6:.2f}M | {l_['params'] / 1e6:.2f}M "
                     f"| {h['tokens_per_s']:,.0f} | {l_['tokens_per_s']:,.0f} "
                     f"| {r['hope_over_llama_tokens_per_s']:.3f}x "
                     f"| {percent(h['fraction_of_matmul_peak'])} | {percent(l_['fraction_of_matmul_peak'])} | "
                     + (f"{h['aten_calls_per_token']:.0f} / {l_['aten_calls_per_token']:.1f} |"
                        if "aten_calls_per_token" in h else "- |")
                     + (f" {h['saved_activations_bytes_per_token'] / 1024:.1f} / "
                        f"{l_['saved_activations_bytes_per_token'] / 1024:.1f} |"
                        if h.get("saved_activations_bytes") and l_.get("saved_activations_bytes") else " - |")
                     + (f" {h['peak_rss_above_start_bytes'] / MIB:,.0f} / "
                        f"{l_['peak_rss_above_start_bytes'] / MIB:,.0f} |"
                        if h.get("peak_rss_above_start_bytes") is not None
                        and l_.get("peak_rss_above_start_bytes") is not None else " - |"))
    ckpt = [r for r in results["throughput"] + results.get("checkpointed_only", []) if "hope_ckpt" in r]
    if ckpt:
        lines += ["\nHope with activation checkpointing (`--gradient-checkpointing`: each span's block forward is "
                  "checkpointed, and groups of ~sqrt(#spans) spans around them; the training loss keeps no logits "
                  "for backward):\n",
                  "| preset | tokens | Hope ckpt tok/s | Hope ckpt / Llama tok/s | compiled blocks: tok/s / Llama "
                  "(first call s) | Hope ckpt / Llama activations KiB per token | Hope ckpt peak RSS MiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in ckpt:
            c, l_, cc = r["hope_ckpt"], r["llama"], r.get("hope_ckpt_compiled")
            lines.append(f"| {r['preset']} | {r['seq_len_tokens']} | {c['tokens_per_s']:,.0f} "
                         f"| {r['hope_ckpt_over_llama_tokens_per_s']:.3f}x | "
                         + (f"{cc['tokens_per_s']:,.0f} / {r['hope_ckpt_compiled_over_llama_tokens_per_s']:.3f}x "
                            f"({cc['first_call_s']:.0f}) | " if cc else "- | ")
                         + (f"{c['saved_activations_bytes_per_token'] / 1024:.1f} / "
                            f"{l_['saved_activations_bytes_per_token'] / 1024:.1f} "
                            f"({r['hope_ckpt_over_llama_saved_activations']:.2f}x) |"
                            if "hope_ckpt_over_llama_saved_activations" in r else " - |")
                         + (f" {c['peak_rss_above_start_bytes'] / MIB:,.0f} |"
                            if c.get("peak_rss_above_start_bytes") is not None else " - |"))
    comp = [r for r in results["throughput"] if "hope_compiled" in r]
    if comp:
        how = results["settings"].get("compiled", "compile_memories")     # (runs before 2026-12-06: memories)
        lines += [f"\nHope with compiled {how.split('_')[1]} (`{how}`, regional torch.compile"
                  + ("; what `hope-hf train --compile` does" if how == "compile_blocks" else "")
                  + "; the first call compiles, or loads torch's compile cache):\n",
                  "| preset | tokens | Hope compiled tok/s | compiled / eager Hope | compiled / Llama | % of peak "
                  "| aten calls per token | first call s |", "|---|---|---|---|---|---|---|---|"]
        for r in comp:
            c = r["hope_compiled"]
            lines.append(f"| {r['preset']} | {r['seq_len_tokens']} | {c['tokens_per_s']:,.0f} "
                         f"| {c['tokens_per_s'] / r['hope']['tokens_per_s']:.2f}x "
                         f"| {r['hope_compiled_over_llama_tokens_per_s']:.3f}x "
                         f"| {percent(c['fraction_of_matmul_peak'])} "
                         + (f"| {c['aten_calls_per_token']:.1f} " if "aten_calls_per_token" in c else "| - ")
                         + f"| {c['first_call_s']:.0f} |")
    split = [r for r in results["throughput"] if "forward_flops" in r["hope"] and "forward_flops" in r["llama"]]
    if split:
        lines += ["\nForward FLOPs per token (millions; FlopCounterMode, one training-mode forward): where Hope's go, "
                  "and Llama's total:\n",
                  "| preset | tokens | Hope total | memories | CMS MLPs | CMS in-context updates | LM head + teach "
                  "signals | Llama total | Hope / Llama |", "|---|---|---|---|---|---|---|---|---|"]
        for r in split:
            h, total_l = r["hope"]["forward_flops"], r["llama"]["forward_flops"]["total_per_token"]
            parts = ("memory_per_token", "cms_mlp_per_token", "cms_updates_per_token", "head_and_teach_per_token")
            lines.append(f"| {r['preset']} | {r['seq_len_tokens']} | {h['total_per_token'] / 1e6:.1f} | "
                         + " | ".join(f"{h[k] / 1e6:.1f} ({h[k] / h['total_per_token']:.0%})" for k in parts)
                         + f" | {total_l / 1e6:.1f} | {h['total_per_token'] / total_l:.2f}x |")
    bounds = [r for r in results["throughput"] if "hope_over_llama_tokens_per_s_at_peak" in r]
    if bounds:
        lines += ["\nWhat the FLOPs allow: Hope / Llama tokens/s if every Hope FLOP ran at the measured matmul peak "
                  "and Llama as measured (`hope_over_llama_tokens_per_s_at_peak`); a target above it is out of reach "
                  "on this machine for any implementation that does these FLOPs:\n",
                  "| preset | tokens | Hope / Llama FLOPs per step | Llama % of peak | Hope / Llama at Hope's peak "
                  "| measured eager | measured compiled |", "|---|---|---|---|---|---|---|"]
        for r in bounds:
            lines.append(f"| {r['preset']} | {r['seq_len_tokens']} "
                         f"| {r['hope']['flops_per_step'] / r['llama']['flops_per_step']:.2f}x "
                         f"| {percent(r['llama']['fraction_of_matmul_peak'])} "
                         f"| {r['hope_over_llama_tokens_per_s_at_peak']:.2f}x "
                         f"| {r['hope_over_llama_tokens_per_s']:.3f}x | "
                         + (f"{r['hope_compiled_over_llama_tokens_per_s']:.3f}x |"
                            if "hope_compiled_over_llama_tokens_per_s" in r else "- |"))
    t = results["targets"]
    lines.append(f"\nMeasured dense-matmul peak: {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peak['dtype']}, "
                 f"{peak['n']}x{peak['n']}). Targets: Hope / Llama >= {t['hope_over_llama_tokens_per_s_at_2048']} at "
                 f"2048 tokens and > {t['hope_over_llama_tokens_per_s_at_8192']} at 8192; >= "
                 f"{t['fraction_of_matmul_peak']:.0%} of the matmul peak"
                 + (f"; activations saved for backward per token <= {t['hope_over_llama_saved_activations']}x "
                    f"Llama's; peak RSS of one fwd+bwd (above the level before it) of small at 8192 tokens <= "
                    f"{t['small_peak_rss_at_8192_bytes'] / 2 ** 30:.0f} GiB" if "hope_over_llama_saved_activations" in t
                    else "") + ".")
    s = results.get("memory_impl_speedup")
    if s:
        lines.append(f"\nChunk-parallel memories vs the token-by-token reference (Hope tiny, forward, "
                     f"{s['seq_len_tokens']} tokens): fast {s['fast_median_s']:.3f} s, reference "
                     f"{s['reference_median_s']:.3f} s -> **{s['speedup_x']:.1f}x** (target >= "
                     f"{t['fast_over_reference_speedup_at_1024']:.0f}x at 1024)"
                     + (f" ({s['note']})" if s["note"] else ""))
    for sk in results.get("skipped", []):
        lines.append(f"\nNot measured: {sk['preset']} at {sk['seq_len_tokens']} tokens ({sk['reason']})"
                     + (f"; measured there: {sk['measured']}." if "measured" in sk else "."))
    lines += [f"\nNote: {note}" for note in results.get("notes", [])]
    m = results["machine"]
    bg = results["settings"].get("background_process")
    if bg:
        lines.append(f"\nMeasured next to one busy background process (`{bg['command']}`) on purpose: it used "
                     f"{bg.get('cpu_s', float('nan')) / results['wall_time_s']:.2f} of {m['cpu_count']} CPUs on "
                     f"average.")
    elif m.get("other_processes_avg_cores_busy", 0) > 0.1:
        lines.append(f"\nWARNING: other processes kept {m['other_processes_avg_cores_busy']:.2f} of {m['cpu_count']} "
                     f"CPUs busy on average during the run; Hope's many small ops slow down far more than Llama's "
                     f"under such contention, so rerun on an idle machine")
    return "\n".join(lines)


def run(presets=("tiny", "small"), lengths=(512, 2048, 8192), ref_len=1024, iters=3, budget_s=60.0, batch_size=1,
        out="benchmarks/results", quick=False, device="cpu", autocast_dtype=None, name="speed",
        reference=True, skip=None, aten_max_len=512, contention=False, compiled=True) -> dict:
    """Run every case, write `<out>/<name>.json` and `<out>/<name>.png`, return the results.

    Each model's FLOPs are counted in the untimed warm-up call at every length; `peak` is a dense matmul measured
    in the same run, in the dtype the models compute in (float32, or `autocast_dtype`). aten calls per token
    (`aten_calls`) are counted at lengths <= `aten_max_len` (the profiler keeps every event in memory). On CPU,
    `train_memory` (saved activations and peak RSS, in a fresh process) per case. `contention`: every case runs next to
    one busy background process (`busy_process`). `compiled`: Hope is also measured with compiled blocks
    (`compiled_throughput`)."""
    bench = Run()
    peak = matmul_peak_flops(device, autocast_dtype or torch.float32)
    skip = SKIP if skip is None and torch.device(device).type == "cpu" else (skip or {})
    rows, skipped, checkpointed_only = [], [], []
    progress = tqdm(total=len(presets) * len(lengths), desc=name)
    with busy_process(contention) as background:
        for preset in presets:
            torch.manual_seed(0)
            hope = hope_preset(preset).to(device)
            torch.manual_seed(0)
            llama = llama_matching(preset, max(lengths)).to(device)
            torch.manual_seed(0)
            hope_ckpt = hope_preset(preset, checkpointing=True).to(device)
            builders = {"hope": functools.partial(hope_preset, preset),
                        "llama": functools.partial(llama_matching, preset, max(lengths)),
                        "hope_ckpt": functools.partial(hope_preset, preset, checkpointing=True)}
            for seq_len in lengths:
                eager = (preset, seq_len) not in skip
                if not eager:
                    reason, checkpointed = skip[(preset, seq_len)]
                    skipped.append({"preset": preset, "seq_len_tokens": seq_len, "reason": reason,
                                    **({"measured": "Llama and Hope with activation checkpointing only"}
                                       if checkpointed else {})})
                    if not checkpointed:
                        progress.update()
                        continue
                row = {"preset": preset, "seq_len_tokens": seq_len}
                for key, model in (("hope", hope), ("llama", llama), ("hope_ckpt", hope_ckpt))[0 if eager else 1:]:
                    cfg = model.config
                    # no FlopCounterMode around checkpointed steps: under it small at 2048 tokens peaked at 12.4 GiB
                    # RSS instead of 2.3; their FLOPs are eager Hope's (model FLOPs: recomputation not counted)
                    with malloc_for(model):
                        r = train_throughput(model, seq_len, batch_size, iters, budget_s, device, autocast_dtype,
                                             flops=key != "hope_ckpt")
                    if key == "hope_ckpt" and "hope" in row:
                        r["flops_per_step"] = row["hope"]["flops_per_step"]
                        r["achieved_flops_per_s"] = r["flops_per_step"] / r["median_s"]
                    if "achieved_flops_per_s" in r:
                        r["fraction_of_matmul_peak"] = r["achieved_flops_per_s"] / peak["flops_per_s"]
                    if key != "hope_ckpt":
                        split = forward_flops(model, seq_len, batch_size, device)
                        r["forward_flops"] = split if key == "hope" else {"total_per_token": split["total_per_token"]}
                    if seq_len <= aten_max_len and key != "hope_ckpt":
                        r.update(aten_calls(model, seq_len, batch_size, device))
                    if torch.device(device).type == "cpu":
                        r.update(train_memory(builders[key], seq_len, batch_size))
                    row[key] = {"params": n_params(model), "hidden_size": cfg.hidden_size,
                                "num_hidden_layers": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
                                "tie_word_embeddings": cfg.tie_word_embeddings,
                                **({"intermediate_size": cfg.intermediate_size} if key == "llama" else {}), **r}
                if compiled and eager:
                    c = compiled_throughput(builders["hope"], seq_len, batch_size, iters, budget_s, device,
                                            autocast_dtype, count_aten=seq_len <= aten_max_len)
                    c["achieved_flops_per_s"] = row["hope"]["flops_per_step"] / c["median_s"]   # eager's FLOPs
                    c["fraction_of_matmul_peak"] = c["achieved_flops_per_s"] / peak["flops_per_s"]
                    row["hope_compiled"] = c
                if compiled and not eager:    # where only checkpointing fits: `--compile --gradient-checkpointing`
                    with malloc_for(hope_ckpt):
                        row["hope_ckpt_compiled"] = compiled_throughput(builders["hope_ckpt"], seq_len, batch_size,
                                                                        iters, budget_s, device, autocast_dtype)
                row["param_ratio_llama_over_hope"] = row["llama"]["params"] / row["hope_ckpt"]["params"]
                if "flops_per_step" in row.get("hope", {}):
                    row["hope_over_llama_tokens_per_s_at_peak"] = at_peak_ratio(row, peak)
                for key in (k for k in ("hope", "hope_ckpt", "hope_compiled", "hope_ckpt_compiled") if k in row):
                    row[f"{key}_over_llama_tokens_per_s"] = row[key]["tokens_per_s"] / row["llama"]["tokens_per_s"]
                    if row[key].get("saved_activations_bytes") and row["llama"].get("saved_activations_bytes"):
                        row[f"{key}_over_llama_saved_activations"] = (row[key]["saved_activations_bytes"]
                                                                      / row["llama"]["saved_activations_bytes"])
                (rows if eager else checkpointed_only).append(row)
                write_results(out, name + ".partial", {"throughput": rows, "checkpointed_only": checkpointed_only,
                                                       "skipped": skipped})   # kept if the run is killed
                progress.update()
            del hope, llama, hope_ckpt
    progress.close()
    results = {"settings": {"quick": quick, "batch_size": batch_size, "max_timed_iters": iters,
                            "per_case_budget_s": budget_s, "device": str(device),
                            "dtype": "float32" if autocast_dtype is None else f"autocast {autocast_dtype}",
                            "warmup": "one untimed fwd+bwd per model and length, under FlopCounterMode",
                            "background_process": background, "compiled": "compile_blocks",
                            "allocator": {k: os.environ.get(k) for k in ALLOCATOR_ENV},
                            "memory_child_allocator": {k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items()},
                            "checkpointed_mmap_threshold": LEAN_MMAP_THRESHOLD},
               "targets": {"hope_over_llama_tokens_per_s_at_2048": 0.8, "hope_over_llama_tokens_per_s_at_8192": 1.0,
                           "tiny_hope_over_llama_tokens_per_s": 0.5, "tiny_aten_calls_per_token": 20,
                           "fraction_of_matmul_peak": 0.4, "fast_over_reference_speedup_at_1024": 10.0,
                           "hope_over_llama_saved_activations": 1.5, "small_peak_rss_at_8192_bytes": 8 * 2 ** 30},
               "matmul_peak": peak, "throughput": rows, "checkpointed_only": checkpointed_only,
               "skipped": skipped}
    if reference:
        results["memory_impl_speedup"] = memory_impl_speedup(ref_len, iters, budget_s)
    bench.finish(results)
    write_results(out, name, results, lambda res, path: plot(res["throughput"] + res["checkpointed_only"], path))
    Path(out, name + ".partial.json").unlink(missing_ok=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset at 512 and 2048 tokens, fewer iterations")
    parser.add_argument("--out",
                        help="folder for <name>.json and .png (default benchmarks/results, --quick: .../quick)")
    parser.add_argument("--presets", nargs="+", help="Hope presets (default tiny small)")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 512 2048 8192)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    parser.add_argument("--name", default="speed", help="result file name")
    parser.add_argument("--no-reference", action="store_true", help="skip the fast-vs-reference comparison")
    parser.add_argument("--threads", type=int, help="torch threads (default: BENCH_THREADS, else cores - 1)")
    parser.add_argument("--aten-max-len", type=int, default=512,
                        help="count aten calls (torch.profiler) at lengths up to this (0: never; slow on a GPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip Hope with compiled blocks")
    parser.add_argument("--contention", action="store_true",
                        help="run every case next to one busy background process (default name speed_contention)")
    args = parser.parse_args(argv)
    tune_allocator()                                                  # as `hope-hf train` (README "Allocator")
    if args.threads:
        os.environ["BENCH_THREADS"] = str(args.threads)               # read by common.Run
    args.out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    kw = dict(QUICK) if args.quick else {}
    kw.update({k: v for k, v in (("presets", args.presets and tuple(args.presets)),
                                 ("lengths", args.lengths and tuple(args.lengths))) if v})
    name = "speed_contention" if args.contention and args.name == "speed" else args.name
    results = run(out=args.out, batch_size=args.batch_size, device=args.device, name=name,
                  autocast_dtype=torch.bfloat16 if args.bf16 else None, reference=not args.no_reference,
                  contention=args.contention, compiled=not args.no_compile, aten_max_len=args.aten_max_len, **kw)
    print(markdown(results))
    print(f"\nwall time {results['wall_time_s']:.0f} s; wrote {Path(args.out) / (name + '.json')}")


QUICK = {"presets": ("tiny",), "lengths": (512, 2048), "ref_len": 256, "iters": 2, "budget_s": 20.0, "quick": True}

if __name__ == "__main__":
    main()
