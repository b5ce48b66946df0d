import torch, collections, sys
from benchmarks.speed import hope_preset, next_token_loss, llama_matching
torch.set_num_threads(1)
T = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
which = sys.argv[2] if len(sys.argv) > 2 else "hope"
model = hope_preset("small", checkpointing=(which == "hope")) if which != "llama" else llama_matching("small", T)
loss = next_token_loss(model, T)
params = {p.data_ptr() for p in model.parameters()}
by = collections.Counter(); seen = {}
def pack(t):
    if t.data_ptr() in params: return t
    key = (tuple(t.shape), str(t.dtype))
    st = t.untyped_storage()
    if st.data_ptr() not in seen:
        seen[st.data_ptr()] = st.nbytes()
        by[key] += st.nbytes()
    return t
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    l = loss()
tot = sum(seen.values())
print(f"total saved {tot/2**20:.0f} MiB, {tot/T/1024:.0f} KiB/token")
for k, v in by.most_common(25):
    print(f"{v/2**20:9.1f} MiB {k}")
