"""Session 28: interleaved A/B of the model code at e9110c7 (old: `git show e9110c7:hope_hf/X` for X in configuration,
modeling, memory and cache_hope.py into /tmp/abold/hope_hf_old/, with an empty __init__.py) vs the working tree (new),
same weights, one process. usage: PYTHONPATH=. python .exp/s28_ab_old_new.py tiny 512 15 [blocks|eager]"""
import sys, time, statistics
sys.path.insert(0, "/tmp/abold")
from hope_hf.cli import tune_allocator
tune_allocator()
import torch
torch.set_num_threads(1)
from benchmarks.speed import hope_preset, next_token_loss
import hope_hf_old.modeling_hope as old_mod
preset, T, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
comp = sys.argv[4] if len(sys.argv) > 4 else "blocks"
torch.manual_seed(0)
new = hope_preset(preset)
old = old_mod.HopeForCausalLM(new.config)
old.load_state_dict(new.state_dict())
steps = {}
for name, model in (("new", new), ("old", old)):
    if comp == "blocks": model.compile_blocks()
    loss = next_token_loss(model, T)
    def step(model=model, loss=loss):
        model.zero_grad(set_to_none=True); l = loss(); l.backward(); return l.item()
    torch.manual_seed(1); steps[name] = step
ids = torch.randint(3, new.config.vocab_size, (1, T))
for name, model in (("new", new), ("old", old)):
    model.train(); steps[name] = (lambda model=model: (model.zero_grad(set_to_none=True), model(input_ids=ids, labels=ids, use_cache=False).loss.backward()))
for name in steps: t = time.perf_counter(); steps[name](); steps[name](); print(name, "warm", round(time.perf_counter() - t, 1), flush=True)
ts = {m: [] for m in steps}
for r in range(rounds):
    for m, s in steps.items():
        t = time.perf_counter(); s(); ts[m].append(time.perf_counter() - t)
for m, v in ts.items():
    print(f"{m:5s} median {statistics.median(v)*1e3:8.1f} ms  min {min(v)*1e3:8.1f}")
with torch.no_grad():
    a = new(input_ids=ids, labels=ids, use_cache=False).loss; b = old(input_ids=ids, labels=ids, use_cache=False).loss
print("loss new/old", a.item(), b.item())
