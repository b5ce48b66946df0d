"""torch.compile: the training forward + backward of a fresh unpadded batch traces as one graph (no break inside the
span's layer loop) and gives eager's loss and gradients; `hope-hf train --compile` trains with it."""

import pytest
import torch

from hope_hf import HopeConfig, HopeForCausalLM


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


@pytest.mark.slow
def test_compiled_loss_and_gradients_equal_eager():
    model, ids = _model_and_batch()
    losses, grads = [], []
    for run in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        loss = run(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()])
    assert abs(losses[0] - losses[1]) <= 1e-5, losses
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
