"""End-to-end demo on CPU, fully offline: corpus -> tokenizer -> tiny Hope -> train -> evaluate -> generate -> save.

The output directory gets the model, the tokenizer and a model card (README.md, `hope_hf.cards`).

    python -m hope_hf.demo [--steps N] [--output-dir DIR]

The corpus is the docstrings of Python's standard library (`hope_hf.corpus`), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.cards import write_model_card
from hope_hf.corpus import stdlib_docs_text
from hope_hf.tokenizer import train_bpe_tokenizer

SEQ_LEN = 256  # a multiple of the tiny preset's CMS chunks (64, 256)
BATCH_SIZE = 8
LR = 3e-3
VOCAB_SIZE = 2048
VAL_FRACTION = 0.05
PROMPT = "The json module"


def training_info(steps: int, tokens: int | None = None) -> dict:
    """The demo's training recipe, for the model card."""
    info = {"data": "docstrings of Python's standard library (`hope_hf.corpus`), "
                    f"{1 - VAL_FRACTION:.0%} train / {VAL_FRACTION:.0%} validation blocks",
            "tokenizer": f"byte-level BPE, {VOCAB_SIZE} tokens, trained on the same text",
            "steps": steps,
            "batch": f"{BATCH_SIZE} x {SEQ_LEN} tokens",
            "optimizer": f"AdamW (lr {LR:g}, betas 0.9/0.95, weight decay 0.1), cosine schedule with 10% warmup",
            "recipe": f"`python -m hope_hf.demo --steps {steps}`"}
    if tokens is not None:
        info["tokens seen"] = f"{tokens:,}"
    return info


def pack_blocks(docs: list[str], tok, seq_len: int = SEQ_LEN) -> torch.Tensor:
    """Tokenize every document, join them with `</s>`, and cut the stream into [n_blocks, seq_len]."""
    ids = [i for doc in tok(docs, add_special_tokens=False)["input_ids"] for i in (*doc, tok.eos_token_id)]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, batch_size: int = BATCH_SIZE) -> float:
    """Mean next-token loss over `blocks` (every block has the same number of predicted tokens)."""
    model.eval()
    total = 0.0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i : i + batch_size].to(model.device)
        total += model(input_ids=batch, labels=batch, use_cache=False).loss.item() * len(batch)
    return total / len(blocks)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps (default 150)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/demo"), help="where to save (default runs/demo)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    docs = stdlib_docs_text()
    tok = train_bpe_tokenizer(docs, vocab_size=VOCAB_SIZE)
    blocks = pack_blocks(docs, tok)
    perm = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(0))
    n_val = max(1, round(VAL_FRACTION * len(blocks)))
    val, train = blocks[perm[:n_val]], blocks[perm[n_val:]]
    print(f"corpus: {len(docs)} docstrings, {sum(map(len, docs)):,} chars -> {blocks.numel():,} tokens "
          f"(vocab {len(tok)}); {len(train)} train / {len(val)} val blocks of {SEQ_LEN}")

    config = HopeConfig.from_preset("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = HopeForCausalLM(config).to(device)
    print(f"model: Hope tiny, {sum(p.numel() for p in model.parameters()):,} parameters, device {device}")

    val_before = evaluate(model, val)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=max(1, args.steps // 10),
                                                num_training_steps=args.steps)
    order = torch.Generator().manual_seed(0)
    batches = torch.empty(0, dtype=torch.long)
    model.train()
    start, tokens = time.perf_counter(), 0
    bar = tqdm(range(args.steps), desc="train", unit="step")
    for _ in bar:
        if len(batches) < BATCH_SIZE:  # next epoch
            batches = torch.randperm(len(train), generator=order)
        idx, batches = batches[:BATCH_SIZE], batches[BATCH_SIZE:]
        batch = train[idx].to(device)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.numel()
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / (time.perf_counter() - start):,.0f}")
    bar.close()

    val_after = evaluate(model, val)
    print(f"val loss {val_before:.3f} -> {val_after:.3f}  (perplexity {math.exp(val_before):,.1f} -> "
          f"{math.exp(val_after):,.1f}) after {args.steps} steps, {tokens:,} tokens")

    enc = tok(PROMPT, return_tensors="pt", return_token_type_ids=False).to(device)
    out = model.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
    print(f"greedy sample: {tok.decode(out[0], skip_special_tokens=True)!r}")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output_dir)
    tok.save_pretrained(args.output_dir)
    write_model_card(args.output_dir, model, training=training_info(args.steps, tokens),
                     eval_results={"validation loss": round(val_after, 4),
                                   "validation perplexity": round(math.exp(val_after), 2)})
    path = args.output_dir.resolve()
    print(f"checkpoint: {path}")
    return path


if __name__ == "__main__":
    main()
