"""`python -m hope_hf.demo`: block packing (fast) and a short end-to-end run (slow)."""

import pytest
import torch

from hope_hf.demo import pack_blocks


def test_pack_blocks_joins_documents_with_eos(tokenizer):
    docs = ["The json module.", "Ordered dictionaries remember insertion order.", "x" * 50]
    blocks = pack_blocks(docs, tokenizer, seq_len=8)
    stream = [i for d in docs for i in (*tokenizer(d, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)]
    assert blocks.dtype == torch.long and blocks.shape == (len(stream) // 8, 8)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]  # remainder dropped, order kept
    assert (blocks == tokenizer.eos_token_id).sum() >= 2


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hope_hf  # noqa: F401 - registers the Auto classes
    from hope_hf.demo import PROMPT, main

    out_dir = tmp_path / "demo"
    path = main(["--steps", "2", "--output-dir", str(out_dir)])
    printed = capsys.readouterr().out
    assert path == out_dir.resolve()
    assert f"checkpoint: {out_dir.resolve()}" in printed
    assert "val loss" in printed and "greedy sample: 'The json module" in printed

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "HopeForCausalLM"
    assert model.config.vocab_size == len(tok) == 2048
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == (0, 1, 2)
    ids = tok(PROMPT, return_tensors="pt", return_token_type_ids=False)["input_ids"]
    gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] <= ids.shape[1] + 5 and torch.equal(gen[:, : ids.shape[1]], ids)
