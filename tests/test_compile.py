"""torch.compile: the training forward + backward of a fresh unpadded batch traces as one graph (no break inside the
span's layer loop); the regionally compiled memories (`compile_memories`, what `hope-hf train --compile` uses) give
eager's loss and gradients, also with a cache carried between calls (truncated BPTT)."""

import pytest
import torch

from hope_hf import HopeCache, HopeConfig, HopeForCausalLM
from hope_hf.modeling_hope import CACHE_FIELD


def _model_and_batch():
    torch.manual_seed(0)
    config = HopeConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        memory_hidden_size=8, projection_chunk_size=8, memory_chunk_size=16, cms_chunk_sizes=[16, 32],
                        cms_intermediate_size=16, cms_out_scale_init=1.0)
    model = HopeForCausalLM(config).train()             # small: compile time grows with the unrolled chunks
    return model, torch.randint(3, 64, (2, 32))         # two 16-token spans: the span loop runs twice


@pytest.mark.slow
def test_training_forward_is_one_graph():
    model, ids = _model_and_batch()
    explained = torch._dynamo.explain(model)(input_ids=ids, labels=ids, use_cache=False)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def _split_training_step(model, ids):
    """Loss and gradients of two consecutive calls with the HopeCache carried (and detached) in between, as
    `hope-hf train --tbptt-segments 2` does: the second call starts from a carried state (masked, not static)."""
    model.zero_grad(set_to_none=True)
    cache, total = HopeCache(model.config), 0.0
    for piece in (ids[:, :16], ids[:, 16:]):
        out = model(input_ids=piece, labels=piece, use_cache=True, **{CACHE_FIELD: cache})
        out.loss.backward()
        cache, total = out[CACHE_FIELD].detach_(), total + out.loss.item()
    return total, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.mark.slow
def test_compiled_memories_train_like_eager():
    model, ids = _model_and_batch()
    eager = _split_training_step(model, ids)
    model.zero_grad(set_to_none=True)
    eager_one = model(input_ids=ids, labels=ids, use_cache=False).loss
    eager_one.backward()
    eager_one_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.compile_memories()
    compiled = _split_training_step(model, ids)
    model.zero_grad(set_to_none=True)
    compiled_one = model(input_ids=ids, labels=ids, use_cache=False).loss
    compiled_one.backward()
    assert abs(compiled_one.item() - eager_one.item()) <= 1e-5
    for a, b in zip(eager_one_grads, [p.grad for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert abs(compiled[0] - eager[0]) <= 1e-5, (compiled[0], eager[0])
    for a, b in zip(eager[1], compiled[1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
