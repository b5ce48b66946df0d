"""Chat with a Hope checkpoint whose memory (a HopeCache) is carried from turn to turn, and optionally across runs.

    python examples/chat_with_memory.py --model runs/demo                      # interactive (stdin, /quit to stop)
    python examples/chat_with_memory.py --model runs/demo --turn "The json module" --turn "Ordered dicts"
    python examples/chat_with_memory.py --model runs/demo --script turns.txt --session runs/chat.safetensors

Each turn appends the user text to the conversation and calls `generate` with the whole history and the carried
cache, so only the new tokens are read. After each turn it prints the tokens the memory has consumed and the CMS
commits of every layer and level. With `--session PATH` the memory is saved to PATH (safetensors) and the
conversation ids beside it (PATH + ".ids.json") after every turn, and a later run resumes from them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hope_hf  # noqa: F401 - registers the Auto classes
from hope_hf import HopeCache
from hope_hf.generate import ids_path, load_session, save_session  # noqa: F401 - ids_path: the session's id file
from hope_hf.modeling_hope import CACHE_FIELD  # the cache's name in generate: `cache` (transformers >= 5.24)


def memory_report(cache: HopeCache, config) -> str:
    """Tokens consumed and, per layer, the CMS commits of each level (batch item 0)."""
    counts = cache.cms_update_counts()[:, :, 0].tolist()
    layers = "; ".join(f"layer {i}: {c}" for i, c in enumerate(counts))
    every = "/".join(map(str, config.cms_chunk_sizes))
    return f"[memory] {cache.get_seq_length()} tokens consumed; CMS commits per level (every {every} tokens): {layers}"


def chat_turn(model, tok, cache: HopeCache, ids: list[int], text: str, template: str, max_new_tokens: int):
    """Append one user turn, generate the reply with the carried cache; returns (reply, ids, cache)."""
    new = tok(template.format(text=text), add_special_tokens=False)["input_ids"]
    if not ids and tok.bos_token_id is not None:
        new = [tok.bos_token_id, *new]
    history = torch.tensor([ids + new], device=model.device)
    out = model.generate(history, attention_mask=torch.ones_like(history), **{CACHE_FIELD: cache},
                         max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True,
                         pad_token_id=tok.pad_token_id)
    reply = tok.decode(out.sequences[0, history.shape[1]:], skip_special_tokens=True)
    return reply, out.sequences[0].tolist(), out[CACHE_FIELD]


def user_turns(args):
    """The scripted turns (--turn, then --script lines), or stdin lines until EOF or /quit."""
    if args.turn or args.script:
        yield from args.turn or []
        if args.script:
            yield from (line for line in args.script.read_text().splitlines() if line.strip())
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return
        if line.strip():
            yield line.rstrip("\n")


def main(argv: list[str] | None = None) -> HopeCache:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint dir (model + tokenizer)")
    parser.add_argument("--turn", action="append", help="a user turn (repeatable; non-interactive)")
    parser.add_argument("--script", type=Path, help="a file with one user turn per line (non-interactive)")
    parser.add_argument("--session", type=Path, help="memory session file: resumed if it exists, saved each turn")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--template", default="\nUser: {text}\nHope:", help="how a user turn is written")
    args = parser.parse_args(argv)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    cache, ids = load_session(args.session, model)
    if ids:
        print(f"resumed {args.session}: {len(ids)} conversation tokens")
        print(memory_report(cache, model.config))

    for text in user_turns(args):
        reply, ids, cache = chat_turn(model, tok, cache, ids, text, args.template, args.max_new_tokens)
        print(f"hope> {reply.strip()}")
        print(memory_report(cache, model.config))
        if args.session:
            save_session(args.session, cache, ids)
    return cache


if __name__ == "__main__":
    main()
