"""Train a small byte-level BPE tokenizer offline (package-only module, not copied to the Hub).

Special tokens come first, so their ids are fixed: `<pad>` = 0, `<s>` = 1, `</s>` = 2.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it for transformers.

    The byte-level alphabet (256 symbols) plus the 3 special tokens already take 259 ids, so `vocab_size` must be
    larger than that; the result has at most `vocab_size` tokens (fewer only if the text runs out of merges).
    Decoding inverts encoding exactly for any text (no prefix space, no clean-up of spaces). It pads on the left
    (and is saved so), the convention for decoder-only models: batched `generate` then equals each prompt alone.
    """
    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be > {256 + len(SPECIAL_TOKENS)} for a byte-level BPE, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",  # decoder-only convention: a left-padded batch generates like each prompt alone
        clean_up_tokenization_spaces=False,
    )


__all__ = ["SPECIAL_TOKENS", "train_bpe_tokenizer"]
