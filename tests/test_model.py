"""Whole-model contracts: reference == fast, causality, batch independence, streaming, CMS cadence, gradients,
save/load, and clear errors."""

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

import hope_hf  # noqa: F401  (registers the Auto classes)
from hope_hf import PRESETS, HopeCache, HopeConfig, HopeForCausalLM, HopeModel, modeling_hope


def small_config(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, memory_hidden_size=8,
                projection_chunk_size=4, memory_chunk_size=8, cms_chunk_sizes=[16, 32, 128], cms_intermediate_size=32,
                initializer_range=0.02, cms_lr_init=0.05, memory_lr_max=0.2, cms_out_scale_init=1.0)
    return HopeConfig(**{**base, **kw})


def make_model(seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    return HopeForCausalLM(small_config(**kw)).to(dtype)


def ids(B, T, seed=1, vocab=64):
    return torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("bad, field", [
    (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(projection_chunk_size=3), "projection_chunk_size"),
    (dict(memory_chunk_size=8.0), "memory_chunk_size"),
    (dict(cms_chunk_sizes=[16, 24]), "cms_chunk_sizes"),
    (dict(cms_chunk_sizes=[12]), "memory_chunk_size"),
    (dict(cms_chunk_sizes="16"), "cms_chunk_sizes"),
    (dict(cms_teach_signal="exact-ish"), "cms_teach_signal"),
    (dict(memory_objective="cosine"), "memory_objective"),
    (dict(memory_grad_clip=0.0), "memory_grad_clip"),
    (dict(memory_grad_clip="1"), "memory_grad_clip"),
    (dict(memory_writes_first_layer=1), "memory_writes_first_layer"),
    (dict(use_dgd="yes"), "use_dgd"),
    (dict(memory_lr_max=0.0), "memory_lr_max"),
    (dict(pad_token_id=64), "pad_token_id"),
    (dict(memory_lr_init=0.2), "memory_lr_init"),
    (dict(memory_lr_init=0.0), "memory_lr_init"),
    (dict(memory_retention_init=[0.9]), "memory_retention_init"),
    (dict(memory_retention_init=[0.99, 0.9]), "memory_retention_init"),
    (dict(memory_retention_init=[0.9, 1.0]), "memory_retention_init"),
    (dict(cms_out_scale_init="0"), "cms_out_scale_init"),
    (dict(cms_out_scale_init=float("nan")), "cms_out_scale_init"),
])
def test_config_rejects_bad_values_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        small_config(**bad)


@pytest.mark.parametrize("self_modifying", [True, False])
def test_memory_gates_start_where_the_config_says(self_modifying):
    """eta starts at memory_lr_init; the retention alpha spans memory_retention_init over the heads, log-spaced in
    1 - alpha (one time scale per head)."""
    model = make_model(self_modifying=self_modifying, memory_lr_max=0.5, memory_lr_init=0.05,
                       memory_retention_init=[0.9, 0.999])
    mem = model.model.layers[1].memory
    eta_b, alpha_b = ((mem.eta_b, mem.alpha_b) if self_modifying else mem.gate_logits.bias.detach().chunk(2))
    torch.testing.assert_close(0.5 * torch.sigmoid(eta_b), torch.full((4,), 0.05))
    forget = 1 - torch.sigmoid(alpha_b.double())
    torch.testing.assert_close(forget, torch.tensor([1e-1, 1e-1 ** (5 / 3), 1e-1 ** (7 / 3), 1e-3], dtype=torch.double),
                               rtol=1e-5, atol=0)


def test_presets_and_registration():
    assert set(PRESETS) >= {"tiny", "small", "340m", "760m", "1.3b"}
    cfg = HopeConfig.from_preset("tiny", vocab_size=300)
    assert cfg.cms_chunk_sizes == [64, 256] and cfg.vocab_size == 300
    with pytest.raises(ValueError, match="preset"):
        HopeConfig.from_preset("huge")
    assert type(AutoConfig.for_model("hope")) is HopeConfig
    with torch.device("meta"):
        n = sum(p.numel() for p in HopeForCausalLM(HopeConfig.from_preset("small")).parameters())
    assert 20e6 <= n <= 40e6


# --------------------------------------------------------------------------------- reference == fast path


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_whole_model_fast_equals_token_by_token_reference(dtype):
    model = make_model(dtype=dtype)
    x = ids(2, 37)                                     # 37: not a multiple of any chunk size
    mask = torch.ones_like(x)
    mask[1, :6] = 0                                    # left padding: per-sample chunk phase
    results = {}
    for impl in ("fast", "reference"):
        model.set_memory_impl(impl)
        model.zero_grad()
        out = model(input_ids=x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100), use_cache=True)
        out.loss.backward()
        state = out.past_key_values.get_state(1)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
        results[impl] = (out.logits, grads,
                         [state["mem"]["W1"], state["bank"]["W1r"], state["cms"][0]["theta"][2],
                          state["cms"][1]["grad"][0]])
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    fast, ref = results["fast"], results["reference"]
    torch.testing.assert_close(fast[0], ref[0], rtol=tol, atol=tol)
    for a, b in zip(fast[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for a, b in zip(fast[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=tol * 10, atol=tol * 10)


# ------------------------------------------------------------------------------- causality and independence


@pytest.mark.parametrize("training", [True, False])
def test_whole_model_is_causal_across_chunk_and_cms_boundaries(training):
    model = make_model()
    model.train(training)
    x = ids(2, 70)
    with torch.set_grad_enabled(training):
        base = model(input_ids=x).logits
        for t in (0, 7, 15, 16, 31, 32, 47, 63):
            for k in (1, 3, 17):
                if t + k >= x.shape[1]:
                    continue
                y = x.clone()
                y[:, t + k] = (y[:, t + k] + 5) % 61 + 3
                out = model(input_ids=y).logits
                assert torch.equal(out[:, : t + 1], base[:, : t + 1]), (t, k)
                assert not torch.equal(out[:, t + k:], base[:, t + k:])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("chunks", [(4, 8, [16, 32]), (8, 16, [16, 64]), (16, 32, [32])])
def test_every_position_sees_every_earlier_token_inside_its_chunk(training, chunks):
    """design.md A1: o_t = M_memory,t-1(q_t) includes the in-chunk writes, so perturbing token s of a fresh model
    (conv at the identity) moves the logits at every later position s+1 ... s+2C (its own chunk and the next, not
    only at boundaries), and never at positions < s. A read that lags to the chunk start fails this."""
    C_p, C_m, cms = chunks
    model = make_model(projection_chunk_size=C_p, memory_chunk_size=C_m, cms_chunk_sizes=cms)
    assert torch.equal(model.model.layers[0].memory.conv_weight[:, :-1], torch.zeros_like(
        model.model.layers[0].memory.conv_weight[:, :-1]))
    model.train(training)
    x = ids(2, 3 * C_m + 3)
    with torch.set_grad_enabled(training):
        base = model(input_ids=x).logits
        for s in (C_m + 1, C_m + C_m // 2, 2 * C_m - 1):
            y = x.clone()
            y[:, s] = (y[:, s] + 5) % 61 + 3
            out = model(input_ids=y).logits
            assert torch.equal(out[:, :s], base[:, :s]), s
            moved = (out - base).abs().amax(-1)[:, s:s + 2 * C_m + 1]
            assert (moved > 0).all(), (s, moved)


@pytest.mark.parametrize("training", [True, False])
def test_batch_independence(training):
    model = make_model()
    model.train(training)
    x = ids(3, 50)
    y = x.clone()
    y[1] = ids(1, 50, seed=9)[0]
    with torch.set_grad_enabled(training):
        a, b = model(input_ids=x).logits, model(input_ids=y).logits
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[1], b[1])


# ------------------------------------------------------------------------------------------------- streaming


def test_streaming_any_split_equals_one_call():
    model = make_model().eval()
    x = ids(2, 90)
    with torch.no_grad():
        full = model(input_ids=x).logits
        for splits in ([1], [7], [16], [33], [64], [89], [5, 6, 40], [1, 2, 3, 4]):
            cache, pieces, start = None, [], 0
            for end in [*splits, x.shape[1]]:
                out = model(input_ids=x[:, start:end], past_key_values=cache, use_cache=True)
                cache, start = out.past_key_values, end
                pieces.append(out.logits)
            torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)
            assert cache.get_seq_length() == x.shape[1]


def test_without_a_cache_the_logits_are_the_same():
    """Without a cache the model skips the gradient sums of levels that cannot commit in the call."""
    model = make_model().eval()
    x = ids(2, 70)
    with torch.no_grad():
        a = model(input_ids=x, use_cache=False)
        b = model(input_ids=x, use_cache=True)
    assert a.past_key_values is None
    assert torch.equal(a.logits, b.logits)


def test_left_padded_batch_equals_each_sample_alone():
    model = make_model().eval()
    a, b = ids(1, 40, seed=3), ids(1, 23, seed=4)
    x = torch.cat([a, torch.cat([torch.zeros(1, 17, dtype=torch.long), b], 1)])
    mask = torch.ones_like(x)
    mask[1, :17] = 0
    with torch.no_grad():
        batch = model(input_ids=x, attention_mask=mask, use_cache=True)
        alone_a, alone_b = model(input_ids=a, use_cache=True), model(input_ids=b, use_cache=True)
        torch.testing.assert_close(batch.logits[0], alone_a.logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch.logits[1, 17:], alone_b.logits[0], rtol=1e-5, atol=1e-5)
        # continuing the padded batch (samples now at different chunk phases) still matches
        nxt = ids(2, 30, seed=5)
        cont = model(input_ids=nxt, attention_mask=torch.cat([mask, torch.ones_like(nxt)], 1),
                     past_key_values=batch.past_key_values)
        ca = model(input_ids=nxt[:1], past_key_values=alone_a.past_key_values)
        cb = model(input_ids=nxt[1:], past_key_values=alone_b.past_key_values)
        torch.testing.assert_close(cont.logits[0], ca.logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cont.logits[1], cb.logits[0], rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------- CMS cadence


def test_cms_cadence_commits_and_constant_fast_weights_between_commits():
    model = make_model().eval()
    T = 70
    x = ids(1, T)
    with torch.no_grad():
        cache = model(input_ids=x, use_cache=True).past_key_values
        counts = cache.cms_update_counts()
        assert counts.shape == (2, 3, 1)
        assert counts[:, :, 0].tolist() == [[T // 16, T // 32, T // 128]] * 2
        # token by token: level 0 (C=16) changes only when the token after a multiple of 16 arrives
        cache, prev = None, None
        for n in range(1, T + 1):
            cache = model(input_ids=x[:, n - 1:n], past_key_values=cache, use_cache=True).past_key_values
            lv = cache.get_state(0)["cms"]
            theta = lv[0].get("theta")
            cur = None if theta is None else theta[0].clone()
            consumed_before = n - 1
            should_change = consumed_before >= 16 and consumed_before % 16 == 0
            changed = (prev is None) != (cur is None) or (cur is not None and not torch.equal(cur, prev))
            assert changed == should_change, n
            prev = cur
            assert "theta" not in lv[2]               # C=128 > T: never materialised, stays theta_0
        assert cache.cms_update_counts()[:, :, 0].tolist() == counts[:, :, 0].tolist()


def test_projection_memories_start_as_the_titans_projections_and_gates_read_their_own_stream():
    """A fresh self-modifying model's k/v/q memories start as the identity (W1 = 0): in the first projection chunk
    (read with M_0) k = unit(u_k), v = u_v, q = unit(u_q) of the conv'd q/k/v streams. The gate memories M_eta,
    M_alpha read a fourth stream: changing its in_proj rows moves eta and alpha but not k, v, q."""
    import torch.nn.functional as F
    from benchmarks.recall import capture_output_memory_inputs
    torch.manual_seed(0)
    model = HopeForCausalLM(small_config(initializer_range=0.2)).eval()
    mem, D, H, C_p = model.model.layers[0].memory, 32, 4, 4
    x = ids(1, 12)
    with torch.no_grad(), capture_output_memory_inputs() as calls:
        model(input_ids=x)
        k, q, v, eta, log_alpha = calls[0]
        h = model.model.embed_tokens(x)
        z = F.silu(F.conv1d(F.pad(mem.in_proj(mem.norm(h)).transpose(1, 2), (3, 0)), mem.conv_weight.unsqueeze(1),
                            groups=4 * D)).transpose(1, 2)
        uq, uk, uv, _ = z.view(1, 12, 4, H, D // H).permute(2, 0, 3, 1, 4)
        first = slice(0, C_p)
        torch.testing.assert_close(k[..., first, :], F.normalize(uk, dim=-1)[..., first, :])
        torch.testing.assert_close(q[..., first, :], F.normalize(uq, dim=-1)[..., first, :])
        torch.testing.assert_close(v[..., first, :], uv[..., first, :])
        assert not torch.allclose(k[..., C_p:, :], F.normalize(uk, dim=-1)[..., C_p:, :], rtol=0, atol=1e-7)  # writes
        mem.in_proj.weight[3 * D:] += 0.5 * torch.randn(D, D)
        calls.clear()
        model(input_ids=x)
        k2, q2, v2, eta2, log_alpha2 = calls[0]
    for a, b in ((k, k2), (q, q2), (v, v2)):
        torch.testing.assert_close(a[..., first, :], b[..., first, :], rtol=0, atol=0)
    assert (eta2 - eta).abs().max() > 1e-4 and (log_alpha2 - log_alpha).abs().max() > 1e-4


def test_cms_commit_steps_by_the_gradient_of_the_scaled_level_output():
    """Eq. 31 for a level x + g MLP_theta(norm x): theta <- theta - eta g sum_t grad <MLP_theta(x_t), u_t>, at the
    samples whose token count hits C (the pending sum is then reset); g = 0 leaves theta where it was."""
    model = make_model(cms_chunk_sizes=[16, 32])
    layer, lvl = model.model.layers[0], model.model.layers[0].cms[1]
    with torch.no_grad():
        lvl.out_scale.fill_(-0.7)
    B = 3
    state = layer.init_state(B, "cpu", torch.float32)
    grad = tuple(torch.randn(B, *w.shape) for w in lvl.theta0())
    state["cms"][1]["grad"] = grad
    count = torch.tensor([32, 48, 64])                         # C = 32: samples 0 and 2 commit
    lv = layer._commit_levels(state["cms"], count, torch.ones(B, dtype=torch.bool))[1]
    step = torch.nn.functional.softplus(lvl.lr_logit) * -0.7
    for w0, g, w in zip(lvl.theta0(), grad, lv["theta"]):
        torch.testing.assert_close(w[[0, 2]], w0 - step * g[[0, 2]])
        torch.testing.assert_close(w[1], w0)
    assert lv["commits"].tolist() == [1, 0, 1]
    assert all(g[[0, 2]].abs().sum() == 0 and torch.equal(g[1], g0[1]) for g, g0 in zip(lv["grad"], grad))
    with torch.no_grad():
        lvl.out_scale.zero_()
    assert "theta" not in state["cms"][1]                      # the block returns new level states
    lv = layer._commit_levels(state["cms"], count, torch.ones(B, dtype=torch.bool))[1]
    assert all(torch.equal(w, w0.expand_as(w)) for w, w0 in zip(lv["theta"], lvl.theta0()))


def test_cms_levels_start_silent_and_learn_to_speak():
    """The default cms_out_scale_init = 0: a fresh model's output does not depend on the CMS weights, and every
    level's scale g gets a gradient, so training can turn the level on."""
    torch.manual_seed(0)
    model = HopeForCausalLM(small_config(cms_out_scale_init=0.0))
    x = ids(2, 40)
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    for layer in model.model.layers:
        for lvl in layer.cms:
            assert lvl.out_scale.item() == 0 and lvl.out_scale.grad.abs() > 0
    with torch.no_grad():
        for layer in model.model.layers:
            for lvl in layer.cms:
                for w in lvl.theta0():
                    w.normal_()
        torch.testing.assert_close(model(input_ids=x).logits, out.logits, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- gradients


def test_every_parameter_gets_a_gradient_including_initial_states():
    model = make_model(cms_chunk_sizes=[16, 32])
    model.train()
    x = ids(2, 70)
    model(input_ids=x, labels=x).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    names = dict(model.named_parameters())
    for n in ("model.layers.0.memory.bank_W1", "model.layers.0.memory.mem_W2", "model.layers.1.cms.1.down",
              "model.layers.1.cms.0.lr_logit"):
        assert names[n].grad.abs().sum() > 0


@pytest.mark.parametrize("T, padded", [(40, False), (100, False), (100, True)])
def test_activation_checkpointing_gives_the_same_gradients(T, padded):
    """Per-block span checkpoints (40 tokens: 3 spans) and, from 4 spans on, groups of spans checkpointed around
    them (100 tokens: 7 spans in groups of 3), on the static path and on the padded (data-dependent) one."""
    model = make_model(cms_chunk_sizes=[16, 32])
    model.train()
    x = ids(2, T)
    mask = torch.ones_like(x)
    if padded:
        mask[0, :7] = 0
    labels = x.masked_fill(mask == 0, -100)
    kw = dict(attention_mask=mask) if padded else {}
    model(input_ids=x, labels=labels, **kw).loss.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable()
    recomputed = []
    hook = model.model.layers[0].memory.register_forward_hook(lambda *a: recomputed.append(1))
    model(input_ids=x, labels=labels, **kw).loss.backward()
    hook.remove()
    spans = -(-T // 16)
    # each block-span runs once forward, once more in backward, and once more when its group is recomputed
    assert len(recomputed) == (3 * spans if spans >= 4 else 2 * spans)
    for a, b in zip(ref, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("checkpointed", [False, True])
def test_training_loss_equals_the_standard_loss(tie, padded, checkpointed):
    """In training mode the loss goes through LinearCrossEntropy (the logits kept for backward, or recomputed there
    with activation checkpointing; on an unpadded fresh batch the input gradient from the teach signals' mixes); it
    must equal transformers' ForCausalLMLoss on the logits, value and gradients, with ignored labels,
    num_items_in_batch and shift_labels."""
    model = make_model(cms_chunk_sizes=[16, 32], tie_word_embeddings=tie)
    if checkpointed:
        model.activation_checkpointing_enable()
    x = ids(2, 72)                  # 5 spans: with checkpointing, groups of spans are checkpointed around the blocks
    mask = None
    labels = x.clone()
    if padded:
        mask = torch.ones_like(x)
        mask[1, :5] = 0
        labels = x.masked_fill(mask == 0, -100)
    labels[0, 10:14] = -100
    shifted = torch.roll(x, -2, 1)
    for kw in (dict(labels=labels), dict(labels=labels, num_items_in_batch=torch.tensor(50)),
               dict(labels=x, shift_labels=shifted)):
        grads, losses = [], []
        for train in (True, False):
            model.zero_grad()
            model.train(train)
            out = model(input_ids=x, attention_mask=mask, **kw)
            out.loss.backward()
            assert out.logits.requires_grad is not train          # training: the logits come back detached
            losses.append(out.loss.detach())
            grads.append([p.grad.clone() for p in model.parameters()])
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=0)
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mix,keep", [(True, True), (False, True), (True, False)])
def test_training_loss_backward_counts_its_vocabulary_products(mix, keep):
    """LinearCrossEntropy's backward does dW = d^T h (and d W without the teach signals' mix, and the logits again
    without kept ones): FlopCounterMode, which benchmarks.speed's FLOP/s rests on, must count each of them (an
    in-place `addmm_` escapes it)."""
    from torch.utils.flop_counter import FlopCounterMode

    N, D, V = 10, 8, 30
    h, W = torch.randn(N, D, requires_grad=True), torch.randn(V, D, requires_grad=True)
    logits = h.detach() @ W.detach().t()
    m = torch.softmax(logits, -1) @ W.detach() if mix else None
    loss = modeling_hope.LinearCrossEntropy.apply(h, W, torch.randint(V, (N,)), logits, m, keep, -100, 4)
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    assert counter.get_total_flops() == 2 * N * D * V * (1 + (not mix) + (not keep))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_loss_recomputes_the_logits_it_did_not_keep(dtype):
    """Without kept logits (activation checkpointing) LinearCrossEntropy's backward recomputes them `chunk` rows at a
    time (float32: straight into its buffer; bf16: h W^T in h's dtype, then into the buffer), the last chunk
    partial: the gradients equal those from kept logits (to the dtype's rounding: a 4-row product may round unlike
    the 10-row one)."""
    N, D, V = 10, 8, 30
    h, W = torch.randn(N, D, dtype=dtype, requires_grad=True), torch.randn(V, D, dtype=dtype, requires_grad=True)
    logits = h.detach() @ W.detach().t()
    y = torch.randint(V, (N,))
    grads = []
    for keep in (True, False):
        h.grad = W.grad = None
        modeling_hope.LinearCrossEntropy.apply(h, W, y, logits, None, keep, -100, 4).backward()
        grads.append((h.grad.clone(), W.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)


def test_logits_mix_is_the_softmax_mix_of_every_position(monkeypatch):
    """The training loss's input gradient reads `logits_mix` (W^T softmax(logits), gathered from the teach signals of
    the span loop, the last position added): it must be that mix at every position, in order, also with an all-ones
    mask (the static path); it is absent where the span loop takes the general path (padding, or a mask whose values
    cannot be read back)."""
    model = make_model(cms_chunk_sizes=[16, 32]).train()
    x = ids(2, 40)
    W = model.lm_head.weight
    mask = torch.ones_like(x)
    for kw in ({}, dict(attention_mask=mask)):
        out = model.model(input_ids=x, lm_head_weight=W, logits_grad=False, **kw)
        torch.testing.assert_close(out.logits_mix, torch.softmax(out.logits, -1) @ W.detach(), rtol=1e-5, atol=1e-6)
    padded = mask.clone()
    padded[1, :5] = 0
    assert model.model(input_ids=x, attention_mask=padded, lm_head_weight=W, logits_grad=False).logits_mix is None
    monkeypatch.setattr(modeling_hope, "_reading_back_breaks", lambda t: True)
    assert model.model(input_ids=x, attention_mask=mask, lm_head_weight=W, logits_grad=False).logits_mix is None


def test_a_replaced_loss_function_is_used_in_training():
    """A `loss_function` assigned by the user (transformers' hook for custom losses) replaces the built-in lean loss:
    it gets the logits, on the graph."""
    model = make_model()
    x = ids(2, 24)
    seen = []

    def custom_loss(logits, labels, vocab_size, **kwargs):
        seen.append(logits.requires_grad)
        return logits.float().square().mean()

    model.loss_function = custom_loss
    model.train()
    out = model(input_ids=x, labels=x)
    torch.testing.assert_close(out.loss, out.logits.float().square().mean())
    assert seen == [True] and out.logits.requires_grad
    out.loss.backward()
    assert model.lm_head.weight.grad is not None


def test_ablation_flags_build_and_run():
    x = ids(1, 40)
    for kw in (dict(self_modifying=False), dict(use_dgd=False), dict(use_momentum=False),
               dict(adaptive_query=False), dict(cms_chunk_sizes=[]), dict(memory_objective="dot"),
               dict(memory_grad_clip=None), dict(memory_writes_first_layer=False)):
        model = make_model(**kw)
        out = model(input_ids=x, labels=x)
        assert torch.isfinite(out.loss)
        out.loss.backward()


# ------------------------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_roundtrip_identical_logits(tmp_path, tie):
    model = make_model(tie_word_embeddings=tie).eval()
    model.save_pretrained(tmp_path)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) == (not tie)
    card = (tmp_path / "README.md").read_text()                 # save_pretrained writes a model card
    assert "Hope" in card and "Limitations" in card
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is HopeForCausalLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x = ids(2, 40)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded.eval()(input_ids=x).logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is HopeModel


# ------------------------------------------------------------------------------------------- clear errors


def test_clear_errors_for_bad_inputs_and_foreign_caches():
    model = make_model().eval()
    x = ids(2, 10)
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(input_ids=x + 64)
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=x, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(TypeError, match="HopeCache"):
        model(input_ids=x, past_key_values=("not", "a cache"))
    with pytest.raises(ValueError, match="different Hope config"):
        model(input_ids=x, past_key_values=HopeCache(small_config(hidden_size=64)))
    cache = model(input_ids=x, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="batch_repeat_interleave"):
        model(input_ids=ids(4, 3), past_key_values=cache)
    with pytest.raises(ValueError, match="cropped"):
        cache.crop(3)
    # an empty DynamicCache (what some callers pass) is replaced by a HopeCache
    out = model(input_ids=x, past_key_values=DynamicCache(), use_cache=True)
    assert isinstance(out.past_key_values, HopeCache)


def test_logits_to_keep_and_generate_return_the_hope_cache():
    model = make_model().eval()
    x = ids(2, 20)
    with torch.no_grad():
        full = model(input_ids=x).logits
        last = model(input_ids=x, logits_to_keep=1).logits
    torch.testing.assert_close(last, full[:, -1:])
    out = model.generate(x, max_new_tokens=5, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    assert isinstance(out.past_key_values, HopeCache)
    assert out.past_key_values.get_seq_length() == 24        # the last generated token is not consumed yet
    # deepcopy branches a conversation
    branch = copy.deepcopy(out.past_key_values)
    assert branch.get_seq_length() == 24
