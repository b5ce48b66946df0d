"""The generic transformers model contract (issue #12): activation checkpointing (reentrant too), config-driven
outputs, tuples, inputs_embeds with untied embeddings, torch.export, output_attentions, pipelines, resizing."""

import pytest
import torch
from transformers import AutoModel, pipeline

import hope_hf  # noqa: F401
from hope_hf import HopeCache, HopeConfig, HopeForCausalLM, HopeModel, modeling_hope
from hope_hf.modeling_hope import CACHE_FIELD

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, memory_hidden_size=8,
            projection_chunk_size=2, memory_chunk_size=2, cms_chunk_sizes=[2, 4], cms_intermediate_size=32,
            initializer_range=0.1, cms_lr_init=0.05, cms_out_scale_init=1.0)


def config(**kw):
    return HopeConfig(**{**TINY, **kw})


def causal_lm(seed=0, **kw):
    torch.manual_seed(seed)
    return HopeForCausalLM(config(**kw))


def ids(B=2, T=7, seed=1, vocab=99):
    return torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def grads(model):
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------- activation checkpointing


@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("tie", [True, False])
def test_activation_checkpointing_gives_every_gradient_exactly(use_reentrant, tie):
    """Two TBPTT segments (the second continues the carried state): every parameter's gradient is the same with
    and without checkpointing, reentrant or not."""
    model = causal_lm(tie_word_embeddings=tie).train()
    x, y = ids(T=9), ids(T=6, seed=2)

    def run():
        model.zero_grad()
        out = model(x, labels=x, use_cache=True)
        out.loss.backward()
        cache = out.past_key_values.detach_()
        model(y, labels=y, past_key_values=cache).loss.backward()
        return grads(model)

    ref = run()
    assert all(g is not None for g in ref.values())
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    got = run()
    for name, g in ref.items():
        assert got[name] is not None, name
        torch.testing.assert_close(got[name], g, rtol=0, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------ outputs and tuples


def test_config_output_hidden_states_is_honoured_and_the_keyword_wins():
    x = ids()
    torch.manual_seed(0)
    model = HopeModel(config(output_hidden_states=True)).eval()
    out = model(x)
    assert out.hidden_states is not None and len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)        # transformers: the last is normed
    assert model(x, output_hidden_states=False).hidden_states is None
    lm = causal_lm(output_hidden_states=True).eval()
    assert len(lm(x).hidden_states) == TINY["num_hidden_layers"] + 1
    assert causal_lm()(x).hidden_states is None


@pytest.mark.parametrize("inputs", ["ids", "embeds"])
def test_returned_hidden_states_are_on_the_autograd_graph(inputs):
    """Every returned hidden state is on the path to the logits (retain_grad gets the gradient; hidden_states[0] is
    the embeddings that were fed), and their values are the layer outputs of the span loop."""
    model = causal_lm(num_hidden_layers=3)
    x = ids(T=9)
    emb = model.get_input_embeddings()(x).detach().requires_grad_(True)
    kw = dict(input_ids=x) if inputs == "ids" else dict(inputs_embeds=emb)
    seen = {i: [] for i in range(3)}
    hooks = [layer.register_forward_hook(lambda mod, a, out, i=i: seen[i].append(out[0].detach()))
             for i, layer in enumerate(model.model.layers)]
    plain = model(**kw)
    for hk in hooks:
        hk.remove()
    out = model(**kw, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    for i in (0, 1):                                     # fresh, unpadded: frame == sequence
        torch.testing.assert_close(out.hidden_states[i + 1], torch.cat(seen[i], 1), rtol=1e-6, atol=1e-6)
    for h in out.hidden_states:
        h.retain_grad()
    out.logits[1, 6].sum().backward()
    for i, h in enumerate(out.hidden_states):
        assert h.grad is not None, i
        assert h.grad[1, :7].abs().sum() > 0, i
        assert h.grad[1, 7:].abs().sum() == 0 and h.grad[0].abs().sum() == 0, i     # causal, per sample
    if inputs == "embeds":
        torch.testing.assert_close(out.hidden_states[0].grad, emb.grad, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, plain.logits, rtol=1e-6, atol=1e-6)


def test_hidden_states_replay_gives_the_same_logits_state_and_gradients():
    """With hidden states the forward runs layer-major with the recorded teach signals: padded batch, continuation
    and every parameter gradient equal the plain span loop."""
    x, y = ids(T=9), ids(T=6, seed=3)
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    results = []
    for hs in (False, True):
        model = causal_lm().train()
        a = model(x, attention_mask=mask, use_cache=True, output_hidden_states=hs)
        b = model(y, attention_mask=torch.cat([mask, torch.ones_like(y)], 1), past_key_values=a.past_key_values,
                  labels=y, output_hidden_states=hs)
        ((a.logits * mask[..., None]).square().mean() + b.loss).backward()
        st = b.past_key_values.get_state(1)
        results.append((a.logits, b.logits, [st["mem"]["W1"], st["cms"][0]["theta"][1], st["cms"][1]["grad"][2],
                                             st["cms"][0]["x_pend"]], grads(model)))
    (a0, b0, s0, g0), (a1, b1, s1, g1) = results
    torch.testing.assert_close(a1, a0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b1, b0, rtol=1e-6, atol=1e-6)
    for u, v in zip(s1, s0):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("via", ["keyword", "config"])
def test_return_dict_false_gives_tuples_in_transformers_order(via):
    x = ids()
    torch.manual_seed(0)
    cfg_kw = dict(return_dict=False) if via == "config" else {}
    call_kw = dict(return_dict=False) if via == "keyword" else {}
    lm = causal_lm(**cfg_kw).eval()
    ref = causal_lm().eval()(x, labels=x, use_cache=True, output_hidden_states=True)
    tup = lm(x, labels=x, use_cache=True, output_hidden_states=True, **call_kw)
    assert type(tup) is tuple and len(tup) == 4
    loss, logits, cache, hidden = tup
    torch.testing.assert_close(loss, ref.loss, rtol=0, atol=0)
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=0)
    assert isinstance(cache, HopeCache) and len(hidden) == 3
    assert type(lm(x, use_cache=False, **call_kw)) is tuple and len(lm(x, use_cache=False, **call_kw)) == 1
    torch.manual_seed(0)
    base = HopeModel(config(**cfg_kw)).eval()
    t = base(x, use_cache=True, output_hidden_states=True, **call_kw)
    assert type(t) is tuple and len(t) == 3 and isinstance(t[1], HopeCache)
    assert torch.equal(t[0], t[2][-1])
    assert type(base(x, return_dict=True)).__name__ == "HopeModelOutput"


def test_output_attentions_is_accepted_and_gives_none():
    model = causal_lm().eval()
    x = ids()
    out = model(x, output_attentions=True)
    assert out.attentions is None
    torch.testing.assert_close(out.logits, model(x).logits, rtol=0, atol=0)
    assert model.model(x, output_attentions=True).attentions is None
    assert causal_lm(output_attentions=True).eval()(x).attentions is None


# -------------------------------------------------------------------------- inputs_embeds, untied embeddings


def test_untied_inputs_embeds_equal_ids_and_unknown_ids_give_no_teach_signal():
    """Untied embeddings: inputs_embeds taken from the input table equal input_ids exactly (the ids are recovered);
    embeddings that are no token's (soft prompts) give no CMS teach signal: the fast weights stay theta_0 while the
    cadence still counts them. A continuation with ids then teaches the pending last position."""
    model = causal_lm(tie_word_embeddings=False).eval()
    x, y = ids(T=9), ids(T=4, seed=2)
    lvl0 = model.model.layers[0].cms[0]
    with torch.no_grad():
        emb = model.get_input_embeddings()(x)
        by_ids = model(x, use_cache=True)
        by_emb = model(inputs_embeds=emb, use_cache=True)
        torch.testing.assert_close(by_emb.logits, by_ids.logits, rtol=0, atol=0)
        assert not torch.equal(by_ids.past_key_values.get_state(0)["cms"][0]["theta"][0][0], lvl0.gate)
        soft = model(inputs_embeds=emb + 0.01, use_cache=True)
        cache = soft.past_key_values
        assert cache.cms_update_counts()[:, :, 0].tolist() == [[4, 2]] * 2
        assert all(torch.equal(a[0], b) for a, b in zip(cache.get_state(0)["cms"][0]["theta"], lvl0.theta0()))
        assert cache.get_state(0)["cms"][0]["grad"][0].abs().sum() == 0
        model(y[:, :1], past_key_values=cache, use_cache=True)        # token 9 arrives: position 8 is taught
        assert cache.get_state(0)["cms"][0]["grad"][0].abs().sum() > 0
        # only the first position's target is unknown: the rest of the sequence still teaches
        mixed = emb.clone()
        mixed[:, 0] += 0.01
        part = model(inputs_embeds=mixed, use_cache=True).past_key_values
        assert not torch.equal(part.get_state(0)["cms"][0]["theta"][0][0], lvl0.gate)


@pytest.mark.parametrize("tie", [True, False])
def test_generate_from_inputs_embeds_and_continue(tie):
    model = causal_lm(tie_word_embeddings=tie).eval()
    x = ids(T=6)
    emb = model.get_input_embeddings()(x)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None, return_dict_in_generate=True,
              output_logits=True)
    a = model.generate(inputs_embeds=emb, **kw)
    assert a.sequences.shape == (2, 5)
    b = model.generate(x, **kw)
    assert torch.equal(a.sequences, b.sequences[:, 6:])
    for la, lb in zip(a.logits, b.logits):
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    # continue from the cache with the embeddings of the whole history: equals one call over that history
    emb = model.get_input_embeddings()
    hist = torch.cat([emb(x), emb(a.sequences)], 1)
    c = model.generate(inputs_embeds=hist, **{CACHE_FIELD: getattr(a, CACHE_FIELD)}, **kw)
    fresh = model.generate(inputs_embeds=hist, **kw)
    assert torch.equal(c.sequences, fresh.sequences)
    for la, lb in zip(c.logits, fresh.logits):
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)


def test_bare_model_from_a_causal_lm_checkpoint_gives_the_same_hidden_states(tmp_path):
    model = causal_lm(tie_word_embeddings=False).eval()
    model.save_pretrained(tmp_path)
    base, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(base) is HopeModel and not info["missing_keys"]
    x = ids(T=11)
    with torch.no_grad():
        inside = model(x, output_hidden_states=True).hidden_states
        alone = base.eval()(x, output_hidden_states=True).hidden_states
    for a, b in zip(inside, alone):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- torch.export


def test_forward_exports_for_a_fixed_shape():
    model = causal_lm(num_hidden_layers=1).eval()               # one layer, 5 tokens: both CMS levels commit
    x = ids(T=5)
    with torch.no_grad():
        expected = model(x, use_cache=False).logits
    program = torch.export.export(model, (x,), {"use_cache": False}, strict=False)
    got = program.module()(x, use_cache=False)
    torch.testing.assert_close(got.logits if hasattr(got, "logits") else got[0], expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="attention_mask=None"):           # padded batches read the mask's values
        torch.export.export(model, (x,), {"attention_mask": torch.ones_like(x), "use_cache": False}, strict=False)


@pytest.mark.parametrize("T", [11, 12])               # the last span has one position / more than one
def test_static_path_equals_the_general_path(monkeypatch, T):
    """A fresh call without a mask takes the frame and the cadence from the shape (what export needs); an all-ones
    mask where its values cannot be read (as under a trace: forced here) takes them from the values: the same logits
    and state."""
    model = causal_lm().eval()
    x = ids(T=T)
    with torch.no_grad():
        a = model(x, use_cache=True)
        monkeypatch.setattr(modeling_hope, "_reading_back_breaks", lambda t: True)
        b = model(x, attention_mask=torch.ones_like(x), use_cache=True)
    assert torch.equal(a.logits, b.logits)
    for u, v in zip(a.past_key_values.get_state(1)["cms"], b.past_key_values.get_state(1)["cms"]):
        assert all(torch.equal(p, q) for p, q in zip(u["theta"] + u["grad"], v["theta"] + v["grad"]))
        assert torch.equal(u["commits"], v["commits"])
    # the pending position (taught when the next call brings its next token): the same rows, every sample has one,
    # and the static path's cache keeps copies of them, not views that would keep the last span's tensors alive
    sa, sb = a.past_key_values.model_state, b.past_key_values.model_state
    assert torch.equal(sa["h_pend"], sb["h_pend"]) and torch.equal(sa["pend_valid"], sb["pend_valid"])
    assert sa["pend_valid"].all()
    pending = [sa["h_pend"]]
    for u, v in zip(a.past_key_values.get_state(1)["cms"], b.past_key_values.get_state(1)["cms"]):
        assert torch.equal(u["x_pend"], v["x_pend"])
        pending.append(u["x_pend"])
    assert all(t.untyped_storage().nbytes() == t.nbytes for t in pending)


def test_value_checks_still_raise_in_eager_mode():
    model = causal_lm().eval()
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(ids() + 99)


# ------------------------------------------------------------------------------- pipelines and resizing


def test_text_generation_pipeline_batched_and_return_full_text(tokenizer):
    torch.manual_seed(0)
    model = HopeForCausalLM(config(vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=1, eos_token_id=2))
    pipe = pipeline("text-generation", model=model.eval(), tokenizer=tokenizer)
    prompts = ["The json module", "Return a new iterator over"]
    kw = dict(max_new_tokens=5, do_sample=False)
    batched = pipe(prompts, batch_size=2, **kw)
    new_only = pipe(prompts, batch_size=2, return_full_text=False, **kw)
    for p, full, new in zip(prompts, batched, new_only):
        alone = pipe(p, **kw)[0]["generated_text"]
        assert full[0]["generated_text"] == alone
        assert alone.startswith(p) and alone == p + new[0]["generated_text"]


@pytest.mark.parametrize("tie", [True, False])
def test_resize_token_embeddings_keeps_the_teach_signal_on_the_resized_head(tie):
    """After resizing, new ids work and the model equals a fresh model of the new size with the same weights
    (the teach signal reads the resized head, not a stale one)."""
    model = causal_lm(tie_word_embeddings=tie).eval()
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120 and model.get_output_embeddings().weight.shape[0] == 120
    x = ids(T=9, vocab=120)
    x[:, 3] = 110
    fresh = HopeForCausalLM(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, b = model(x, use_cache=True), fresh(x, use_cache=True)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    assert a.logits.shape[-1] == 120
    base = HopeModel(config(tie_word_embeddings=tie))        # untied: the bare model's own head is resized too
    base.resize_token_embeddings(120)
    assert (base.get_output_embeddings() is None) == tie
    with torch.no_grad():
        base(x)
