"""Regenerate the README's benchmark section from benchmarks/results/*.json (no number is typed by hand).

    python -m benchmarks.readme
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- benchmarks -->", "<!-- /benchmarks -->"


def speed_section(d):
    m = d["machine"]
    lines = [f"CPU training throughput (forward+backward, batch 1, float32), `python -m benchmarks.speed`, on "
             f"{m['cpu_count']} cores ({m['processor']}, torch {m['torch']}, {m['torch_threads']} threads; other "
             f"processes kept {m.get('other_processes_avg_cores_busy', float('nan')):.2f} cores busy):", "",
             "| preset | tokens | Hope params | Hope tok/s | Llama tok/s (same params) | Hope / Llama |",
             "|---|---|---|---|---|---|"]
    for r in d["throughput"]:
        h, l_ = r["hope"], r["llama"]
        lines.append(f"| {r['preset']} | {r['seq_len_tokens']} | {h['params'] / 1e6:.2f}M | {h['tokens_per_s']:.0f} | "
                     f"{l_['tokens_per_s']:.0f} | {h['tokens_per_s'] / l_['tokens_per_s']:.3f}x |")
    s = d["memory_impl_speedup"]
    lines += ["", f"Chunk-parallel memories vs the token-by-token reference (tiny, forward, {s['seq_len_tokens']} "
              f"tokens): {s['fast_median_s']:.3f} s vs {s['reference_median_s']:.3f} s, **{s['speedup_x']:.1f}x**."]
    return lines


def gpu_section(d):
    t, dec = d["train_tokens_per_s_bf16_autocast"], d["decode_ms_per_token"]
    sm = d["bf16_smoke"]
    lines = ["", f"GPU (`python -m benchmarks.gpu_smoke`, {d['device']}, torch {d['torch']}, bf16 autocast, batch 4): "
             f"bf16 training smoke test {'finite' if sm['all_finite'] else 'NOT finite'} over {sm['steps']} steps "
             f"(loss {sm['first_loss']:.3f} -> {sm['last_loss']:.3f}).", "",
             "| model | train tok/s @512 | train tok/s @2048 | decode ms/token after 256 | after 2048 |",
             "|---|---|---|---|---|"]
    for name in ("hope_small", "llama"):
        lines.append(f"| {name} ({d['params'][name if name != 'llama' else 'llama_matched'] / 1e6:.1f}M) | "
                     f"{t[name + '@512']:.0f} | {t[name + '@2048']:.0f} | {dec[name + '@256']:.1f} | "
                     f"{dec[name + '@2048']:.1f} |")
    return lines


def decode_section(d):
    lines = ["", f"Decode (`python -m benchmarks.decode`, {d['preset']}, CPU, batch 1): ms per generated token after a "
             f"prompt, and the state each model holds (Hope: all fast state; Llama: its KV cache).", "",
             "| prompt tokens | Hope ms/token | Llama ms/token | Hope state | Llama KV cache |", "|---|---|---|---|---|"]
    for r in d["rows"]:
        h, l_ = r["hope"], r["llama"]
        lines.append(f"| {r['prompt_tokens']} | {h['ms_per_token_median']:.2f} | {l_['ms_per_token_median']:.2f} | "
                     f"{h['state_bytes'] / 2**20:.2f} MiB | {l_['state_bytes'] / 2**20:.2f} MiB |")
    lines.append("")
    lines.append(f"Hope's per-token time, longest / shortest prompt: "
                 f"{d['hope_ms_ratio_longest_over_shortest']:.2f}x (target <= 1.1)."
                 + (f" Hope's state / Llama's KV cache at 8192 tokens: {d['hope_state_over_llama_kv_at_8192']:.1%} "
                    "(target <= 5%)." if "hope_state_over_llama_kv_at_8192" in d else ""))
    return lines


def optimizers_section(d):
    from benchmarks.optimizers import markdown

    s = d["setup"]
    return ["", f"Optimizers (`python -m benchmarks.optimizers`, Hope tiny on the embedded corpus, {s['steps']} steps of "
            f"{s['tokens_per_step']} tokens, same initial weights and batches; CMS level 2 stepped every "
            f"{s['cms_outer_periods_steps'][1]} steps):", "", markdown(d)]


def main():
    res = ROOT / "benchmarks" / "results"
    lines = []
    if (res / "speed.json").exists():
        lines += speed_section(json.loads((res / "speed.json").read_text()))
    for path in sorted(res.glob("decode*.json")):
        lines += decode_section(json.loads(path.read_text()))
    if (res / "optimizers.json").exists() and not json.loads((res / "optimizers.json").read_text())["setup"]["quick"]:
        lines += optimizers_section(json.loads((res / "optimizers.json").read_text()))
    if (res / "gpu_smoke.json").exists():
        lines += gpu_section(json.loads((res / "gpu_smoke.json").read_text()))
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, _, rest = text.partition(START)
    tail = rest.partition(END)[2] if END in rest else rest
    readme.write_text(head + START + "\n" + "\n".join(lines) + "\n" + END + tail)


if __name__ == "__main__":
    main()
