"""cos(k_t, q_t) of the output memory's keys and queries on a trained checkpoint (issue #10: they were 0.97 for the
same token when k/q/v shared one stream). Usage: python .exp/kq_cos.py CHECKPOINT_DIR [TOKENS]."""
import sys

import torch
import torch.nn.functional as F

import hope_hf.modeling_hope as mh
from hope_hf import HopeForCausalLM
from hope_hf.corpus import stdlib_docs_text
from transformers import AutoTokenizer

path, T = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 512
model = HopeForCausalLM.from_pretrained(path).eval()
tok = AutoTokenizer.from_pretrained(path)
ids = torch.tensor([tok("\n\n".join(stdlib_docs_text()[-400:]))["input_ids"][:T]])
seen, inner = [], mh.output_memory


def spy(params, state, k, v, q, *args, **kwargs):
    seen.append((k.detach(), q.detach()))
    return inner(params, state, k, v, q, *args, **kwargs)


mh.output_memory = spy
with torch.no_grad():
    model(input_ids=ids)
by_layer = {}
for i, (k, q) in enumerate(seen):              # one call per span per layer, layers in order within a span
    by_layer.setdefault(i % model.config.num_hidden_layers, []).append((k, q))
g = torch.Generator().manual_seed(0)
for layer, parts in sorted(by_layer.items()):
    k, q = (F.normalize(torch.cat(x, 2), dim=-1) for x in zip(*parts))       # [B, H, T, d]
    same = (k * q).sum(-1).mean().item()
    perm = torch.randperm(k.shape[2], generator=g)
    other = (k * q[:, :, perm]).sum(-1).mean().item()
    print(f"layer {layer}: cos(k_t, q_t) {same:.3f}, cos(k_t, q_s) for random s {other:.3f} ({k.shape[2]} tokens)")
