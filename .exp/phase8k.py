import sys, time, torch
from hope_hf.cli import tune_allocator
tune_allocator()
from benchmarks import speed
torch.set_num_threads(1)
def rss():
    return {k: round(speed._rss_kib(k) / 2**20, 2) for k in ("VmRSS", "VmHWM")}
L = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
which = sys.argv[2:] or ["llama", "llama_fwdflops", "hope_ckpt"]
torch.manual_seed(0); llama = speed.llama_matching("small", L)
torch.manual_seed(0); hope_ckpt = speed.hope_preset("small", checkpointing=True)
print("built", rss(), flush=True)
for w in which:
    t = time.perf_counter()
    if w == "llama":
        r = speed.train_throughput(llama, L, 1, 1, 1.0)
    elif w == "llama_noflops":
        r = speed.train_throughput(llama, L, 1, 1, 1.0, flops=False)
    elif w == "llama_fwdflops":
        r = speed.forward_flops(llama, L)
    elif w == "hope_ckpt":
        r = speed.train_throughput(hope_ckpt, L, 1, 1, 1.0)
    elif w == "hope_ckpt_noflops":
        r = speed.train_throughput(hope_ckpt, L, 1, 1, 1.0, flops=False)
    print(w, round(time.perf_counter() - t), rss(), flush=True)
