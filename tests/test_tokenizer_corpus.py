"""The offline corpus (stdlib docstrings) and the byte-level BPE tokenizer trained on it."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hope_hf.corpus import module_docs, stdlib_docs_text, stdlib_module_names
from hope_hf.tokenizer import train_bpe_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus():
    return stdlib_docs_text()


def _digest(docs):
    return hashlib.sha256("\x00".join(docs).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# corpus


def test_corpus_is_large_real_text(corpus):
    assert len(corpus) > 500
    assert sum(map(len, corpus)) > 200_000
    assert all(isinstance(d, str) and d and d == d.strip() for d in corpus)
    # real prose from well-known modules is in there
    joined = "\n".join(corpus)
    assert "JSON" in joined and "ordered" in joined.lower()


def test_corpus_has_no_duplicates(corpus):
    assert len(set(corpus)) == len(corpus)


def test_corpus_is_deterministic_in_process(corpus):
    assert stdlib_docs_text() == corpus


def test_corpus_is_deterministic_across_processes_and_fast(corpus):
    code = (
        "import hashlib, json, time\n"
        "from hope_hf.corpus import stdlib_docs_text\n"
        "t = time.perf_counter(); docs = stdlib_docs_text(); dt = time.perf_counter() - t\n"
        "print(json.dumps({'digest': hashlib.sha256(chr(0).join(docs).encode()).hexdigest(), 'seconds': dt}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["digest"] == _digest(corpus)
    assert out["seconds"] < 10.0


def test_module_selection():
    names = stdlib_module_names()
    assert names == sorted(names)
    assert {"json", "pathlib", "collections", "functools"} <= set(names)
    for name in names:
        assert not name.startswith("_")
        assert name.split(".")[0] not in {"test", "idlelib", "tkinter", "turtle", "turtledemo", "antigravity",
                                          "this"}
    # C / builtin modules are not "pure Python"
    assert "sys" not in names and "itertools" not in names and "math" not in names


def test_max_chars_truncates_to_a_prefix(corpus):
    small = stdlib_docs_text(max_chars=5_000)
    assert sum(map(len, small)) == 5_000
    assert small[:-1] == corpus[: len(small) - 1]
    assert corpus[len(small) - 1].startswith(small[-1])
    assert stdlib_docs_text(max_chars=10**9) == corpus


def test_module_docs_reads_members():
    import json as json_mod

    docs = module_docs(json_mod)
    assert docs[0].startswith("JSON (JavaScript Object Notation)")
    assert any(d.startswith("Serialize ``obj``") for d in docs)  # json.dumps / json.dump
    assert all(docs)


# ---------------------------------------------------------------------------------------------------------------
# tokenizer


def test_tokenizer_size_and_special_ids(tokenizer):
    assert len(tokenizer) == 300
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<s>", "</s>"]
    assert tokenizer("<s>hi</s>")["input_ids"][0] == 1
    assert tokenizer("<s>hi</s>")["input_ids"][-1] == 2


ROUND_TRIP = [
    "The json module: dumps(obj, indent=4) -> str.",
    "  leading spaces, trailing spaces  ",
    "tabs\tand\nnew\nlines\r\n and  double  spaces . , ;",
    "unicode: ü, é, 日本語, emoji \U0001F600, zero-width\u200b",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert all(i not in (0, 1, 2) for i in ids)  # no special tokens are added implicitly
    assert tokenizer.decode(ids) == text


def test_tokenizer_round_trips_training_text_and_compresses(tokenizer, tokenizer_texts):
    text = "\n\n".join(tokenizer_texts)
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < 0.8 * len(text.encode())  # merges were learned (pure bytes would be 1.0)


def test_tokenizer_training_is_deterministic(tokenizer, tokenizer_texts):
    again = train_bpe_tokenizer(tokenizer_texts, vocab_size=300)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_tokenizer_pads_with_pad_id(tokenizer):
    batch = tokenizer(["short", "a somewhat longer text"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2
    assert (batch["input_ids"][0][batch["attention_mask"][0] == 0] == 0).all()
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()


def test_tokenizer_rejects_too_small_vocab(tokenizer_texts):
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(tokenizer_texts, vocab_size=200)


def test_tokenizer_save_and_autotokenizer_reload_offline(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tokenizer)
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<pad>", "<s>", "</s>")
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    for text in ROUND_TRIP:
        ids = tokenizer(text)["input_ids"]
        assert loaded(text)["input_ids"] == ids
        assert loaded.decode(ids) == text


def test_demo_size_tokenizer_on_stdlib_corpus():
    docs = stdlib_docs_text(max_chars=300_000)
    tok = train_bpe_tokenizer(docs, vocab_size=2048)
    assert len(tok) == 2048
    sample = docs[0]
    assert tok.decode(tok(sample)["input_ids"]) == sample
