"""Training data for Hope: load a text corpus, tokenize and pack it into fixed-length blocks, split and shard it.

Package-only module. Sources (`load_text_dataset`):

- `None` / `"stdlib"`: the embedded corpus, the docstrings of Python's standard library (`hope_hf.corpus`);
- a local file, directory or glob of `.txt`/`.md` (one row per line), `.json`/`.jsonl`, `.csv` or `.parquet` files;
- anything else is a Hub dataset name for `datasets.load_dataset` (with an optional config and split).

`prepare_blocks` packs the documents (joined by the tokenizer's EOS) into `seq_len`-token blocks with a batched
`datasets.map`, holds some blocks out for validation and gives each process its own shard of the training blocks
(`datasets.distributed.split_dataset_by_node`). `iter_batches` then yields deterministic micro-batches that can
start at any index, so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from hope_hf.cli import local_or_hub

EMBEDDED = "stdlib"
_BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".csv": "csv",
             ".parquet": "parquet"}
_PACK_BATCH = 1000  # documents per datasets.map batch at least (each batch drops < seq_len tokens at its end)
_PACK_BLOCKS = 16  # map-style: a batch holds about this many blocks at least, so long blocks pack too


def sequence_unit(config) -> int:
    """The granularity a training sequence length must be a multiple of: the smallest CMS chunk
    (`config.span_size`), or `memory_chunk_size` when the config has no CMS."""
    return config.span_size or config.memory_chunk_size


def check_seq_len(config, seq_len: int, segments: int = 1) -> None:
    """Raise `ValueError` unless each of the `segments` equal pieces of a `seq_len` block is a whole number of
    `sequence_unit(config)` tokens."""
    unit = sequence_unit(config)
    what = "the smallest CMS chunk (span_size)" if config.span_size else "memory_chunk_size (no CMS)"
    if segments < 1:
        raise ValueError(f"the number of TBPTT segments must be >= 1, got {segments}")
    if seq_len < 1 or seq_len % (unit * segments):
        hint = f" x {segments} TBPTT segments" if segments > 1 else ""
        raise ValueError(
            f"sequence length {seq_len} does not fit this config: it must be a positive multiple of {unit * segments} "
            f"({what} = {unit}{hint}), e.g. {unit * segments * max(1, seq_len // (unit * segments))}")


def idle_cms_levels(config, seq_len: int) -> list[int]:
    """The CMS chunk sizes that never commit while training on `seq_len`-token blocks.

    A level's chunk [s, s + C) is committed when position s + C is read, so a level commits inside a block of n
    tokens only if C < n; otherwise its fast weights stay theta_0 and its learning rate gets no gradient in training,
    although the level does commit at inference on longer texts. TBPTT segments do not change this: the token count
    runs on across a block's segments, and a commit at a segment's first position is on that segment's graph."""
    return [C for C in config.cms_chunk_sizes if C >= seq_len]


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _local_files(source: str) -> list[str] | None:
    """The data files `source` names on disk (a file, a directory or a glob), or None if it names none."""
    path = Path(source).expanduser()
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _BUILDERS)
    if path.is_file():
        return [str(path)]
    matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
    return [m for m in matches if os.path.isfile(m)] or None


def _builder_for(files: list[str]) -> str:
    kinds = {_BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(f"cannot read {files}: use files of one kind, with an extension among {sorted(_BUILDERS)}")
    return kinds.pop()


def embedded_dataset() -> datasets.Dataset:
    """The embedded default corpus (stdlib docstrings, one document per row) as a `datasets.Dataset`."""
    from hope_hf.corpus import stdlib_docs_text

    return datasets.Dataset.from_dict({"text": stdlib_docs_text()})


def load_text_dataset(source: str | None = None, config_name: str | None = None, split: str = "train",
                      streaming: bool = False):
    """Load a corpus (see the module docstring) as a `Dataset`, or an `IterableDataset` when `streaming`."""
    if source in (None, "", EMBEDDED):
        ds = embedded_dataset()
        return ds.to_iterable_dataset() if streaming else ds
    files = _local_files(source)
    if files is None:
        local_or_hub(source)  # a local-looking name that names nothing: "no such file or directory", not the Hub
    else:
        if not files:
            raise ValueError(f"{source!r} contains no data files with an extension among {sorted(_BUILDERS)}")
        try:
            return datasets.load_dataset(_builder_for(files), data_files=files, split="train", streaming=streaming)
        except datasets.exceptions.DatasetGenerationError as e:
            raise ValueError(f"could not read {source!r}: the data files are empty or malformed "
                             f"({type(e.__cause__ or e).__name__}: {e.__cause__ or e})") from e
        except ValueError as e:  # e.g. a CSV with only a header: 'Instruction "train" corresponds to no data!'
            raise ValueError(f"could not read {source!r}: it holds no rows (an empty file, or a CSV/JSON without "
                             f"records) ({e})") from e
    try:
        return datasets.load_dataset(source, config_name, split=split, streaming=streaming)
    except Exception as e:
        if _offline():
            hint = ("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, so only datasets already in the local cache can "
                    "be loaded")
        else:
            hint = "it is neither a local file or directory nor a dataset the Hub could provide"
        raise ValueError(
            f"could not load the dataset {source!r} (config {config_name!r}, split {split!r}): {hint}. Pass a local "
            f"file/directory, or leave the dataset unset for the embedded corpus. ({type(e).__name__}: {e})") from e


def _column_names(ds) -> list[str]:
    names = ds.column_names
    if names is None:  # a streaming dataset whose features are only known after reading
        first = next(iter(ds.take(1)), None)
        names = [] if first is None else list(first)
    return list(names)


def check_text_column(ds, column: str, source: str | None = None) -> list[str]:
    """Raise `ValueError` if `column` is not in `ds` (named `source` in the message); returns the column names."""
    names = _column_names(ds)
    where = f" {source!r}" if source else ""
    if not names:
        raise ValueError(f"the corpus{where} is empty: the dataset has no rows")
    if column not in names:
        raise ValueError(f"text column {column!r} not found; available columns: {', '.join(map(repr, names))} "
                         f"(in the corpus{where})")
    return names


def pack_texts(batch: dict, tokenizer, text_column: str, seq_len: int) -> dict:
    """`datasets.map` function: tokenize a batch of documents, join them (EOS-separated) and cut `seq_len` blocks.

    The tail of each batch that does not fill a block is dropped."""
    texts = [t if isinstance(t, str) else "" for t in batch[text_column]]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if ids for i in (*ids, *eos)]
    return {"input_ids": [stream[i: i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]}


def pack_batch_size(ds, tokenizer, text_column: str, seq_len: int) -> int:
    """Documents per packing batch: `_PACK_BATCH`, or more for a map-style dataset whose batch would hold fewer than
    `_PACK_BLOCKS` blocks (estimated from its first 100 documents), since each batch drops its last partial block:
    with 1000 short documents per batch a long block would never fill."""
    if not isinstance(ds, datasets.Dataset) or len(ds) == 0:
        return _PACK_BATCH
    head = [t if isinstance(t, str) else "" for t in ds.select(range(min(len(ds), 100)))[text_column]]
    tokens = sum(len(ids) + 1 for ids in tokenizer(head, add_special_tokens=False)["input_ids"])
    return max(_PACK_BATCH, math.ceil(_PACK_BLOCKS * seq_len * len(head) / max(tokens, 1)))


def pack(ds, tokenizer, text_column: str, seq_len: int):
    """Tokenize and pack `ds` (map-style or streaming) into a dataset with one column, `input_ids`."""
    columns = check_text_column(ds, text_column)
    kwargs = {"batched": True, "batch_size": pack_batch_size(ds, tokenizer, text_column, seq_len),
              "remove_columns": columns,
              "fn_kwargs": {"tokenizer": tokenizer, "text_column": text_column, "seq_len": seq_len}}
    if isinstance(ds, datasets.Dataset):
        kwargs["desc"] = "tokenize + pack"
    return ds.map(pack_texts, **kwargs)


@dataclass
class Blocks:
    """Packed training data for one process: its shard of the training blocks and the validation blocks."""

    train: datasets.Dataset | datasets.IterableDataset
    val: torch.Tensor  # [n_val, seq_len], every process holds all of them
    num_train: int | None  # training blocks over all processes (None when streaming)


def prepare_blocks(ds, tokenizer, seq_len: int, text_column: str = "text", val_fraction: float = 0.05,
                   val_blocks: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1) -> Blocks:
    """Pack `ds`, hold out validation blocks and shard the rest for process `rank` of `world_size`.

    Map-style: `val_blocks` (or `val_fraction` of the blocks, at least 1) random blocks are held out. Streaming: the
    first `val_blocks` (default 16) blocks are held out and the stream is shuffled with a buffer."""
    packed = pack(ds, tokenizer, text_column, seq_len)
    if isinstance(ds, datasets.IterableDataset):
        n_val = val_blocks or 16
        val = [ex["input_ids"] for ex in packed.take(n_val)]
        if len(val) < n_val or next(iter(packed.skip(n_val).take(1)), None) is None:
            raise ValueError(_too_small(len(val), seq_len, f"{n_val} validation blocks and at least one to train on"))
        train = packed.skip(n_val).shuffle(seed=seed, buffer_size=1000)
        return Blocks(split_dataset_by_node(train, rank=rank, world_size=world_size), torch.tensor(val), None)
    if len(packed) < 2:
        raise ValueError(_too_small(len(packed), seq_len, "2 (one to train on, one for validation)"))
    n_val = min(val_blocks or max(1, round(val_fraction * len(packed))), len(packed) - 1)
    split = packed.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    train = split_dataset_by_node(split["train"], rank=rank, world_size=world_size).with_format("torch")
    val = split["test"].with_format("torch")["input_ids"][:]
    return Blocks(train, val, len(split["train"]))


def _too_small(n_blocks: int, seq_len: int, need: str) -> str:
    return (f"the corpus is empty or too small: it packs into {n_blocks} block(s) of {seq_len} tokens but needs at "
            f"least {need}; add text, check the text column, or lower the sequence length")


def iter_batches(train, batch_size: int, seed: int = 0, start: int = 0):
    """Yield this process's micro-batches (LongTensor [batch_size, seq_len]) forever, from micro-batch `start`.

    Map-style: epoch e visits the shard in the order `randperm(seed + e)`, dropping the last partial batch, so
    micro-batch i is computed directly. Streaming: each epoch reshuffles (`set_epoch`) and the first `start`
    batches are read and skipped."""
    if isinstance(train, datasets.IterableDataset):
        yield from _stream_batches(train, batch_size, start)
        return
    per_epoch = len(train) // batch_size
    if per_epoch == 0:
        raise ValueError(f"this process's shard has {len(train)} training blocks, fewer than the batch size "
                         f"{batch_size}: use more data, a smaller batch size or fewer processes")
    epoch, first = divmod(start, per_epoch)
    while True:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))
        for j in range(first, per_epoch):
            yield train[order[j * batch_size: (j + 1) * batch_size].tolist()]["input_ids"]
        epoch, first = epoch + 1, 0


def _stream_batches(train, batch_size: int, start: int):
    seen, epoch = 0, 0
    while True:
        train.set_epoch(epoch)
        buf, yielded = [], False
        for ex in train:
            buf.append(ex["input_ids"])
            if len(buf) == batch_size:
                if seen >= start:
                    yield torch.tensor(buf)
                seen, buf, yielded = seen + 1, [], True
        if not yielded:
            raise ValueError(f"the streamed training data holds fewer than {batch_size} blocks for this process")
        epoch += 1


__all__ = [
    "EMBEDDED",
    "Blocks",
    "check_seq_len",
    "check_text_column",
    "embedded_dataset",
    "iter_batches",
    "load_text_dataset",
    "pack",
    "pack_texts",
    "prepare_blocks",
    "sequence_unit",
    "idle_cms_levels",
]
