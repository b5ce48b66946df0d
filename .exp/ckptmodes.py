import time, json, torch
from benchmarks.speed import hope_preset, next_token_loss, saved_for_backward_bytes
if __name__ == "__main__":
    torch.set_num_threads(1)
    T = 2048; out = {}
    for mode in ("eager", "spans", "groups"):
        model = hope_preset("small", checkpointing=mode != "eager")
        model.model.checkpoint_span_groups = mode == "groups"
        loss = next_token_loss(model, T)
        saved = saved_for_backward_bytes(lambda: loss().backward(), list(model.parameters()))
        ts = []
        for _ in range(2):
            t = time.perf_counter(); loss().backward(); ts.append(time.perf_counter() - t)
        out[mode] = {"s": [round(x, 1) for x in ts], "saved_MiB": round(saved / 2**20)}
        print(mode, out[mode], flush=True)
    print(json.dumps(out))
