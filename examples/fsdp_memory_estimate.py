"""Per-GPU memory of Hope training with and without FSDP, computed from tensor sizes (nothing is run or measured).

    python examples/fsdp_memory_estimate.py --gpus 8 --presets 340m 1.3b --tokens 2048 8192

Static memory: fp32 parameters, gradients and AdamW moments (16 bytes per parameter). DDP keeps all of it on every
GPU; `hope-hf train --fsdp` keeps 1/N of it per GPU and, while a step runs, the gathered bf16 parameters and their
unsharded bf16 gradients (4 bytes per parameter): of the whole model with `--fsdp-units model` (one FSDP unit), of
the root unit (embeddings, tied head, final norm) and at most two `HopeBlock`s (the one running and the one being
gathered next) with `--fsdp-units block`. Fast state, per training
sequence, bf16: the Titans memories (with the projection-memory bank), the conv tail, and per CMS level its
theta = (gate, up, down) and the gradient sum of the current chunk. Backward keeps, roughly, one memory state per
`memory_chunk_size` tokens and one theta plus one gradient sum per CMS commit (T / C_l commits of level l); this
history is per sequence, FSDP does not shard it, and `--tbptt-segments K` divides it by about K. With
`--gradient-checkpointing` (span groups) backward keeps instead one state per group of G ~ sqrt(#spans) spans, and,
while a group is recomputed, one per span of that group: (#groups + G) span states, each the memories, the smallest
level's theta and every level's gradient sum. Ordinary activations (hidden states, logits) come on top. The model is
built on the meta device, so no memory is used.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.utils._pytree import tree_leaves

from hope_hf import HopeConfig, HopeForCausalLM

GiB = 2 ** 30
BF16 = 2


def sizes(preset: str) -> dict:
    """Parameter count and per-layer fast-state element counts of a preset (default vocab size)."""
    config = HopeConfig.from_preset(preset)
    with torch.device("meta"):
        model = HopeForCausalLM(config)
    state = model.model.layers[0].init_state(1, "meta", torch.bfloat16)
    state.pop("cms")
    conv = state.pop("conv").numel()
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    return {"config": config, "params": sum(p.numel() for p in model.parameters()), "block": block, "conv": conv,
            "memory": sum(t.numel() for t in tree_leaves(state)),
            "theta": 3 * config.cms_intermediate_size * config.hidden_size}


def estimate(preset: str, gpus: int, tokens: int) -> dict:
    """GiB per GPU: static (DDP / FSDP) and fast state per sequence (one copy / kept for backward)."""
    s = sizes(preset)
    c, P = s["config"], s["params"]
    levels = c.cms_chunk_sizes
    one = c.num_hidden_layers * (s["memory"] + s["conv"] + len(levels) * 2 * s["theta"]) * BF16
    kept = c.num_hidden_layers * (tokens // c.memory_chunk_size * s["memory"]
                                  + sum(tokens // C * 2 * s["theta"] for C in levels)) * BF16
    spans = tokens // c.span_size
    group = math.isqrt(spans - 1) + 1
    span_state = c.num_hidden_layers * (s["memory"] + (len(levels) + 1) * s["theta"]) * BF16
    kept_groups = (-(-spans // group) + group) * span_state
    gathered_blocks = P - (c.num_hidden_layers - 2) * s["block"]               # root + two blocks
    return {"preset": preset, "params_m": P / 1e6, "tokens": tokens, "ddp": 16 * P / GiB,
            "fsdp": (16 * P / gpus + 4 * P) / GiB, "fsdp_block": (16 * P / gpus + 4 * gathered_blocks) / GiB,
            "state": one / GiB, "kept": kept / GiB,
            "kept_groups": kept_groups / GiB}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--presets", nargs="+", default=["340m", "1.3b"])
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    args = p.parse_args(argv)
    print(f"| preset (params) | tokens/seq | static, DDP | static, FSDP x{args.gpus} (model / block units) | "
          f"fast state, 1 copy/seq | kept for backward/seq | kept, span-group checkpointing |\n"
          f"|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for T in args.tokens:
            e = estimate(preset, args.gpus, T)
            print(f"| {preset} ({e['params_m']:.0f}M) | {T} | {e['ddp']:.1f} GiB | "
                  f"{e['fsdp']:.1f} / {e['fsdp_block']:.1f} GiB | {e['state']:.2f} GiB | ~{e['kept']:.0f} GiB | "
                  f"~{e['kept_groups']:.1f} GiB |")


if __name__ == "__main__":
    main()
