"""generate() with the memory carried in a HopeCache: continuation == one long call, beams, padding, sessions,
remote code and pipelines."""

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import pipeline

import hope_hf  # noqa: F401
from hope_hf import HopeCache, HopeConfig, HopeForCausalLM
from hope_hf.modeling_hope import CACHE_FIELD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def visible_model(seed=0, **kw):
    """Initialised large enough that the carried state moves the logits by O(1) (a reset cache is detected)."""
    base = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, memory_hidden_size=8,
                projection_chunk_size=4, memory_chunk_size=8, cms_chunk_sizes=[16, 32], cms_intermediate_size=32,
                initializer_range=0.1, cms_lr_init=0.05, memory_lr_max=0.2, cms_out_scale_init=1.0, pad_token_id=0,
                bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return HopeForCausalLM(HopeConfig(**{**base, **kw})).eval()


def ids(B, T, seed=1):
    return torch.randint(3, 300, (B, T), generator=torch.Generator().manual_seed(seed))


def gen(model, x, **kw):
    """Greedy generate with logits; a `past_key_values=` cache is passed under transformers' current name."""
    if "past_key_values" in kw:
        kw[CACHE_FIELD] = kw.pop("past_key_values")
    args = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True, pad_token_id=0,
                eos_token_id=None)
    return model.generate(x, **{**args, **kw})


def assert_logits_equal(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_greedy_continuation_equals_one_long_call():
    model = visible_model()
    prompt, more = ids(2, 21), ids(2, 13, seed=2)
    first = gen(model, prompt)
    assert isinstance(first.past_key_values, HopeCache)
    history = torch.cat([first.sequences, more], 1)
    cont = gen(model, history, past_key_values=first.past_key_values)
    fresh = gen(model, history)
    assert torch.equal(cont.sequences, fresh.sequences)
    assert_logits_equal(cont.logits, fresh.logits)
    # the state matters: a reset memory (only the new tokens, fresh cache) gives other logits
    reset = gen(model, more)
    assert (reset.logits[0] - fresh.logits[0]).abs().max() > 1e-2


def test_user_owned_cache_is_filled_in_place():
    model = visible_model()
    prompt, more = ids(1, 17), ids(1, 9, seed=3)
    cache = HopeCache(model.config)
    s1 = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0, **{CACHE_FIELD: cache})
    assert cache.get_seq_length() == s1.shape[1] - 1
    history = torch.cat([s1, more], 1)
    cont = gen(model, history, past_key_values=cache)
    assert cont.past_key_values is cache
    assert_logits_equal(cont.logits, gen(model, history).logits)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_equals_uncached(num_beams):
    model = visible_model()
    x = ids(2, 19)
    a = gen(model, x, num_beams=num_beams)
    b = gen(model, x, num_beams=num_beams, use_cache=False)
    assert torch.equal(a.sequences, b.sequences)
    assert_logits_equal(a.logits, b.logits)


def test_beam_search_continuation_equals_one_long_call():
    model = visible_model()
    prompt, more = ids(1, 15), ids(1, 7, seed=4)
    first = gen(model, prompt)
    history = torch.cat([first.sequences, more], 1)
    cache = first.past_key_values
    cache.batch_repeat_interleave(2)                        # generate expands inputs for beams, not a user cache
    cont = gen(model, history, past_key_values=cache, num_beams=2)
    fresh = gen(model, history, num_beams=2)
    assert torch.equal(cont.sequences, fresh.sequences)
    assert_logits_equal(cont.logits, fresh.logits)


def test_left_padded_batch_generation_equals_each_prompt_alone():
    model = visible_model()
    a, b = ids(1, 20), ids(1, 11, seed=5)
    x = torch.cat([a, torch.cat([torch.zeros(1, 9, dtype=torch.long), b], 1)])
    mask = torch.ones_like(x)
    mask[1, :9] = 0
    batch = gen(model, x, attention_mask=mask)
    for i, p in enumerate((a, b)):
        alone = gen(model, p)
        assert torch.equal(batch.sequences[i, -6:], alone.sequences[0, -6:])
        assert_logits_equal([lg[i:i + 1] for lg in batch.logits], alone.logits)
    # continue the padded batch from its cache: still equal to each prompt's own continuation
    more = ids(2, 5, seed=6)
    hist = torch.cat([batch.sequences, more], 1)
    cont = gen(model, hist, attention_mask=torch.cat([mask, torch.ones(2, hist.shape[1] - mask.shape[1],
                                                                       dtype=torch.long)], 1),
               past_key_values=batch.past_key_values)
    for i, p in enumerate((a, b)):
        own = torch.cat([p, batch.sequences[i:i + 1, x.shape[1]:], more[i:i + 1]], 1)
        assert_logits_equal([lg[i:i + 1] for lg in cont.logits], gen(model, own).logits)


def test_sampling_streamer_inputs_embeds_and_num_return_sequences():
    from transformers import LogitsProcessorList, MinLengthLogitsProcessor, StoppingCriteriaList
    from transformers.generation.stopping_criteria import MaxLengthCriteria

    model = visible_model()
    x = ids(2, 12)
    torch.manual_seed(0)
    out = model.generate(x, do_sample=True, top_k=20, top_p=0.9, temperature=0.8, max_new_tokens=5,
                         num_return_sequences=2, pad_token_id=0,
                         logits_processor=LogitsProcessorList([MinLengthLogitsProcessor(15, eos_token_id=2)]),
                         stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(max_length=16)]))
    assert out.shape == (4, 16)
    emb = model.get_input_embeddings()(x)
    a = gen(model, None, inputs_embeds=emb)
    b = gen(model, x)
    assert torch.equal(a.sequences, b.sequences[:, x.shape[1]:])
    assert_logits_equal(a.logits, b.logits)


def test_text_streamer_prints_the_generated_text(tokenizer, capsys):
    from transformers import TextStreamer

    model = visible_model(vocab_size=len(tokenizer))
    x = tokenizer("The json module", return_tensors="pt").input_ids
    out = model.generate(x, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None,
                         streamer=TextStreamer(tokenizer, skip_prompt=True))
    printed = capsys.readouterr().out
    assert printed.strip() == tokenizer.decode(out[0, x.shape[1]:]).strip()


def test_generation_misuse_gets_clear_errors():
    model = visible_model()
    prompt = ids(1, 12)
    first = gen(model, prompt)
    with pytest.raises(ValueError, match="whole conversation"):
        gen(model, ids(1, 4, seed=9), past_key_values=copy.deepcopy(first.past_key_values))
    consumed = model(input_ids=prompt, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="already consumed"):
        gen(model, prompt, past_key_values=consumed)
    other = visible_model(hidden_size=64)
    with pytest.raises(ValueError, match="different Hope config"):
        gen(other, prompt, past_key_values=HopeCache(model.config))
    with pytest.raises(ValueError, match="batch_repeat_interleave"):
        gen(model, torch.cat([first.sequences, prompt], 1), past_key_values=first.past_key_values, num_beams=2)
    with pytest.raises(ValueError, match="(?i)assist"):
        model.generate(prompt, prompt_lookup_num_tokens=2, max_new_tokens=3)


def _run(code, cwd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_memory_session_restored_in_a_new_process(tmp_path):
    model = visible_model()
    model.save_pretrained(tmp_path / "model")
    prompt, more = ids(1, 23), ids(1, 6, seed=7)
    first = gen(model, prompt)
    first.past_key_values.save(tmp_path / "session.safetensors")
    history = torch.cat([first.sequences, more], 1)
    torch.save(history, tmp_path / "history.pt")
    expected = gen(model, history)
    _run(f"""
        import torch, hope_hf
        from hope_hf import HopeCache
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'model')!r}).eval()
        c = HopeCache.load({str(tmp_path / 'session.safetensors')!r}, config=m.config)
        h = torch.load({str(tmp_path / 'history.pt')!r})
        out = m.generate(h, past_key_values=c, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                         output_logits=True, pad_token_id=0, eos_token_id=None)
        torch.save(torch.stack(out.logits), {str(tmp_path / 'logits.pt')!r})
    """, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), torch.stack(expected.logits), rtol=1e-5,
                               atol=1e-5)
    other = visible_model(memory_hidden_size=16)
    with pytest.raises(ValueError, match=r"another config \(differing: memory_hidden_size;"):
        HopeCache.load(tmp_path / "session.safetensors", config=other.config)
    old = first.past_key_values                      # a session saved before memory_writes_first_layer existed
    old.config_signature = tuple(kv for kv in old.config_signature if kv[0] != "memory_writes_first_layer")
    old.save(tmp_path / "old.safetensors")
    with pytest.raises(ValueError, match=r"differing: memory_writes_first_layer; a session saved before"):
        HopeCache.load(tmp_path / "old.safetensors", config=model.config)


BLOCK_HOPE = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hope_hf" or name.startswith("hope_hf."):
            raise ImportError("hope_hf is blocked in this test")
sys.meta_path.insert(0, _Block())
"""


def test_remote_code_loads_without_the_package(tmp_path):
    model = visible_model()
    model.save_pretrained(tmp_path / "model")
    import json
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    for f in ("configuration_hope.py", "modeling_hope.py", "memory_hope.py", "cache_hope.py"):
        assert (tmp_path / "model" / f).exists()
    x = ids(1, 20)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(input_ids=x).logits
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = _run(BLOCK_HOPE + f"""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, pipeline
        m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True).eval()
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            torch.save(m(input_ids=x).logits, {str(tmp_path / 'remote.pt')!r})
        g = m.generate(x, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
        print(type(m).__module__, type(g.past_key_values).__name__, type(g.past_key_values).__module__)
        base = AutoModel.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True)
        print(type(base).__name__)
    """.replace("\n        ", "\n"), cwd=work)
    # the same computation in a process of the same kind with the installed package: bit-identical logits
    _run(f"""
        import torch, hope_hf
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'model')!r}).eval()
        with torch.no_grad():
            torch.save(m(input_ids=torch.load({str(tmp_path / 'x.pt')!r})).logits, {str(tmp_path / 'local.pt')!r})
    """, cwd=work)
    assert torch.equal(torch.load(tmp_path / "remote.pt"), torch.load(tmp_path / "local.pt"))
    torch.testing.assert_close(torch.load(tmp_path / "remote.pt"), expected, rtol=1e-5, atol=1e-5)
    assert "transformers_modules" in out and "HopeCache" in out and "HopeModel" in out
    assert "hope_hf" not in out.split()[0]


def test_text_generation_pipeline(tmp_path, tokenizer):
    model = visible_model(vocab_size=len(tokenizer))
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    single = pipe("The json module", max_new_tokens=5, do_sample=False)
    assert single[0]["generated_text"].startswith("The json module")
    batched = pipe(["The json module", "Return a new"], max_new_tokens=5, do_sample=False, batch_size=2)
    alone = pipe("Return a new", max_new_tokens=5, do_sample=False)
    assert batched[1][0]["generated_text"] == alone[0]["generated_text"]
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    from_dir = pipeline("text-generation", model=str(tmp_path / "m"))
    assert from_dir("The json module", max_new_tokens=5, do_sample=False) == single
    out = _run(BLOCK_HOPE + f"""
        from transformers import pipeline
        p = pipeline("text-generation", model={str(tmp_path / 'm')!r}, trust_remote_code=True)
        print(p("The json module", max_new_tokens=5, do_sample=False)[0]["generated_text"])
    """.replace("\n        ", "\n"), cwd=tmp_path)
    assert out.strip() == single[0]["generated_text"]
