"""Decode benchmark: ms per generated token after a prompt of N tokens, and the bytes of state each model holds,
Hope vs a parameter-matched LlamaForCausalLM (its KV cache), in one run.

    python -m benchmarks.decode [--quick] [--preset tiny] [--out benchmarks/results]

Writes `<out>/decode_<preset>.json` and `<out>/decode_<preset>.png`. Targets: Hope's ms/token flat within 10% from
the shortest to the longest prompt; Hope's state <= 5% of Llama's KV cache at 8192 tokens.
"""

import argparse
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
from hope_hf.cache_hope import tree_map
from hope_hf.modeling_hope import CACHE_FIELD  # the cache's keyword and output field (`cache` on transformers >= 5.24)


def state_bytes(cache) -> int:
    """Bytes of distinct tensor storage held by a cache (Hope: every fast state; Llama: the KV tensors)."""
    seen, total = set(), 0

    def visit(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += key[1]
        return t
    if hasattr(cache, "model_state"):
        tree_map(visit, cache.model_state)
        for layer in cache.layers:
            tree_map(visit, layer.state)
    else:
        for layer in cache.layers:
            tree_map(visit, [layer.keys, layer.values])
    return total


@torch.no_grad()
def decode(model, prompt_len: int, new_tokens: int, chunk: int = 4096, device="cpu", autocast_dtype=None) -> dict:
    """Prefill `prompt_len` random tokens (in pieces of `chunk`, carrying the cache), then time greedy steps."""
    model.eval()
    ids = torch.randint(3, model.config.vocab_size, (1, prompt_len), device=device)
    cache, out = None, None
    cuda = torch.device(device).type == "cuda"
    with torch.autocast(torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for s in range(0, prompt_len, chunk):
            kw = {CACHE_FIELD: cache} if cache is not None else {}
            out = model(input_ids=ids[:, s:s + chunk], use_cache=True, logits_to_keep=1, **kw)
            cache = getattr(out, CACHE_FIELD)
        tok = out.logits[:, -1:].argmax(-1)
        times = []
        for _ in range(new_tokens):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = model(input_ids=tok, use_cache=True, logits_to_keep=1, **{CACHE_FIELD: cache})
            cache, tok = getattr(out, CACHE_FIELD), out.logits[:, -1:].argmax(-1)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    times.sort()
    return {"prompt_tokens": prompt_len, "ms_per_token_median": 1000 * times[len(times) // 2],
            "state_bytes": state_bytes(cache)}


QUICK = {"lengths": (256, 2048), "new_tokens": 8}  # --quick: short prompts, fewer timed tokens


def run(preset="tiny", lengths=(256, 2048, 8192, 32768), new_tokens=16, out_dir=RESULTS,
        quick=False, device="cpu", autocast_dtype=None, name=None):
    bench = Run()
    torch.manual_seed(0)
    config = HopeConfig.from_preset(preset, vocab_size=2048 if preset == "tiny" else 32000)
    hope = HopeForCausalLM(config).to(device)
    llama = matched_llama(config, max(lengths) + new_tokens + 1).to(device)
    res = {"quick": quick, "preset": preset, "new_tokens": new_tokens, "device": str(device),
           "dtype": "float32" if autocast_dtype is None else f"autocast {autocast_dtype}",
           "targets": {"hope_ms_ratio_longest_over_shortest": 1.1, "hope_state_over_llama_kv_at_8192": 0.05},
           "params": {"hope": n_params(hope), "llama": n_params(llama)}, "rows": []}
    for L in tqdm(lengths, desc="decode"):
        row = {k: decode(m, L, new_tokens, device=device, autocast_dtype=autocast_dtype)
               for k, m in (("hope", hope), ("llama", llama))}
        res["rows"].append({"prompt_tokens": L, **row})
    h = {r["prompt_tokens"]: r["hope"] for r in res["rows"]}
    ll = {r["prompt_tokens"]: r["llama"] for r in res["rows"]}
    res["hope_ms_ratio_longest_over_shortest"] = h[max(h)]["ms_per_token_median"] / h[min(h)]["ms_per_token_median"]
    if 8192 in h:
        res["hope_state_over_llama_kv_at_8192"] = h[8192]["state_bytes"] / ll[8192]["state_bytes"]
    write_results(out_dir, name or f"decode_{preset}", bench.finish(res), plot)
    return res


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    L = [r["prompt_tokens"] for r in res["rows"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("hope", "llama"):
        a.plot(L, [r[name]["ms_per_token_median"] for r in res["rows"]], "o-", label=name)
        b.plot(L, [r[name]["state_bytes"] / 2**20 for r in res["rows"]], "o-", label=name)
    for ax, yl in ((a, "ms per generated token"), (b, "state held (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(yl)
        ax.legend()
    fig.suptitle(f"Decode, {res['preset']} (Hope {res['params']['hope'] / 1e6:.2f}M vs Llama "
                 f"{res['params']['llama'] / 1e6:.2f}M params)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="prompts of 256 and 2048 tokens, 8 new tokens")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--lengths", type=int, nargs="+", help="prompt lengths (default 256 2048 8192 32768)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--name", help="result file name (default decode_<preset>)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results, --quick: .../quick)")
    args = p.parse_args(argv)
    args.out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    kw = dict(QUICK) if args.quick else {}
    if args.lengths:
        kw["lengths"] = tuple(args.lengths)
    res = run(args.preset, out_dir=args.out, quick=args.quick, device=args.device,
              autocast_dtype=torch.bfloat16 if args.bf16 else None, name=args.name, **kw)
    print(markdown(res))


def markdown(res: dict) -> str:
    lines = ["| prompt tokens | Hope ms/token | Llama ms/token | Hope state | Llama KV cache |",
             "|---|---|---|---|---|"]
    for r in res["rows"]:
        h, l_ = r["hope"], r["llama"]
        lines.append(f"| {r['prompt_tokens']} | {h['ms_per_token_median']:.2f} | {l_['ms_per_token_median']:.2f} | "
                     f"{h['state_bytes'] / 2**20:.2f} MiB | {l_['state_bytes'] / 2**20:.2f} MiB |")
    t = res.get("targets", {})
    lines.append(f"\nHope's ms/token, longest / shortest prompt: {res['hope_ms_ratio_longest_over_shortest']:.2f}x "
                 f"(target <= {t.get('hope_ms_ratio_longest_over_shortest', 1.1)})."
                 + (f" Hope's state / Llama's KV cache at 8192 tokens: {res['hope_state_over_llama_kv_at_8192']:.1%} "
                    f"(target <= {t.get('hope_state_over_llama_kv_at_8192', 0.05):.0%})."
                    if "hope_state_over_llama_kv_at_8192" in res else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
