"""Model cards (`hope_hf.cards`) and the chat example (`examples/chat_with_memory.py`) with a resumed memory session."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from hope_hf import HopeCache, HopeConfig, HopeForCausalLM
from hope_hf.cards import FIELD_DOCS, config_fields, render_model_card, write_model_card

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LINE = re.compile(r"\[memory\] (\d+) tokens consumed; CMS commits per level .*: (layer 0: \[.*)")


def _tiny_config(tokenizer):
    return HopeConfig.from_preset("tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


# ------------------------------------------------------------------------------------------------------ cards


def test_card_has_front_matter_architecture_every_field_and_limitations():
    from huggingface_hub import ModelCard

    config = HopeConfig.from_preset("tiny", vocab_size=2048)
    card = render_model_card(config, eval_results={"validation perplexity": 12.5}, training={"steps": 7},
                             model_name="hope-test")
    meta = ModelCard(card).data
    assert meta.library_name == "transformers" and meta.pipeline_tag == "text-generation"
    assert meta.tags == ["hope", "nested-learning", "titans", "continuum-memory-system", "custom_code"]
    assert "{{" not in card and "}}" not in card
    assert "# hope-test" in card and "Hope" in card and "arXiv:2512.24695" in card
    assert "Titans" in card and "Continuum Memory System" in card
    hope_fields = set(config.to_diff_dict()) - {"transformers_version", "model_type"}
    assert hope_fields <= set(config_fields()) == set(FIELD_DOCS)
    for name in config_fields():
        assert f"| `{name}` |" in card, name
    assert "| `cms_chunk_sizes` | `[64, 256]` |" in card
    assert "Each step writes\n  only their second layer (the first stays a meta-learned feature map)." in card
    literal = render_model_card(HopeConfig.from_preset("tiny", memory_writes_first_layer=True))
    assert "Each step writes\n  both layers of every memory." in literal
    n_params = sum(p.numel() for p in HopeForCausalLM(config).parameters())
    assert f"{n_params:,}" in card                               # counted on the meta device
    assert "| validation perplexity | 12.5 |" in card and "**steps:** 7" in card
    assert "trust_remote_code=True" in card and "import hope_hf" in card and "past_key_values=cache" in card
    limits = card.split("## Limitations", 1)[1]
    for phrase in ("neither Google's code", "does not publish", "unit-norm", "convolution", "teach", "per-head",
                   "slower than an", "low-quality"):
        assert phrase in limits, phrase


def test_card_without_results_says_so():
    card = render_model_card(HopeConfig.from_preset("tiny", cms_chunk_sizes=[]), num_parameters=123)
    assert "No evaluation results reported." in card and "Not reported" in card
    assert "**Parameters:** 123 " in card and "no CMS levels" in card


def test_write_model_card_writes_readme(tmp_path, tokenizer):
    model = HopeForCausalLM(_tiny_config(tokenizer))
    out = tmp_path / "my-hope"
    model.save_pretrained(out)
    path = write_model_card(out, model, eval_results=[{"dataset": "x", "metric": "loss", "value": 1.5}])
    assert path == out / "README.md" and path.is_file()
    text = path.read_text()
    assert text == render_model_card(model.config, num_parameters=sum(p.numel() for p in model.parameters()),
                                     eval_results=[{"dataset": "x", "metric": "loss", "value": 1.5}],
                                     model_name="my-hope")
    assert "| dataset | metric | value |" in text and "| x | loss | 1.5 |" in text
    assert (out / "config.json").is_file()                          # the checkpoint is untouched


def test_template_is_package_data_and_model_cards_dir_is_generated():
    from importlib.resources import files

    from hope_hf.demo import training_info

    assert files("hope_hf").joinpath("model_card_template.md").is_file()
    assert 'hope_hf = ["*.md"]' in (ROOT / "pyproject.toml").read_text()
    demo = (ROOT / "model_cards" / "demo-tiny.md").read_text()
    assert demo == render_model_card(HopeConfig.from_preset("tiny", vocab_size=2048), model_name="hope-demo-tiny",
                                     training=training_info(150))


# ------------------------------------------------------------------------------------------------------ chat


def _load_chat():
    spec = importlib.util.spec_from_file_location("chat_with_memory", ROOT / "examples" / "chat_with_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory, tokenizer):
    """A randomly initialised tiny Hope + the 300-token tokenizer, saved as the demo saves them."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("chat-model")
    HopeForCausalLM(_tiny_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _memory_lines(printed):
    return [(int(m.group(1)), m.group(2)) for m in MEMORY_LINE.finditer(printed)]


def test_chat_resumes_a_saved_session(chat_checkpoint, tmp_path, capsys):
    chat = _load_chat()
    session = tmp_path / "s" / "chat.safetensors"
    common = ["--model", str(chat_checkpoint), "--max-new-tokens", "24"]

    cache = chat.main([*common, "--session", str(session), "--turn", "The json module", "--turn", "Ordered dicts"])
    first = capsys.readouterr().out
    assert first.count("hope> ") == 2
    mem = _memory_lines(first)
    assert len(mem) == 2 and 0 < mem[0][0] < mem[1][0] == cache.get_seq_length()
    assert "layer 1: [" in mem[1][1]
    ids = json.loads(chat.ids_path(session).read_text())["ids"]
    assert len(ids) == mem[1][0] + 1                                 # the last generated token is not yet read
    assert HopeCache.load(session).get_seq_length() == mem[1][0]
    commits = cache.cms_update_counts()[:, :, 0].tolist()
    assert mem[1][1] == "; ".join(f"layer {i}: {c}" for i, c in enumerate(commits))

    script = tmp_path / "turns.txt"
    script.write_text("Named tuples\n\n")
    cache2 = chat.main([*common, "--session", str(session), "--script", str(script)])
    second = capsys.readouterr().out
    assert f"{len(ids)} conversation tokens" in second
    mem2 = _memory_lines(second)
    assert mem2[0] == mem[1]                                         # the resumed memory, before the new turn
    assert len(mem2) == 2 and mem2[1][0] > mem[1][0] == mem2[0][0]
    assert json.loads(chat.ids_path(session).read_text())["ids"][: len(ids)] == ids

    # one uninterrupted run of the same three turns ends in the same memory and the same replies
    cache3 = chat.main([*common, "--turn", "The json module", "--turn", "Ordered dicts", "--turn", "Named tuples"])
    whole = capsys.readouterr().out
    replies = re.findall(r"hope> .*", whole)
    assert replies == re.findall(r"hope> .*", first) + re.findall(r"hope> .*", second)
    assert _memory_lines(whole)[-1] == mem2[1]
    assert torch.equal(cache3.cms_update_counts(), cache2.cms_update_counts())


def test_chat_reads_stdin_until_quit(chat_checkpoint, monkeypatch, capsys):
    import io

    chat = _load_chat()
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/quit\nnever read\n"))
    cache = chat.main(["--model", str(chat_checkpoint), "--max-new-tokens", "4"])
    printed = capsys.readouterr().out
    assert printed.count("hope> ") == 1 and len(_memory_lines(printed)) == 1
    assert cache.get_seq_length() > 0
