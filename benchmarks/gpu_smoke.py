"""Short CUDA check: 40 bf16-autocast training steps of Hope tiny must give finite losses.

    python -m benchmarks.gpu_smoke --out DIR

Writes DIR/gpu_smoke.json. Throughput and decode latency on the GPU are measured by `benchmarks.speed` and
`benchmarks.decode` with `--device cuda --bf16` (see benchmarks/gpu.sh).
"""

import argparse
import json
import math

import torch
import transformers

from hope_hf import HopeConfig, HopeForCausalLM


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
    with open(f"{args.out}/gpu_smoke.json", "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
