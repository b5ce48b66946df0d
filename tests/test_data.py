"""hope_hf.data: loading, packing, validation split, per-rank sharding, resumable batches, and bad-input errors."""

import json

import datasets
import pytest
import torch

from hope_hf import HopeConfig
from hope_hf.data import (
    check_seq_len,
    check_text_column,
    idle_cms_levels,
    iter_batches,
    load_text_dataset,
    prepare_blocks,
    sequence_unit,
)

SEQ = 64


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, tokenizer_texts):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(tokenizer_texts))
    return path


def _rows(t):
    return {tuple(r) for r in t.tolist()}


def test_sequence_length_must_fit_the_config():
    tiny = HopeConfig.from_preset("tiny")
    assert sequence_unit(tiny) == 64
    check_seq_len(tiny, 128)
    check_seq_len(tiny, 128, segments=2)
    with pytest.raises(ValueError, match="multiple of 64.*smallest CMS chunk"):
        check_seq_len(tiny, 100)
    with pytest.raises(ValueError, match="multiple of 128.*2 TBPTT segments"):
        check_seq_len(tiny, 192, segments=2)
    no_cms = HopeConfig.from_preset("tiny", cms_chunk_sizes=[], memory_chunk_size=16, projection_chunk_size=16)
    assert sequence_unit(no_cms) == 16
    check_seq_len(no_cms, 48)
    with pytest.raises(ValueError, match="memory_chunk_size"):
        check_seq_len(no_cms, 40)


def test_cms_levels_that_cannot_commit_in_a_training_block_are_reported():
    """A level commits its chunk [s, s+C) when position s+C is read, so it needs blocks longer than C; TBPTT segments
    do not matter (the commit at a segment's first position is on that segment's graph: its rate gets a gradient)."""
    tiny = HopeConfig.from_preset("tiny")                       # CMS chunks 64, 256
    assert idle_cms_levels(tiny, 256) == [256]
    assert idle_cms_levels(tiny, 512) == []
    assert idle_cms_levels(tiny, 128) == [256]
    assert idle_cms_levels(HopeConfig.from_preset("tiny", cms_chunk_sizes=[]), 64) == []


def test_hub_dataset_offline_gets_a_clear_error():
    with pytest.raises(ValueError, match="could not load the dataset 'no-such-user/no-such-data'.*HF_HUB_OFFLINE"):
        load_text_dataset("no-such-user/no-such-data")


def test_missing_text_column_names_the_available_ones(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"content": f"doc {i}", "id": i}) + "\n" for i in range(4)))
    for streaming in (False, True):
        ds = load_text_dataset(str(path), streaming=streaming)
        with pytest.raises(ValueError, match="text column 'text' not found; available columns: 'content', 'id'"):
            check_text_column(ds, "text")


def test_empty_or_tiny_corpus_is_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="empty or too small"):
        prepare_blocks(datasets.Dataset.from_dict({"text": []}), tokenizer, SEQ)
    with pytest.raises(ValueError, match="empty or too small"):
        prepare_blocks(datasets.Dataset.from_dict({"text": ["short", ""]}), tokenizer, SEQ)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty|no data"):
        prepare_blocks(load_text_dataset(str(empty)), tokenizer, SEQ)
    with pytest.raises(ValueError, match="corpus is empty"):
        prepare_blocks(load_text_dataset(str(empty), streaming=True), tokenizer, SEQ, val_blocks=2)


def test_packing_split_and_sharding(text_file, tokenizer):
    ds = load_text_dataset(str(text_file))
    ranks = [prepare_blocks(ds, tokenizer, SEQ, val_blocks=4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    (a, b) = ranks
    assert a.val.shape == (4, SEQ) and torch.equal(a.val, b.val)
    train_a, train_b = a.train[:]["input_ids"], b.train[:]["input_ids"]
    assert train_a.shape[1] == SEQ and abs(len(train_a) - len(train_b)) <= 1
    assert len(train_a) + len(train_b) == a.num_train
    assert not _rows(train_a) & _rows(train_b), "ranks must see different blocks"
    assert not _rows(a.val) & (_rows(train_a) | _rows(train_b)), "validation blocks are held out"
    eos = tokenizer.eos_token_id
    assert (train_a == eos).any(), "documents are joined with EOS"


def test_batches_are_deterministic_and_resumable(text_file, tokenizer):
    blocks = prepare_blocks(load_text_dataset(str(text_file)), tokenizer, SEQ, val_blocks=2)
    per_epoch = len(blocks.train) // 8
    it = iter_batches(blocks.train, 8, seed=1)
    first = [next(it) for _ in range(per_epoch + 2)]  # crosses an epoch boundary
    assert all(b.shape == (8, SEQ) and b.dtype == torch.long for b in first)
    assert not torch.equal(first[0], first[per_epoch]), "each epoch is reshuffled"
    for start in (1, per_epoch - 1, per_epoch + 1):
        assert torch.equal(next(iter_batches(blocks.train, 8, seed=1, start=start)), first[start])


def test_streaming_local_file_is_sharded_and_resumable(text_file, tokenizer):
    ds = load_text_dataset(str(text_file), streaming=True)
    assert isinstance(ds, datasets.IterableDataset)
    a, b = (prepare_blocks(ds, tokenizer, SEQ, val_blocks=3, rank=r, world_size=2) for r in (0, 1))
    assert a.val.shape == (3, SEQ) and torch.equal(a.val, b.val) and a.num_train is None
    it_a, it_b = iter_batches(a.train, 4), iter_batches(b.train, 4)
    batches_a = [next(it_a) for _ in range(3)]
    assert not _rows(torch.cat(batches_a)) & _rows(torch.cat([next(it_b) for _ in range(3)]))
    assert torch.equal(next(iter_batches(a.train, 4, start=2)), batches_a[2])


def test_embedded_corpus_is_the_default():
    ds = load_text_dataset()
    assert isinstance(ds, datasets.Dataset) and ds.column_names == ["text"] and len(ds) > 1000
