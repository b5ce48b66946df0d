"""Pieces every benchmark shares: the machine description, the parameter-matched Llama, the two offline corpora as
token blocks, one training loop and one evaluation used for every model, and the result files.

Fair comparisons: a benchmark builds Hope and Llama from the same tokenizer, trains both with `train_lm` on the same
blocks in the same order with the same optimizer, learning rate and schedule, and evaluates both with `evaluate`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.cli import use_threads
from hope_hf.corpus import stdlib_code_text, stdlib_docs_text
from hope_hf.tokenizer import train_bpe_tokenizer

RESULTS = Path("benchmarks/results")
QUICK_RESULTS = RESULTS / "quick"  # smoke-run results never overwrite the full ones
CORPORA = {"docs": stdlib_docs_text, "code": stdlib_code_text}
CORPUS_DESCRIPTIONS = {"docs": "docstrings of the Python standard library (English technical prose)",
                       "code": "source code of the Python standard library, docstrings and comments stripped"}


# ------------------------------------------------------------------------------------------------ the machine


def machine_info() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "load_avg_1m_at_start": os.getloadavg()[0]}  # > cpu_count: other processes shared the CPUs


def busy_cpu_s() -> tuple[float, float] | None:
    """(CPU seconds spent by all processes since boot, by this process and its finished child processes) on Linux;
    None elsewhere."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    own = os.times()
    return ((user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"),
            own.user + own.system + own.children_user + own.children_system)


class Run:
    """Wall time and the CPU cores other processes kept busy during a benchmark (should be ~0 for timings).

    Sets torch's thread count first: `BENCH_THREADS=n` in the environment (or a benchmark's `--threads`), else
    `threads`, else `hope_hf.cli.default_threads()` (cores - 1: oversubscribed cores slow Hope's many small ops down
    10-100x, README "Threads"); the choice is printed."""

    def __init__(self, threads: int | None = None):
        print(use_threads(int(os.environ["BENCH_THREADS"]) if os.environ.get("BENCH_THREADS") else threads))
        self.machine = machine_info()
        self.start, self.busy = time.perf_counter(), busy_cpu_s()

    def finish(self, results: dict) -> dict:
        results["wall_time_s"] = time.perf_counter() - self.start
        self.machine["load_avg_1m_at_end"] = os.getloadavg()[0]
        if self.busy is not None:
            (all0, own0), (all1, own1) = self.busy, busy_cpu_s()
            self.machine["other_processes_avg_cores_busy"] = (
                max(0.0, (all1 - all0) - (own1 - own0)) / results["wall_time_s"])
        results["machine"] = self.machine
        return results


def write_results(out, name: str, results: dict, plot=None) -> Path:
    """Write `<out>/<name>.json` (and `<out>/<name>.png` with `plot(results, path)`); return the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)                          # a killed run never leaves a half-written JSON
    if plot is not None:
        plot(results, out / f"{name}.png")
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------------- models


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_llama(config: HopeConfig, max_len: int) -> LlamaForCausalLM:
    """Llama with Hope's vocab/width/depth/heads, special tokens and tied embeddings; MLP width solved for an equal
    parameter count."""
    def cfg(intermediate):
        return LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                           num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                           num_key_value_heads=config.num_attention_heads, intermediate_size=intermediate,
                           max_position_embeddings=max_len, tie_word_embeddings=True,
                           pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
                           eos_token_id=config.eos_token_id)
    with torch.device("meta"):  # parameters are linear in intermediate_size: count two points, solve
        target = n_params(HopeForCausalLM(config))
        p64, p128 = (n_params(LlamaForCausalLM(cfg(i))) for i in (64, 128))
    per_unit = (p128 - p64) / 64
    intermediate = max(32, round((64 + (target - p64) / per_unit) / 32) * 32)
    return LlamaForCausalLM(cfg(intermediate))


def hope_config(preset: str, tok, **overrides) -> HopeConfig:
    """A Hope preset sized to `tok` (vocabulary and special tokens)."""
    return HopeConfig.from_preset(preset, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **overrides)


def build(kind: str, config: HopeConfig, seed: int, max_len: int):
    """A freshly initialised "hope" (from `config`) or parameter-matched "llama", seeded."""
    torch.manual_seed(seed)
    if kind == "hope":
        return HopeForCausalLM(config)
    if kind == "llama":
        return matched_llama(config, max_len)
    raise ValueError(f"unknown model kind {kind!r}; choose 'hope' or 'llama'")


# ------------------------------------------------------------------------------------------------------ data


def corpus(name: str, max_chars: int | None = None) -> list[str]:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(CORPORA)}")
    return CORPORA[name](max_chars=max_chars)


def tokenizer_for(documents: list[str], vocab_size: int):
    return train_bpe_tokenizer(documents, vocab_size=vocab_size)


def to_blocks(documents: list[str], tok, seq_len: int) -> torch.Tensor:
    """Documents joined by EOS, packed into [n, seq_len] blocks (the tail shorter than a block is dropped)."""
    ids = []
    for enc in tok(documents, add_special_tokens=False)["input_ids"]:
        ids.extend(enc + [tok.eos_token_id])
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the documents give fewer than {seq_len} tokens")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def split_blocks(blocks: torch.Tensor, val_blocks: int, seed: int = 0):
    """Shuffle the blocks once (seeded) and hold out `val_blocks` of them: (train, val)."""
    if len(blocks) <= val_blocks:
        raise ValueError(f"only {len(blocks)} blocks, cannot hold out {val_blocks}")
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    return blocks[order[val_blocks:]], blocks[order[:val_blocks]]


# ----------------------------------------------------------------------------------------- train and evaluate


def settings(defaults: dict, quick_settings: dict, quick: bool, overrides: dict) -> dict:
    """`defaults`, then `quick_settings` with `quick`, then the non-None `overrides` (TypeError for unknown names)."""
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise TypeError(f"unknown setting(s) {sorted(unknown)}; choose from {sorted(defaults)}")
    return {**defaults, **(quick_settings if quick else {}), **{k: v for k, v in overrides.items() if v is not None}}


def finite_or_inf(x: float) -> float:
    """nan (a diverged run) as inf, so that JSON holds `Infinity` and comparisons stay ordered."""
    return x if math.isfinite(x) else float("inf")


def lr_lambda(steps: int, warmup: int):
    """Linear warm-up over `warmup` steps, then cosine decay to 10% of the peak."""
    def f(t):
        if t < warmup:
            return (t + 1) / warmup
        progress = (t - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over every predicted position of `blocks`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size]
        n = x.numel() - x.size(0)
        total += model(input_ids=x, labels=x, use_cache=False).loss.item() * n
        count += n
    model.train(was_training)
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(loss) if math.isfinite(loss) and loss < 50 else float("inf")


def train_lm(model, train: torch.Tensor, steps: int, *, batch_size: int, lr: float, seed: int = 0,
             evals: dict | None = None, eval_every: int | None = None, warmup: int | None = None,
             weight_decay: float = 0.01, clip: float = 1.0, labels: torch.Tensor | None = None,
             make_optimizer=None, desc: str = "train", shuffle: bool = True, after_backward=None) -> dict:
    """AdamW with warm-up + cosine on random batches of `train` (order fixed by `seed`, identical for every model;
    `shuffle=False`: the rows in their order, e.g. a curriculum).

    `make_optimizer(model)` replaces the default AdamW(lr, betas 0.9/0.95, `weight_decay`).
    `labels` (same shape as `train`, -100 = not scored) replaces the default next-token labels (`train` itself).
    `after_backward(step)` runs after each backward pass, before clipping (e.g. to zero some gradients).
    `evals` maps a name to held-out blocks, evaluated every `eval_every` steps and at the end. Returns the training
    loss per step, the evaluations [(step, {name: loss})], the median seconds per step and whether it diverged."""
    model.train()
    opt = (make_optimizer(model) if make_optimizer is not None else
           torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup or max(1, steps // 10)))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)) if shuffle else \
        torch.arange(len(train))
    losses, times, curve = [], [], []

    def run_evals(step):
        if evals:
            curve.append([step, {k: evaluate(model, v, batch_size) for k, v in evals.items()}])

    diverged = False
    for step in tqdm(range(steps), desc=desc, leave=False):
        if eval_every and step % eval_every == 0:
            run_evals(step)
        rows = order[(torch.arange(batch_size) + step * batch_size) % len(train)]
        x = train[rows]
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x if labels is None else labels[rows], use_cache=False).loss
        loss.backward()
        if after_backward is not None:
            after_backward(step)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            diverged = True
            break
    if not diverged:
        run_evals(steps)
    return {"train_loss": losses, "evals": curve, "steps_done": len(losses), "diverged": diverged,
            "median_step_s": statistics.median(times) if times else float("nan"),
            "tokens_per_step": batch_size * train.shape[1]}


def final_eval(result: dict, name: str) -> float:
    """The last evaluation of `name` in a `train_lm` result (nan if it diverged)."""
    return result["evals"][-1][1][name] if result["evals"] and not result["diverged"] else float("nan")
