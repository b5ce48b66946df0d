"""Decode benchmark: ms per generated token after a prompt of N tokens, and the bytes of state each model holds,
Hope vs a parameter-matched LlamaForCausalLM (its KV cache), in one run.

    python -m benchmarks.decode [--quick] [--preset tiny] [--out benchmarks/results]

Writes `<out>/decode.json` and `<out>/decode.png` (committed results for `small` are renamed decode_small.*).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import machine_info, matched_llama, n_params
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.cache_hope import tree_map


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
def decode(model, prompt_len: int, new_tokens: int, chunk: int = 4096) -> dict:
    """Prefill `prompt_len` random tokens (in pieces of `chunk`, carrying the cache), then time greedy steps."""
    model.eval()
    ids = torch.randint(3, model.config.vocab_size, (1, prompt_len))
    cache, out = None, None
    for s in range(0, prompt_len, chunk):
        kw = {"past_key_values": cache} if cache is not None else {}
        out = model(input_ids=ids[:, s:s + chunk], use_cache=True, logits_to_keep=1, **kw)
        cache = out.past_key_values
    tok = out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(new_tokens):
        t = time.perf_counter()
        out = model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
        times.append(time.perf_counter() - t)
        cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times.sort()
    return {"prompt_tokens": prompt_len, "ms_per_token_median": 1000 * times[len(times) // 2],
            "state_bytes": state_bytes(cache)}


def run(preset="tiny", lengths=(256, 2048, 8192, 32768), new_tokens=16, out_dir=Path("benchmarks/results")):
    torch.manual_seed(0)
    config = HopeConfig.from_preset(preset, vocab_size=2048 if preset == "tiny" else 32000)
    hope = HopeForCausalLM(config)
    llama = matched_llama(config, max(lengths) + new_tokens + 1)
    res = {"machine": machine_info(), "preset": preset, "new_tokens": new_tokens,
           "params": {"hope": n_params(hope), "llama": n_params(llama)}, "rows": []}
    for L in tqdm(lengths, desc="decode"):
        res["rows"].append({"prompt_tokens": L, "hope": decode(hope, L, new_tokens), "llama": decode(llama, L, new_tokens)})
    h = {r["prompt_tokens"]: r["hope"] for r in res["rows"]}
    ll = {r["prompt_tokens"]: r["llama"] for r in res["rows"]}
    res["hope_ms_ratio_longest_over_shortest"] = h[max(h)]["ms_per_token_median"] / h[min(h)]["ms_per_token_median"]
    if 8192 in h:
        res["hope_state_over_llama_kv_at_8192"] = h[8192]["state_bytes"] / ll[8192]["state_bytes"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "decode.json").write_text(json.dumps(res, indent=2))
    plot(res, out_dir / "decode.png")
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
    p.add_argument("--quick", action="store_true")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    lengths = (256, 2048) if args.quick else (256, 2048, 8192, 32768)
    res = run(args.preset, lengths, 8 if args.quick else 16, args.out)
    for r in res["rows"]:
        print(f"{r['prompt_tokens']:>6} tokens: Hope {r['hope']['ms_per_token_median']:.2f} ms/token, "
              f"{r['hope']['state_bytes'] / 2**20:.2f} MiB | Llama {r['llama']['ms_per_token_median']:.2f} ms/token, "
              f"{r['llama']['state_bytes'] / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
