"""Session 30: peak RSS (above the level before the step) and time of one checkpointed fwd+bwd of small, lean allocator,
1 thread. usage: PYTHONPATH=. python .exp/s30_rss.py 8192 spans|groups [compiled]"""
import sys, time, threading
from hope_hf.cli import tune_allocator
tune_allocator(lean=True)
import torch
from benchmarks.speed import hope_preset, next_token_loss
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) / 2**20
torch.set_num_threads(1)
T, how = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
model = hope_preset("small", checkpointing=True)
model.model.checkpoint_span_groups = how == "groups"
if "compiled" in sys.argv:
    model.compile_blocks()
    warm = next_token_loss(model, 4096)           # compile at a shorter length (same variants: every level commits), then trim
    t = time.perf_counter(); warm().backward(); model.zero_grad(set_to_none=False); print("warm", round(time.perf_counter() - t), "s")
    import ctypes; ctypes.CDLL("libc.so.6").malloc_trim(0)
loss = next_token_loss(model, T)
base = rss(); trace = []; stop = False
def mon():
    while not stop:
        trace.append((time.perf_counter(), rss())); time.sleep(0.05)
th = threading.Thread(target=mon); th.start()
t0 = time.perf_counter(); l = loss(); t1 = time.perf_counter(); l.backward(); t2 = time.perf_counter()
stop = True; th.join()
f = max(r for t, r in trace if t <= t1); b = max(r for t, r in trace if t > t1)
print(f"T={T} {how} {'compiled' if 'compiled' in sys.argv else 'eager'}: base {base:.2f} GiB; forward peak +{f-base:.2f} GiB ({t1-t0:.0f}s), backward peak +{b-base:.2f} GiB ({t2-t1:.0f}s), step {t2-t0:.1f}s, {T/(t2-t0):.1f} tok/s")
