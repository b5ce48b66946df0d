"""One-off: recount Llama's FLOPs in speed JSONs with the causal attention formula (data patch; timings kept)."""
import json, sys, torch
from benchmarks import speed

for path in sys.argv[1:]:
    d = json.load(open(path))
    peak = d["matmul_peak"]["flops_per_s"]
    lengths = [r["seq_len_tokens"] for r in d["throughput"] + d.get("checkpointed_only", [])]
    for r in d["throughput"] + d.get("checkpointed_only", []):
        llama = speed.llama_matching(r["preset"], max(lengths))
        n, b = r["seq_len_tokens"], r["llama"]["batch_size"]
        loss = speed.next_token_loss(llama, n, b)
        def step():
            llama.zero_grad(set_to_none=True)
            loss().backward()
        old = r["llama"]["flops_per_step"]
        new = speed.count_flops(step)
        l = r["llama"]
        l["flops_per_step"] = new
        l["achieved_flops_per_s"] = new / l["median_s"]
        l["fraction_of_matmul_peak"] = l["achieved_flops_per_s"] / peak
        if "forward_flops" in l:
            l["forward_flops"]["total_per_token"] = speed.forward_flops(llama, n, b)["total_per_token"]
        if "hope" in r and "hope_ckpt" in r:
            h = r["hope_ckpt"]
            h["flops_per_step"] = r["hope"]["flops_per_step"]
            h["achieved_flops_per_s"] = h["flops_per_step"] / h["median_s"]
            h["fraction_of_matmul_peak"] = h["achieved_flops_per_s"] / peak
        print(path, r["preset"], n, old, "->", new, f"{l['fraction_of_matmul_peak']:.3f}", flush=True)
        del llama
    open(path, "w").write(json.dumps(d, indent=1) + "\n")
