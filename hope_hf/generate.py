"""Generate from a saved Hope checkpoint, optionally carrying the memory across invocations.

    hope-hf generate --model runs/train/final --prompt "The json module"
    hope-hf generate --model runs/train/final --prompt "Ordered dicts" --session runs/session.safetensors

With `--session PATH` the memory (a `HopeCache`, safetensors) is saved to PATH and the conversation's token ids to
PATH + ".ids.json"; the next invocation appends its prompt to that conversation and reads only the new tokens. A
session records a fingerprint of the weights that wrote it and is refused by any other model. Both files are written
to temporary names and renamed, so a failed save leaves the previous session intact; the reply is printed first.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer

from hope_hf import HopeCache
from hope_hf.cache_hope import weights_fingerprint
from hope_hf.cli import check_writable_dir, generate_parser, one_line, use_threads, writing
from hope_hf.modeling_hope import CACHE_FIELD


def build_parser():
    """The options of `hope-hf generate` (defined in `hope_hf.cli`, which imports no heavy module)."""
    return generate_parser()


def ids_path(session: Path) -> Path:
    """Where the conversation's token ids are kept beside a memory session file."""
    return session.with_name(session.name + ".ids.json")


def check_args(args) -> None:
    """Refuse option combinations that would be ignored or cannot work, before any model is loaded."""
    sampling = [f for f, v in (("--temperature", args.temperature), ("--top-p", args.top_p),
                               ("--top-k", args.top_k)) if v is not None]
    if sampling and not args.do_sample:
        raise ValueError(f"{', '.join(sampling)} only take effect when sampling: add --do-sample (greedy decoding, the "
                         "default, ignores them)")
    if args.max_new_tokens < 1 or args.num_beams < 1:
        raise ValueError("--max-new-tokens and --num-beams must be >= 1")
    if args.session is not None:
        if args.num_beams > 1:
            raise ValueError("--num-beams > 1 cannot continue a --session (beam search keeps one memory per beam)")
        if args.session.is_dir():
            raise ValueError(f"--session {args.session} is a directory; name a file, e.g. {args.session}/s.safetensors")
        if args.session.exists() and not ids_path(args.session).is_file():
            raise ValueError(f"{ids_path(args.session)} is missing: the memory session {args.session} needs its "
                             "conversation ids; delete the session file to start a new session")
        check_writable_dir(args.session.parent, "session directory")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"--device {args.device!r}: {one_line(e)}") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available here (use --device cpu)")


def load_model(name: str, device: str | None):
    """The tokenizer and model of a save_pretrained directory (or Hub id); a broken one is named in a ValueError."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name).to(device).eval()
    except (OSError, ValueError, SafetensorError) as e:
        raise ValueError(f"cannot load the model {name}: {one_line(e)}") from e
    return tok, model


def load_session(session: Path | None, model) -> tuple[HopeCache, list[int]]:
    """The saved memory and conversation ids, or a fresh cache and an empty conversation; the cache carries the
    model's weights fingerprint, and a session saved with other weights is refused."""
    fingerprint = weights_fingerprint(model)
    if session is None or not session.exists():
        cache = HopeCache(model.config)
        cache.weights_fingerprint = fingerprint
        return cache, []
    cache = HopeCache.load(session, config=model.config, device=model.device, fingerprint=fingerprint)
    cache.weights_fingerprint = fingerprint
    try:
        ids = json.loads(ids_path(session).read_text())["ids"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read {ids_path(session)}: {one_line(e)} (missing, truncated or not a session "
                         "ids file)") from e
    if cache.get_seq_length() != len(ids) - 1:
        raise ValueError(f"{session} has consumed {cache.get_seq_length()} tokens but its conversation has "
                         f"{len(ids)}: the session files do not belong together")
    return cache, ids


def save_session(session: Path, cache: HopeCache, ids: list[int]) -> None:
    """Write the memory (safetensors) and the conversation ids (JSON) of a session: both go to temporary files that
    are then renamed over the old ones, so a failure (disk full, read-only directory) leaves the old session."""
    session = Path(session)
    tmp, tmp_ids = session.with_name(f".{session.name}.tmp"), session.with_name(f".{ids_path(session).name}.tmp")
    with writing(session):
        try:
            session.parent.mkdir(parents=True, exist_ok=True)
            cache.save(tmp)
            tmp_ids.write_text(json.dumps({"ids": ids}))
            os.replace(tmp, session)
            os.replace(tmp_ids, ids_path(session))
        finally:
            tmp.unlink(missing_ok=True)
            tmp_ids.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> str:
    """Parse `argv`, then print and return the generated continuation."""
    return run(build_parser().parse_args(argv))


def run(args) -> str:
    """Generate with parsed options (see `hope_hf.cli.generate_parser`); prints and returns the continuation."""
    print(use_threads(args.threads), file=sys.stderr)           # stdout holds only the reply
    check_args(args)
    torch.manual_seed(args.seed)
    tok, model = load_model(args.model, args.device)
    cache, ids = load_session(args.session, model)
    if ids:
        print(f"continuing the session {args.session} ({len(ids)} tokens so far)", file=sys.stderr)
    new = tok(args.prompt, add_special_tokens=False)["input_ids"]
    if not ids and tok.bos_token_id is not None:
        new = [tok.bos_token_id, *new]
    if not ids + new:
        raise ValueError("the prompt is empty and the tokenizer has no BOS token: nothing to generate from")
    history = torch.tensor([ids + new], device=model.device)
    options = {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p), ("top_k", args.top_k),
                                 ("repetition_penalty", args.repetition_penalty)) if v is not None}
    carry = {CACHE_FIELD: cache} if args.session is not None else {}
    out = model.generate(history, attention_mask=torch.ones_like(history), max_new_tokens=args.max_new_tokens,
                         return_dict_in_generate=True, pad_token_id=tok.pad_token_id, do_sample=args.do_sample,
                         num_beams=args.num_beams, **options, **carry)
    text = tok.decode(out.sequences[0, history.shape[1]:], skip_special_tokens=True)
    print(text, flush=True)  # before saving: a failed save must not lose the reply
    if args.session is not None:
        cache = out[CACHE_FIELD]
        cache.weights_fingerprint = weights_fingerprint(model)
        save_session(args.session, cache, out.sequences[0].tolist())
    return text


if __name__ == "__main__":
    from hope_hf import cli

    _args = build_parser().parse_args()
    cli.run(run, _args, _args.debug)
