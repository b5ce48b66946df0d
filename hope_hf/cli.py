"""The `hope-hf` command: `hope-hf train ...` and `hope-hf generate ...` (see `--help` of each).

This module imports only the standard library, so `--help`, `--version` and argument errors answer at once; torch and
transformers are imported after the arguments are parsed and checked. (The console script enters through the
top-level `hope_hf_cli` shim, which runs this file without importing the `hope_hf` package, whose import registers
the models with transformers.) Bad input and I/O failures end in a one-line `hope-hf: error: ...` and exit status 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import math
import os
import sys
from pathlib import Path

COMMANDS = {"train": "hope_hf.train", "generate": "hope_hf.generate"}
EMBEDDED = "stdlib"  # the embedded corpus (hope_hf.data.EMBEDDED)
OPTIMIZERS = ("adamw", "m3", "dmgd")  # hope_hf.optim.OPTIMIZERS (a test keeps them equal)
# endings that mark a name as a file on this machine, never a Hub id
LOCAL_SUFFIXES = (".txt", ".text", ".md", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".gz", ".bz2",
                  ".xz", ".zst", ".zip", ".safetensors", ".bin", ".pt")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("hope-hf")
    except PackageNotFoundError:
        return "unknown (not installed)"


# -- local paths vs Hub ids -----------------------------------------------------------------------------------------

def looks_local(name: str) -> bool:
    """Whether `name` means a path on this machine rather than a Hub id: it starts with `./`, `../`, `/` or `~`, has a
    file extension, holds glob characters, or its parent directory exists."""
    path = Path(name).expanduser()
    return (name.startswith((".", "/", "~", os.sep)) or path.is_absolute()
            or path.suffix.lower() in LOCAL_SUFFIXES or any(c in name for c in "*?[")
            or (path.parent != Path(".") and path.parent.is_dir()))


def local_or_hub(name: str) -> str:
    """argparse `type`: a local-looking name must exist (a file, a directory or a glob that matches); anything else is
    left for the Hub. Raises ValueError("no such file or directory: ...") without asking the Hub."""
    if looks_local(name):
        expanded = os.path.expanduser(name)
        if not (os.path.exists(expanded) or glob.glob(expanded, recursive=True)):
            raise ValueError(f"no such file or directory: {name}")
    return name


def model_path(name: str) -> str:
    """argparse `type` for `--model`: like `local_or_hub`, and a name without a namespace (`user/name`) must exist
    locally too, since every Hope repository on the Hub has one (`missing_dir` is a typo, not a Hub id)."""
    local_or_hub(name)
    if "/" not in name and not os.path.exists(name):
        raise ValueError(f"no such file or directory: {name} (a Hub model id has the form user/name)")
    return name


def _arg_type(check):
    def convert(value):
        try:
            return check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    convert.__name__ = check.__name__
    return convert


def positive_finite(value: str) -> float:
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"must be a positive finite number, got {value}")
    return x


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError(f"must be an integer >= 1, got {value}")
    return n


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(cores: int | None = None, processes: int | None = None) -> int:
    """Torch intra-op threads per process: one fewer than the process's share of the cores, at least 1.

    One core is left over so that one other busy process on the machine does not oversubscribe the cores: torch's
    threads then wait on each other and a step collapses (measured on 2 cores, README "Threads")."""
    cores = usable_cores() if cores is None else cores
    processes = processes or int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    return max(1, cores // processes - 1)


def use_threads(requested: int | None) -> str:
    """Set torch's intra-op thread count to `requested` (`--threads`) or `default_threads()`; returns the line that
    reports the choice (printed at start)."""
    import torch

    n = requested or default_threads()
    torch.set_num_threads(n)
    how = "--threads" if requested else "default: cores per process - 1; --threads N to change"
    return f"threads: {n} torch thread(s) per process ({how}; {usable_cores()} cores)"


# glibc's malloc for training steps (README "Allocator"): blocks of >= 4 MiB are mapped on their own and freed memory
# is returned at once; torch backs its blocks of >= 2 MiB with transparent huge pages. With glibc's defaults a
# checkpointed fwd+bwd of `small` at 8,192 tokens grew the heap past 18 GiB (fragmentation). With activation
# checkpointing (memory first) the threshold is 256 KiB: that step then peaks at ~6 GiB, at 4 MiB at ~12 GiB; without
# checkpointing 4 MiB trains `small` 5-20% faster than 256 KiB (fewer fresh pages to fault in).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "4194304", "MALLOC_TRIM_THRESHOLD_": "0", "THP_MEM_ALLOC_ENABLE": "1"}
LEAN_MMAP_THRESHOLD = 262144
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def allocator_env(lean: bool = False) -> dict[str, str]:
    """`ALLOCATOR_ENV`; `lean` (activation checkpointing): with the 256 KiB mmap threshold."""
    return {**ALLOCATOR_ENV, **({"MALLOC_MMAP_THRESHOLD_": str(LEAN_MMAP_THRESHOLD)} if lean else {})}


def set_malloc(mmap_threshold: int, trim_threshold: int | None = None) -> bool:
    """glibc's `mallopt`: blocks of >= `mmap_threshold` bytes are mapped on their own (and the trim threshold, if
    given) from now on in this process. False where the C library has no `mallopt` (not glibc)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
        return all(mallopt(param, value) == 1 for param, value in
                   ((M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold)) if value is not None)
    except (OSError, AttributeError):
        return False


def tune_allocator(lean: bool = False) -> bool:
    """Apply `allocator_env(lean)` (values already in the environment win) to this process through glibc's `mallopt`
    and to the processes it starts through the environment. Torch reads THP_MEM_ALLOC_ENABLE at its first allocation,
    so call this before torch is imported. False where the C library has no `mallopt` (not glibc)."""
    for key, value in allocator_env(lean).items():
        os.environ.setdefault(key, value)
    try:
        return set_malloc(int(os.environ["MALLOC_MMAP_THRESHOLD_"]), int(os.environ["MALLOC_TRIM_THRESHOLD_"]))
    except ValueError:
        return False


def check_writable_dir(path: Path, what: str = "output directory") -> None:
    """Raise `ValueError` unless `path` is a directory, or can be created as one, that this process may write."""
    path = Path(path)
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot write the {what} {path}: {ancestor} exists and is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the {what} {path}: permission denied on {ancestor}")


# -- parsers ----------------------------------------------------------------------------------------------------

class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, except the empty ones (None, False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_Formatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def train_parser() -> argparse.ArgumentParser:
    """Options of `hope-hf train` (transformers/accelerate names; the older short names still work)."""
    p = _parser("hope-hf train", "Train Hope with Accelerate on a text corpus (one process, or many with "
                                 "`accelerate launch`).")
    path = _arg_type(local_or_hub)
    a = p.add_argument_group("data").add_argument
    a("--dataset", "--dataset-name", default=EMBEDDED, type=path,
      help=f"'{EMBEDDED}' (embedded corpus), a local file/dir/glob, or a Hub dataset name")
    a("--dataset-config", "--dataset-config-name", default=None, help="Hub dataset config name")
    a("--split", default="train", help="Hub dataset split")
    a("--text-column", default="text", help="the dataset column that holds the text")
    a("--streaming", action="store_true", help="stream the dataset instead of loading it")
    a("--block-size", "--seq-len", dest="seq_len", type=int, metavar="N", default=256,
      help="tokens per training block (a multiple of the smallest CMS chunk)")
    a("--val-fraction", type=float, default=0.05, help="held-out blocks (map-style datasets)")
    a("--val-blocks", type=int, default=None, help="held-out blocks, overrides --val-fraction (streaming: 16)")
    a = p.add_argument_group("model").add_argument
    a("--preset", default="tiny", help="HopeConfig preset (tiny, small, 340m, 760m, 1.3b)")
    a("--tokenizer", "--tokenizer-name", default=None, type=path,
      help="an AutoTokenizer path/name; default: train a byte-level BPE on the corpus")
    a("--vocab-size", type=int, default=2048, help="vocab size of the trained BPE")
    a("--tokenizer-docs", type=int, default=50_000, help="documents the BPE is trained on")
    a = p.add_argument_group("optimisation").add_argument
    a("--max-steps", type=int, default=300, help="optimizer steps")
    a("--per-device-train-batch-size", "--batch-size", dest="batch_size", type=int, metavar="N", default=8,
      help="blocks per process per micro-step")
    a("--gradient-accumulation-steps", "--grad-accum", dest="grad_accum", type=int, metavar="N", default=1,
      help="micro-steps per optimizer step")
    a("--learning-rate", "--lr", dest="lr", metavar="LR", type=_arg_type(positive_finite), default=3e-3,
      help="peak learning rate")
    a("--optimizer", choices=OPTIMIZERS, default="adamw",
      help="adamw, m3 (multi-scale momentum Muon) or dmgd (deep momentum GD); see hope_hf.optim")
    a("--cms-outer-periods", type=int, nargs="+", default=None,
      help="outer update period of each CMS level's initial state, in training tokens (multi-frequency stepping)")
    a("--warmup-steps", type=int, default=None, help="default: 10%% of --max-steps")
    a("--weight-decay", type=float, default=0.1, help="AdamW-style decoupled weight decay")
    a("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm")
    a("--bf16", action="store_true", help="bf16 autocast where the device supports it")
    a("--gradient-checkpointing", "--activation-checkpointing", dest="activation_checkpointing",
      nargs="?", const="groups", choices=["groups", "spans"], default=None,
      help="recompute activations in the backward pass: 'groups' (the default when given) checkpoints each block's "
           "span and groups of ~sqrt(#spans) spans around them (least memory), 'spans' only each block's span "
           "(~1/4 faster, more memory)")
    a("--tbptt-segments", type=int, default=1, help="split each block into K segments, carrying the memory")
    a("--fsdp", action="store_true",
      help="shard parameters, gradients and optimizer state over the processes (Accelerate FSDP2; needs "
           "`accelerate launch` and AdamW; see README 'Training on many GPUs')")
    a("--fsdp-units", choices=["model", "block"], default="model",
      help="with --fsdp, the FSDP units: 'model' gathers the whole model once per forward and backward (fastest); "
           "'block' gathers one HopeBlock at a time, for every span (least memory, more communication)")
    a("--compile", action="store_true",
      help="torch.compile each block (memory and CMS) for training (regional; the first steps compile, for minutes "
           "on a CPU; evaluation and sampling stay eager)")
    a("--seed", type=int, default=0, help="seed of the model init, data order and BPE")
    a("--use-cpu", "--cpu", dest="cpu", action="store_true", help="train on the CPU even if CUDA is available")
    a("--threads", type=_arg_type(positive_int), metavar="N", default=None,
      help="torch threads per process (default: cores per process - 1, at least 1)")
    a = p.add_argument_group("logging and checkpoints").add_argument
    a("--output-dir", type=Path, default=Path("runs/train"), help="logs, checkpoints and final/")
    a("--overwrite-output-dir", action="store_true", help="delete checkpoints of an earlier run there")
    a("--eval-steps", "--eval-every", dest="eval_every", type=int, metavar="N", default=100,
      help="validation every N steps (and at the end)")
    a("--save-steps", "--save-every", dest="save_every", type=int, metavar="N", default=100,
      help="checkpoint every N steps (0: only at the end)")
    a("--save-total-limit", "--keep-checkpoints", dest="keep_checkpoints", type=int, metavar="N", default=2,
      help="most recent checkpoints kept (0: all)")
    a("--resume-from-checkpoint", default=None, help="a checkpoint dir, or 'latest' in --output-dir")
    a("--sample-prompt", default="The json module", help="prompt for a greedy sample at the end")
    a("--sample-tokens", type=int, default=40, help="tokens to sample at the end (0: none)")
    a("--debug-log-batches", action="store_true",
      help="log hashes of every rank's first micro-batch per step, and of its parameters at the end")
    return p


def generate_parser() -> argparse.ArgumentParser:
    """Options of `hope-hf generate` (names as in transformers' GenerationConfig)."""
    p = _parser("hope-hf generate", "Generate from a saved Hope checkpoint, optionally carrying the memory across "
                                    "invocations (--session).")
    p.add_argument("--model", "--model-name-or-path", dest="model", required=True, type=_arg_type(model_path),
                   help="a save_pretrained directory (model + tokenizer) or a Hub id")
    p.add_argument("--prompt", required=True, help="text to continue (appended to the --session conversation)")
    p.add_argument("--session", type=Path, default=None,
                   help="memory session file to continue and update (the conversation ids go to SESSION.ids.json)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate")
    p.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (needs --do-sample)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (needs --do-sample)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens (needs --do-sample)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1: no beam search)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats")
    p.add_argument("--seed", type=int, default=0, help="torch seed (for --do-sample)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--threads", type=_arg_type(positive_int), metavar="N", default=None,
                   help="torch threads (default: cores - 1, at least 1)")
    return p


PARSERS = {"train": train_parser, "generate": generate_parser}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hope-hf", description="Train and run Google's Nested Learning Hope model.",
                                usage=f"hope-hf {{{','.join(COMMANDS)}}} [options]   (hope-hf COMMAND --help for "
                                      "the options)")
    p.add_argument("--version", action="version", version=f"hope-hf {version()}")
    p.add_argument("command", choices=COMMANDS, help="train: train a Hope model on a corpus; generate: continue a "
                                                     "prompt with a saved model (see hope-hf COMMAND --help)")
    return p


# -- running --------------------------------------------------------------------------------------------------------

def one_line(e: BaseException) -> str:
    """An exception as one line: the message, else its type."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


@contextlib.contextmanager
def writing(path):
    """Turn a failed write (disk full, read-only or missing directory, ...) into an `OSError` naming `path` and the
    cause; torch reports a full disk as a RuntimeError ("enforce fail at inline_container.cc"), safetensors as a
    SafetensorError."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as e:
        raise OSError(f"could not write {path}: {one_line(e)}") from e


def run(fn, args, debug: bool = False):
    """Call `fn(args)`; bad input (`ValueError`) and I/O failures (`OSError`) become one line on stderr and exit
    status 2, with the traceback only when `debug`."""
    try:
        return fn(args)
    except (ValueError, OSError) as e:
        if debug:
            raise
        print(f"hope-hf: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None):
    """`hope-hf COMMAND [options]`: parse and check the options, then import and run the command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1])  # --help / --version / a usage error (exit 2)
        return None
    args = PARSERS[argv[0]]().parse_args(argv[1:])
    if "torch" not in sys.modules:          # a `hope-hf` process, not a Python session that called main()
        tune_allocator(lean=getattr(args, "activation_checkpointing", None) is not None)
    module = importlib.import_module(COMMANDS[argv[0]])
    return run(module.run, args, args.debug)


if __name__ == "__main__":
    main()
