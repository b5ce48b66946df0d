import torch
from hope_hf import HopeConfig, HopeForCausalLM
torch.manual_seed(0)
cfg = HopeConfig.from_pretrained if False else None
from benchmarks.speed import preset_config
c = preset_config("tiny")
m = HopeForCausalLM(c); m.train()
for p in m.parameters():
    if p.dim() == 0: torch.nn.init.normal_(p, 0, 0.1)
ids = torch.randint(0, c.vocab_size, (2, 200))
labels = ids.clone(); labels[0, :7] = -100
def run(lean):
    m.zero_grad()
    m.train(lean)
    out = m(input_ids=ids, labels=labels)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, out.logits
l1, g1, lo1 = run(True); l0, g0, lo0 = run(False)
print(l0.item(), l1.item(), (lo0-lo1).abs().max().item(), lo1.requires_grad, lo0.requires_grad)
print(max(((g0[n]-g1[n]).abs().max()/(g0[n].abs().max()+1e-12)).item() for n in g0), set(g0)^set(g1))
