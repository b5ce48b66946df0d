"""torch.compile: the training forward + backward of a fresh unpadded batch traces as one graph (no break inside the
span's layer loop); the regionally compiled blocks (`compile_blocks`, what `hope-hf train --compile` uses) and memories
(`compile_memories`) give eager's loss and gradients, also with a cache carried between calls (truncated BPTT)."""

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
@pytest.mark.parametrize("regions", ["compile_blocks", "compile_memories"])
def test_compiled_regions_train_like_eager(regions):
    """With `fail_on_recompile_limit_hit` a region that needs more variants than allowed fails here instead of
    silently running eagerly (dynamo's fallback)."""
    model, ids = _model_and_batch()
    eager = _split_training_step(model, ids)
    model.zero_grad(set_to_none=True)
    eager_one = model(input_ids=ids, labels=ids, use_cache=False).loss
    eager_one.backward()
    eager_one_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()          # (reset keeps them: graphs of earlier tests must not count here)
    getattr(model, regions)()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        compiled = _split_training_step(model, ids)
        model.zero_grad(set_to_none=True)
        compiled_one = model(input_ids=ids, labels=ids, use_cache=False).loss
        compiled_one.backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert abs(compiled_one.item() - eager_one.item()) <= 1e-5
    for a, b in zip(eager_one_grads, [p.grad for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert abs(compiled[0] - eager[0]) <= 1e-5, (compiled[0], eager[0])
    for a, b in zip(eager[1], compiled[1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_under_activation_checkpointing():
    """`hope-hf train --compile --gradient-checkpointing`: the compiled blocks run inside the per-block checkpoints and
    the span-group checkpoints around them (four spans: two groups of two), and give eager's loss and gradients.
    Dynamo and AOTAutograd (`aot_eager`: what traces and partitions the blocks under the checkpoints' saved-tensor
    hooks); inductor's kernels are checked without checkpointing above (cold, they take minutes to compile here)."""
    model, _ = _model_and_batch()
    ids = torch.randint(3, 64, (2, 64))
    model.zero_grad(set_to_none=True)
    eager = model(input_ids=ids, labels=ids, use_cache=False).loss
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model.activation_checkpointing_enable()
    model.compile_blocks(backend="aot_eager")
    model.zero_grad(set_to_none=True)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        compiled = model(input_ids=ids, labels=ids, use_cache=False).loss
        compiled.backward()
    assert model.model.checkpoint_span_groups and model.model.blocks_checkpointed
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert abs(compiled.item() - eager.item()) <= 1e-5
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(eager_grads)
    for a, b in zip(eager_grads, grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the operators that bring a tensor's value to the host (a Python number or bool, or an output whose
    shape depends on the values): each would be a device synchronisation, which a CUDA graph capture forbids."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        reads_tensor = any(isinstance(a, torch.Tensor) for a in args)          # (not e.g. promote_types(dtype, dtype))
        scalar = any(str(r.type) in ("bool", "number", "int", "float", "SymInt") for r in func._schema.returns)
        if reads_tensor and scalar or any(name in func.__name__ for name in ("nonzero", "masked_select", "unique")):
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_a_fresh_unpadded_training_step_reads_nothing_back_to_the_host(monkeypatch):
    """What lets `benchmarks.cuda_graphs` capture a whole training step (forward, loss, backward) as one CUDA graph: a
    fresh unpadded batch takes the static path, which reads no value back to the host once the input value checks are
    off (they are while a graph captures, `_reading_back_breaks`). A padded batch reads its frame from the mask."""
    from hope_hf import modeling_hope

    model, ids = _model_and_batch()
    with HostReads() as spy:                          # the checks of input ids are host reads (outside a capture)
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert spy.reads
    monkeypatch.setattr(modeling_hope, "_reading_back_breaks", lambda t: True)
    for checkpointed in (False, True):
        if checkpointed:
            model.activation_checkpointing_enable()
        with HostReads() as spy:
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        assert spy.reads == [], spy.reads
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with HostReads() as spy:
        model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss.backward()
    assert "_local_scalar_dense.default" in spy.reads
