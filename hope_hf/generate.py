"""Generate from a saved Hope checkpoint, optionally carrying the memory across invocations.

    hope-hf generate --model runs/train/final --prompt "The json module"
    hope-hf generate --model runs/train/final --prompt "Ordered dicts" --session runs/session.safetensors

With `--session PATH` the memory (a `HopeCache`, safetensors) is saved to PATH and the conversation's token ids to
PATH + ".ids.json"; the next invocation appends its prompt to that conversation and reads only the new tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hope_hf import HopeCache


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hope-hf generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a save_pretrained directory (model + tokenizer)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--session", type=Path, default=None, help="memory session file to continue and update")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    return p


def ids_path(session: Path) -> Path:
    """Where the conversation's token ids are kept beside a memory session file."""
    return session.with_name(session.name + ".ids.json")


def load_session(session: Path | None, model) -> tuple[HopeCache, list[int]]:
    """The saved memory and conversation ids, or a fresh cache and an empty conversation."""
    if session is None or not session.exists():
        return HopeCache(model.config), []
    cache = HopeCache.load(session, config=model.config, device=model.device)
    ids = json.loads(ids_path(session).read_text())["ids"]
    if cache.get_seq_length() != len(ids) - 1:
        raise ValueError(f"{session} has consumed {cache.get_seq_length()} tokens but its conversation has "
                         f"{len(ids)}: the session files do not belong together")
    return cache, ids


def save_session(session: Path, cache: HopeCache, ids: list[int]) -> None:
    """Write the memory (safetensors) and the conversation ids (JSON) of a session."""
    session.parent.mkdir(parents=True, exist_ok=True)
    cache.save(session)
    ids_path(session).write_text(json.dumps({"ids": ids}))


def main(argv: list[str] | None = None) -> str:
    """Print and return the generated continuation."""
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    cache, ids = load_session(args.session, model)
    new = tok(args.prompt, add_special_tokens=False)["input_ids"]
    if not ids and tok.bos_token_id is not None:
        new = [tok.bos_token_id, *new]
    history = torch.tensor([ids + new], device=model.device)
    sampling = {"do_sample": args.do_sample}
    if args.do_sample:
        sampling.update(temperature=args.temperature, top_p=args.top_p)
    out = model.generate(history, attention_mask=torch.ones_like(history), past_key_values=cache,
                         max_new_tokens=args.max_new_tokens, return_dict_in_generate=True,
                         pad_token_id=tok.pad_token_id, **sampling)
    text = tok.decode(out.sequences[0, history.shape[1]:], skip_special_tokens=True)
    if args.session is not None:
        save_session(args.session, out.past_key_values, out.sequences[0].tolist())
    print(text)
    return text


if __name__ == "__main__":
    from hope_hf.cli import run

    run(main)
