import sys, time, threading, torch
from benchmarks.speed import hope_preset, next_token_loss
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) / 2**20
if __name__ == "__main__":
    torch.set_num_threads(1)
    T = int(sys.argv[1])
    model = hope_preset("small", checkpointing=True)
    loss = next_token_loss(model, T)
    if T <= 2048: loss().backward(); model.zero_grad(set_to_none=False)
    base = rss(); trace = []; stop = False
    def mon():
        while not stop:
            trace.append((time.perf_counter(), rss())); time.sleep(0.05)
    th = threading.Thread(target=mon); th.start()
    t0 = time.perf_counter(); l = loss(); t1 = time.perf_counter(); l.backward(); t2 = time.perf_counter()
    stop = True; th.join()
    f = max(r for t, r in trace if t <= t1); b = max(r for t, r in trace if t > t1)
    print(f"T={T} base {base:.2f} GiB; forward peak +{f-base:.2f} GiB ({t1-t0:.0f}s), backward peak +{b-base:.2f} GiB ({t2-t1:.0f}s)")
    # where in backward
    pk = max(trace, key=lambda x: x[1]); print("peak at", round((pk[0]-t1)/(t2-t1), 2), "of backward")
