"""Short CUDA check: bf16 training smoke test and Hope vs Llama throughput/decode on one GPU.

    python -m benchmarks.gpu_smoke --out DIR

Writes DIR/gpu_smoke.json. Everything is measured in this run (CUDA events are avoided: wall clock after synchronize).
"""

import argparse
import json
import math
import time

import torch
import transformers

from benchmarks.common import matched_llama, n_params
from hope_hf import HopeConfig, HopeForCausalLM


def sync_time(fn, iters):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def train_tps(model, seq_len, batch):
    ids = torch.randint(3, model.config.vocab_size, (batch, seq_len), device="cuda")

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
    return batch * seq_len / sync_time(step, 3)


@torch.no_grad()
def decode_ms(model, prompt_len, new_tokens=32):
    ids = torch.randint(3, model.config.vocab_size, (1, prompt_len), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=tok, past_key_values=cache, use_cache=True)
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t) / new_tokens


def bf16_smoke(steps=40):
    torch.manual_seed(0)
    model = HopeForCausalLM(HopeConfig.from_preset("tiny", vocab_size=64)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        seq = torch.randint(3, 64, (16, 64), device="cuda")
        x = torch.cat([seq, seq], 1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return {"steps": steps, "first_loss": losses[0], "last_loss": losses[-1],
            "all_finite": all(math.isfinite(x) for x in losses)}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "transformers": transformers.__version__, "bf16_smoke": bf16_smoke()}
    print(res, flush=True)
    cfg = HopeConfig.from_preset("small", vocab_size=32000)
    hope = HopeForCausalLM(cfg).cuda()
    llama = matched_llama(cfg, 4096).cuda()
    res["params"] = {"hope_small": n_params(hope), "llama_matched": n_params(llama)}
    res["train_tokens_per_s_bf16_autocast"] = {
        f"{name}@{L}": train_tps(m, L, 4) for name, m in (("hope_small", hope), ("llama", llama)) for L in (512, 2048)}
    print(res, flush=True)
    hope.eval(), llama.eval()
    res["decode_ms_per_token"] = {f"{name}@{L}": decode_ms(m, L) for name, m in (("hope_small", hope), ("llama", llama))
                                  for L in (256, 2048)}
    print(res, flush=True)
    with open(f"{args.out}/gpu_smoke.json", "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
