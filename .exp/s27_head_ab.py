"""Session 27: A/B of the training loss's backward in one process, interleaved: 'new' (logits kept, input gradient
from the teach signals' mixes) vs 'old' (logits recomputed in backward, input gradient d W).
usage: PYTHONPATH=. python .exp/s27_head_ab.py tiny 512 [rounds] [blocks]"""
import sys, time, statistics
from hope_hf.cli import tune_allocator
tune_allocator()
import torch
torch.set_num_threads(1)
import hope_hf.modeling_hope as mh
from benchmarks.speed import hope_preset, next_token_loss
preset, T = sys.argv[1], int(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
torch.manual_seed(0)
model = hope_preset(preset)
if "blocks" in sys.argv:
    model.compile_blocks()
loss = next_token_loss(model, T)
orig = mh.causal_lm_loss
old = lambda *a, mix=None, keep=True, **k: orig(*a, mix=None, keep=False, **k)  # noqa: E731
def step(mode):
    mh.causal_lm_loss = orig if mode == "new" else old
    model.zero_grad(set_to_none=True)
    t = time.perf_counter(); loss().backward(); return time.perf_counter() - t
for mode in ("new", "old"):
    step(mode); step(mode)
times = {"new": [], "old": []}
for r in range(rounds):
    for mode in (("new", "old") if r % 2 == 0 else ("old", "new")):
        times[mode].append(step(mode))
med = {k: statistics.median(v) for k, v in times.items()}
print(preset, T, {k: round(v * 1e3, 1) for k, v in med.items()}, "new/old", round(med["new"] / med["old"], 3))
