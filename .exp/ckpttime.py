import sys, time, json, torch
from functools import partial
from benchmarks.speed import hope_preset, next_token_loss, train_memory, llama_matching
if __name__ == "__main__":
    torch.set_num_threads(1)
    T = int(sys.argv[1]); what = sys.argv[2]
    if what == "mem":
        print("hope ckpt", json.dumps(train_memory(partial(hope_preset, "small", True), T)))
    elif what == "memllama":
        print("llama", json.dumps(train_memory(partial(llama_matching, "small", T), T)))
    else:
        model = hope_preset("small", checkpointing=(what == "ckpt"))
        loss = next_token_loss(model, T)
        ts = []
        for _ in range(3):
            t = time.perf_counter(); loss().backward(); ts.append(time.perf_counter() - t)
        print(what, T, [round(x, 2) for x in ts])
