"""Train Hope with Accelerate on a text corpus: one process, or many with `accelerate launch`.

    hope-hf train --preset tiny --max-steps 300 --output-dir runs/train          # or: python -m hope_hf.train ...
    accelerate launch --multi_gpu --num_processes 2 ... -m hope_hf.train ...    # see examples/train_multi_process.sh

Data (`--dataset`): the embedded stdlib-docstring corpus (default), local text/json/jsonl/csv/parquet files, or a
Hub dataset; packed into `--block-size` blocks, a held-out validation split, and each process its own shard. The
output directory receives `train_log.jsonl`, `loss.png`, `checkpoints/step-NNNNNNNN` (Accelerate state, written
atomically; `--resume-from-checkpoint DIR|latest` continues exactly) and `final/` (`save_pretrained` model,
tokenizer and model card).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, set_seed
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from hope_hf import HopeCache, HopeConfig, HopeForCausalLM
from hope_hf.cli import check_writable_dir, one_line, train_parser, use_threads, writing
from hope_hf.data import (check_seq_len, check_text_column, idle_cms_levels, iter_batches, load_text_dataset,
                          prepare_blocks)
from hope_hf.modeling_hope import CACHE_FIELD, HopeBlock
from hope_hf.optim import create_optimizer

CKPT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"
# training arguments a resumed run must share with the checkpoint to continue exactly
_RESUME_KEYS = ("dataset", "dataset_config", "split", "text_column", "streaming", "seq_len", "batch_size",
                "grad_accum", "seed", "tbptt_segments", "val_fraction", "val_blocks", "world_size", "optimizer",
                "cms_outer_periods", "fsdp", "fsdp_units")


def build_parser():
    """The options of `hope-hf train` (defined in `hope_hf.cli`, which imports no heavy module)."""
    return train_parser()


# -- setup ------------------------------------------------------------------------------------------------------

def make_accelerator(args) -> Accelerator:
    """CPU (gloo) when CUDA is missing or --cpu; bf16 autocast when asked for and supported."""
    cpu = args.cpu or not torch.cuda.is_available()
    bf16 = args.bf16 and (cpu or torch.cuda.is_bf16_supported())
    if args.bf16 and not bf16:
        print("warning: bf16 is not supported on this device; training in float32")
    ddp = DistributedDataParallelKwargs(find_unused_parameters=has_unused_parameters(args))
    plugin = fsdp_plugin(args.fsdp_units) if args.fsdp else None
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no",
                              gradient_accumulation_steps=args.grad_accum, kwargs_handlers=[ddp], fsdp_plugin=plugin)
    if plugin is not None:
        enable_fsdp_on_cpu(accelerator, plugin)
    return accelerator


def has_unused_parameters(args) -> bool:
    """Whether some parameters get no gradient in a training step (DDP must then look for them): with TBPTT the
    initial memory states only reach the first segment's loss (and a segment without a CMS commit leaves that level's
    rate out), and a CMS level that never commits inside a block (`idle_cms_levels`) never reaches the loss."""
    return args.tbptt_segments > 1 or bool(idle_cms_levels(HopeConfig.from_preset(args.preset), args.seq_len))


def validate_args(args) -> None:
    """Fail before any data is read or anything is written."""
    for name, flag in (("max_steps", "--max-steps"), ("batch_size", "--per-device-train-batch-size"),
                       ("grad_accum", "--gradient-accumulation-steps"), ("eval_every", "--eval-steps")):
        if getattr(args, name) < 1:
            raise ValueError(f"{flag} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    check_seq_len(HopeConfig.from_preset(args.preset), args.seq_len, args.tbptt_segments)
    if getattr(args, "compile", False) and getattr(args, "fsdp", False):
        raise ValueError("--compile is not supported with --fsdp yet: pass one of them")
    check_fsdp_args(args)
    check_writable_dir(args.output_dir)


# -- sharded training (FSDP2) ------------------------------------------------------------------------------------

def check_fsdp_args(args) -> None:
    """Refuse the --fsdp combinations that cannot work, and an FSDP launch without --fsdp (before anything runs)."""
    if not args.fsdp:
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            raise ValueError("this launch turns FSDP on (ACCELERATE_USE_FSDP, e.g. an Accelerate config with "
                             "distributed_type: FSDP): pass --fsdp to hope-hf train as well")
        if args.fsdp_units != "model":
            raise ValueError("--fsdp-units chooses how --fsdp shards: pass --fsdp as well")
        return
    if args.optimizer != "adamw":
        raise ValueError(f"--fsdp does not support --optimizer {args.optimizer}: M3 orthogonalises whole matrices "
                         "(Newton-Schulz) and DMGD keeps per-tensor memories, and neither is written for FSDP's "
                         "sharded parameters (tried: M3 runs but diverges from the unsharded result, DMGD fails); "
                         "use --optimizer adamw")
    if args.cms_outer_periods:
        raise ValueError("--fsdp does not support --cms-outer-periods: its multi-frequency optimizer groups are built "
                         "from the unsharded Hope model and its MultiFrequency wrapper's state is not one that sharded "
                         "(torch.distributed.checkpoint) checkpoints hold")
    if args.bf16 and (args.cpu or not torch.cuda.is_available()):
        raise ValueError("--fsdp --bf16 needs CUDA GPUs (FSDP2 mixed precision); on the CPU train --fsdp in float32")
    if "WORLD_SIZE" not in os.environ:
        raise ValueError("--fsdp shards over the processes of a distributed launch: start it with `accelerate launch "
                         "--config_file examples/accelerate_fsdp2.yaml --num_processes N ...`")


def fsdp_plugin(units: str = "model") -> FullyShardedDataParallelPlugin:
    """Accelerate's FSDP2 plugin for Hope (see `FSDPUnit`): `units` "model" makes the whole model one FSDP unit,
    "block" one unit per `HopeBlock` (the embeddings, head and final norm stay in the root unit). Checkpoints are
    sharded (torch.distributed.checkpoint through `save_state`/`load_state`). Every field is set here, so an Accelerate
    config's fsdp_* entries cannot change what was tested; mixed precision follows --bf16."""
    wrap = {"auto_wrap_policy": "NO_WRAP"} if units == "model" else {
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_cls_names_to_wrap": ["HopeBlock"]}
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, **wrap, reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT",
        activation_checkpointing=False, cpu_offload=False, cpu_ram_efficient_loading=False)


def enable_fsdp_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Accelerate 1.15 turns FSDP on only for accelerator devices (`AcceleratorState`: MULTI_GPU, ...); a CPU run
    (gloo) stays MULTI_CPU and would silently fall back to DDP. FSDP2 itself runs on CPU with gloo, so the state is
    switched to FSDP here; from then on Accelerate's own FSDP2 code prepares, checkpoints and gathers."""
    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        accelerator.state.distributed_type = DistributedType.FSDP  # AcceleratorState, and PartialState (which
        accelerator.state.fsdp_plugin = plugin                    # AcceleratorState() re-reads), as on a GPU
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if not accelerator.is_fsdp2:
        raise ValueError(f"--fsdp needs a distributed launch (accelerate launch --config_file "
                         f"examples/accelerate_fsdp2.yaml ...); this run is {accelerator.distributed_type.value} with "
                         f"{accelerator.num_processes} process(es)")


class FSDPUnit(torch.nn.Module):
    """The causal LM as the only child of a plain module, for Accelerate's FSDP2 preparation: the root FSDP unit holds
    every parameter (--fsdp-units model) or, with one unit per `HopeBlock` (--fsdp-units block), the embeddings, the
    tied LM head and the final norm.

    Accelerate would carve the embeddings, head and final norm of a model that exposes `get_input_embeddings` /
    `base_model_prefix` into a unit of their own; Hope reads the head and the norm's weight outside their modules'
    forward (the CMS teach signals and the in-loop logits), where such a unit may hold only its local shard. The root
    unit's parameters stay gathered from the start of forward to the end of backward, so they are safe there.

    Why one unit is the default: Hope's forward is span-major (every layer for span 1, then every layer for span 2,
    ...: a span's CMS updates need the model's output on the previous span), so a per-block unit is gathered again for
    every span, in forward and in backward, where a Llama layer is gathered once. Measured (2 CPU processes, gloo, one
    fwd+bwd+AdamW step at 512 tokens): tiny 0.44 s with one unit (1 all-gather) vs 0.67 s per block (37); small
    6.1 s (1) vs 8.3 s (109), peak RSS 4.10 vs 4.46 GiB (the gathered parameters are small next to the activations).
    Per-block units pay off when the gathered model does not fit next to the activations."""

    def __init__(self, lm: HopeForCausalLM):
        super().__init__()
        self.lm = lm

    @property
    def config(self):
        return self.lm.config

    def forward(self, *args, **kwargs):
        return self.lm(*args, **kwargs)


def register_block_methods(model: torch.nn.Module) -> None:
    """With per-block FSDP units: a block's parameters are also read outside its forward (`init_state` before the
    first span, `cms_accumulate` after the last one when the state outlives the call), so FSDP must gather the
    block's shard for those methods as it does for forward. A no-op for blocks that are not FSDP units."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    for module in model.modules():
        if isinstance(module, HopeBlock):
            for name in ("init_state", "cms_accumulate"):
                register_fsdp_forward_method(module, name)


def vectorize_scalars(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 cannot shard 0-d parameters (each CMS level's `lr_logit`): make them 1-element vectors (the same values;
    they only enter by broadcasting). `gather_full_model` restores the shapes."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.dim() == 0:
                setattr(module, name, torch.nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))
    return model


def freeze_idle_cms_rates(model: HopeForCausalLM, args) -> HopeForCausalLM:
    """Freeze the learning rate (`lr_logit`) of each CMS level that never commits inside a training block (chunk >=
    block): it gets no gradient, so AdamW keeps no state for it, and a sharded optimizer state
    (torch.distributed.checkpoint) loads only when every trainable parameter has one. Training is unchanged (AdamW
    skips parameters without gradient). Per block, not per TBPTT segment: a commit at a segment boundary happens as
    the next segment starts, and its learning rate gets a gradient there."""
    idle = set(idle_cms_levels(model.config, args.seq_len))
    for layer in model.model.layers:
        for chunk, level in zip(model.config.cms_chunk_sizes, layer.cms):
            if chunk in idle:
                level.lr_logit.requires_grad_(False)
    return model


def gather_full_model(accelerator: Accelerator, model, config: HopeConfig) -> HopeForCausalLM | None:
    """The trained model, unsharded, on the main process (None on the others; every process must call this)."""
    full = accelerator.get_state_dict(model)  # a collective: the full state dict, on the main process
    if not accelerator.is_main_process:
        return None
    lm = HopeForCausalLM(config)
    shapes = lm.state_dict()
    lm.load_state_dict({k: v.reshape(shapes[k].shape) for k, v in
                        ((k.removeprefix("lm."), v) for k, v in full.items())})
    return lm.to(accelerator.device)


def find_checkpoint(output_dir: Path, spec: str | None) -> Path | None:
    """The checkpoint to resume from: `spec` itself, or the newest complete one under output_dir for 'latest'."""
    if spec is None:
        return None
    if spec != "latest":
        path = Path(spec)
        if not (path / STATE_FILE).is_file():
            raise ValueError(f"{path} is not a training checkpoint (no {STATE_FILE})")
        return path
    done = sorted(p for p in (output_dir / "checkpoints").glob(CKPT_PREFIX + "*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def load_tokenizer(args, ds, ckpt: Path | None, accelerator: Accelerator):
    """--tokenizer, else the checkpoint's tokenizer, else a BPE trained on the corpus by the main process (kept in
    memory until the corpus is checked: `save_trained_tokenizer`; the other processes, which run after the main one,
    read the saved copy). Set to pad on the left (the decoder-only convention batched generation needs), which is how
    it is saved."""
    tok = _tokenizer(args, ds, ckpt, accelerator)
    tok.padding_side = "left"
    return tok


def trains_tokenizer(args, ckpt: Path | None) -> bool:
    return not args.tokenizer and ckpt is None


def save_trained_tokenizer(args, ckpt: Path | None, tok, accelerator: Accelerator) -> None:
    """The main process saves the BPE it trained into output_dir/tokenizer (after the inputs have been checked)."""
    if trains_tokenizer(args, ckpt) and accelerator.is_main_process:
        with writing(args.output_dir / "tokenizer"):
            tok.save_pretrained(args.output_dir / "tokenizer")


def _tokenizer(args, ds, ckpt: Path | None, accelerator: Accelerator):
    if args.tokenizer:
        try:
            return AutoTokenizer.from_pretrained(args.tokenizer)
        except (OSError, ValueError) as e:  # missing, or a truncated tokenizer.json (JSONDecodeError)
            raise ValueError(f"could not load the tokenizer {args.tokenizer!r}: {e}") from e
    if ckpt is not None:
        try:
            return AutoTokenizer.from_pretrained(ckpt)
        except (OSError, ValueError) as e:
            raise ValueError(f"could not load the tokenizer of the checkpoint {ckpt}: {one_line(e)}") from e
    if not accelerator.is_main_process:
        return AutoTokenizer.from_pretrained(args.output_dir / "tokenizer")
    from hope_hf.tokenizer import train_bpe_tokenizer

    docs = ds.take(args.tokenizer_docs) if args.streaming else ds.select(range(min(len(ds), args.tokenizer_docs)))
    texts = (ex[args.text_column] for ex in docs if isinstance(ex.get(args.text_column), str))
    return train_bpe_tokenizer(texts, vocab_size=args.vocab_size)


def build_config(args, tok, ckpt: Path | None) -> HopeConfig:
    """The preset sized to the tokenizer; a checkpoint from another config is refused, naming the fields."""
    config = HopeConfig.from_preset(args.preset, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if ckpt is not None:
        saved = HopeConfig.from_pretrained(ckpt).to_diff_dict()
        ours = config.to_diff_dict()
        ignore = {"transformers_version", "architectures", "auto_map", "dtype"}
        diff = sorted(k for k in set(saved) | set(ours) if k not in ignore and saved.get(k) != ours.get(k))
        if diff:
            detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {ours.get(k)!r}" for k in diff)
            raise ValueError(f"checkpoint {ckpt} was trained with another model config ({detail}); resume with the "
                             f"same --preset and tokenizer, or start a new --output-dir")
    return config


def check_output_dir(args, ckpt: Path | None) -> None:
    """Refuse to mix a fresh run into an earlier run's checkpoints unless --overwrite-output-dir."""
    ckpts = args.output_dir / "checkpoints"
    if ckpt is None and ckpts.is_dir() and any(ckpts.iterdir()) and not args.overwrite_output_dir:
        raise ValueError(f"{args.output_dir} already holds checkpoints: pass --resume-from-checkpoint latest to "
                         f"continue that run, or --overwrite-output-dir to delete them")


def prepare_output_dir(args, ckpt: Path | None, accelerator: Accelerator) -> None:
    """With --overwrite-output-dir, delete an earlier run's checkpoints (once every input has been checked, including
    `check_output_dir`)."""
    ckpts = args.output_dir / "checkpoints"
    accelerator.wait_for_everyone()
    if ckpt is None and ckpts.is_dir() and accelerator.is_main_process:
        shutil.rmtree(ckpts)
    accelerator.wait_for_everyone()


# -- training ---------------------------------------------------------------------------------------------------

def forward_backward(model, batch: torch.Tensor, segments: int, accelerator: Accelerator) -> torch.Tensor:
    """Loss and gradients of one micro-batch; returns the mean next-token loss over the whole block.

    With `segments` K > 1 (truncated BPTT) the block is read in K consecutive pieces with the HopeCache carried and
    detached in between; every piece is scored against the next token (the boundary included) and normalised by
    the block's token count, so the loss equals the one-piece loss and only the gradient is truncated."""
    if segments == 1:
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        accelerator.backward(loss)
        return loss.detach()
    targets = F.pad(batch[:, 1:], (0, 1), value=-100)
    n_items = batch.shape[0] * (batch.shape[1] - 1)
    cache, total = HopeCache(accelerator.unwrap_model(model).config), 0.0
    for k, (ids, tgt) in enumerate(zip(batch.chunk(segments, 1), targets.chunk(segments, 1))):
        sync = accelerator.no_sync(model) if k < segments - 1 else contextlib.nullcontext()
        with sync:
            out = model(input_ids=ids.contiguous(), labels=ids, shift_labels=tgt.contiguous(),
                        num_items_in_batch=n_items, use_cache=True, **{CACHE_FIELD: cache})
            accelerator.backward(out.loss)
        cache = out[CACHE_FIELD].detach_()
        total = total + out.loss.detach()
    return total


@torch.no_grad()
@torch.compiler.set_stance("force_eager")     # `--compile` compiles for training only
def evaluate(model, val: torch.Tensor, batch_size: int, accelerator: Accelerator) -> float:
    """Mean validation loss over all processes (each scores every world_size-th block)."""
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    shard = val[accelerator.process_index:: accelerator.num_processes]
    sums = torch.zeros(2, device=accelerator.device)
    # the same number of forwards on every process (FSDP gathers the parameters in each); a process with no blocks
    # left scores one block and does not count it
    n_batches = math.ceil(math.ceil(len(val) / accelerator.num_processes) / batch_size)
    with accelerator.autocast():
        for i in range(0, n_batches * batch_size, batch_size):
            b = shard[i: i + batch_size].to(accelerator.device)
            n = len(b)
            if n == 0:
                b = val[:1].to(accelerator.device)
            loss = model(input_ids=b, labels=b, use_cache=False).loss.float()
            sums += torch.stack([loss * n, torch.tensor(float(n), device=sums.device)])
    sums = accelerator.reduce(sums, "sum")
    model.train(was_training)
    return (sums[0] / sums[1]).item()


def batch_hash(batch: torch.Tensor) -> int:
    """A 62-bit hash of a batch's token ids (fits an int64 tensor for gather)."""
    return int.from_bytes(hashlib.sha256(batch.cpu().numpy().tobytes()).digest()[:8], "little") >> 2


def params_hash(model) -> int:
    """A 62-bit hash of all parameter values (equal across data-parallel ranks when they stay in sync)."""
    from torch.distributed.tensor import DTensor

    h = hashlib.sha256()
    for p in model.parameters():
        p = p.full_tensor() if isinstance(p, DTensor) else p  # FSDP shards: gathered (a collective)
        h.update(p.detach().float().cpu().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 2


class RunLog:
    """`train_log.jsonl`, written by the main process; resuming keeps only the records up to the checkpoint."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
        with writing(path):
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record) -> None:
        if self.enabled:
            with writing(self.path), self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []


def complete_adam_state(optimizer):
    """Give every trainable parameter that has no optimizer state yet the state Adam(W) creates lazily at its first
    gradient (step 0, zero moments; Adam treats it exactly like no state). A sharded (DCP) checkpoint then has an entry
    for every parameter, which its loader requires: it initialises every state before reading. A parameter can go
    without a gradient for a while, e.g. the projection memories' write scale while their 64-token chunks never end
    inside a 64-token TBPTT segment."""
    optimizer = getattr(optimizer, "optimizer", optimizer)                      # Accelerate's wrapper
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32     # as Adam's own
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and not optimizer.state[p]:
                state = {"step": torch.tensor(0.0, dtype=scalar),
                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                if group.get("amsgrad"):
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                optimizer.state[p] = state


def save_checkpoint(accelerator: Accelerator, args, step: int, state: dict, config, tok) -> Path:
    """`accelerator.save_state` into a temporary directory, then renamed into place (atomic)."""
    root = args.output_dir / "checkpoints"
    final, tmp = root / f"{CKPT_PREFIX}{step:08d}", root / f".tmp-{CKPT_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        with writing(tmp):
            tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with writing(final), cleanup_on_error(tmp):
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            config.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))  # last: marks the checkpoint complete
            replace_dir(tmp, final)
            prune_checkpoints(root, args.keep_checkpoints)
    accelerator.wait_for_everyone()
    return final


@contextlib.contextmanager
def cleanup_on_error(tmp: Path):
    """Delete the temporary directory `tmp` if the block fails (the previous output stays as it was)."""
    try:
        yield
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete directory `tmp` to `final` with renames, replacing an older `final`."""
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def prune_checkpoints(root: Path, keep: int) -> None:
    if keep > 0:
        for old in sorted(root.glob(CKPT_PREFIX + "*"))[:-keep]:
            shutil.rmtree(old)


def plot_losses(records: list[dict], path: Path) -> None:
    """Training loss per step and validation loss (matplotlib Agg) into `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set(xlabel="optimizer step", ylabel="next-token loss (nats)", title="Hope training")
    ax.legend()
    fig.tight_layout()
    with writing(path):
        fig.savefig(path, dpi=100)
    plt.close(fig)


def card_title(args) -> str:
    """The model card's title: preset and data, e.g. `hope-tiny-stdlib` (not the directory name `final`)."""
    data = Path(str(args.dataset).rstrip("/")).name.split(".")[0] or "data"
    return f"hope-{args.preset}-{data}"


def save_final(model, tok, args, val_loss: float, tokens: int) -> Path:
    """`save_pretrained` model + tokenizer + model card into output/final: written into a temporary directory, then
    renamed, so `final/` is always complete (or the previous one)."""
    from hope_hf.cards import write_model_card

    final, tmp = args.output_dir / "final", args.output_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    training = {"data": f"{args.dataset} ({'streamed, ' if args.streaming else ''}{args.seq_len}-token blocks)",
                "steps": args.max_steps, "tokens seen": f"{tokens:,}",
                "batch": f"{args.batch_size} x {args.seq_len} tokens x {args.grad_accum} accumulation per process",
                "optimizer": f"{args.optimizer} (lr {args.lr:g}, weight decay {args.weight_decay:g}"
                             + (f", CMS outer periods {args.cms_outer_periods} tokens" if args.cms_outer_periods
                                else "") + "), cosine schedule",
                "recipe": "`hope-hf train` (hope_hf.train)"}
    with writing(final), cleanup_on_error(tmp):
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_model_card(tmp, model, training=training, model_name=card_title(args),
                         eval_results={"validation loss": round(val_loss, 4),
                                       "validation perplexity": round(math.exp(val_loss), 2)})
        replace_dir(tmp, final)
    return final


def divergence(step: int, loss: float, grad_norm: float, args) -> str | None:
    """The error that stops training when the loss or the gradient norm is not finite (checked before the update),
    else None."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return None
    ckpt = find_checkpoint(args.output_dir, "latest")
    kept = f"the last checkpoint is {ckpt}" if ckpt else "no checkpoint was written"
    hint = "lower --learning-rate" + (", train without --bf16" if args.bf16 else "") + ", or lengthen --warmup-steps"
    return (f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm}; nothing was saved for this "
            f"step ({kept}, no final model). Try: {hint} (--learning-rate is {args.lr:g})")


@torch.compiler.set_stance("force_eager")
def sample(model, tok, prompt: str, n: int) -> str:
    enc = tok(prompt, return_tensors="pt", return_token_type_ids=False).to(model.device)
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> Path:
    """Parse `argv` and train; returns the final `save_pretrained` directory."""
    return run(build_parser().parse_args(argv))


def run(args) -> Path:
    """Train with parsed options (see `hope_hf.cli.train_parser`); returns the final `save_pretrained` directory."""
    threads = use_threads(args.threads)
    if int(os.environ.get("RANK") or 0) == 0:                      # the main process (accelerate/torchrun set RANK)
        print(threads, flush=True)
    validate_args(args)
    accelerator = make_accelerator(args)
    is_main = accelerator.is_main_process
    set_seed(args.seed)
    ckpt = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint == "latest" and ckpt is None:
        accelerator.print(f"no checkpoint in {args.output_dir / 'checkpoints'}: starting from scratch")

    check_output_dir(args, ckpt)
    with accelerator.main_process_first():
        ds = load_text_dataset(args.dataset, args.dataset_config, args.split, args.streaming)
    check_text_column(ds, args.text_column, args.dataset)
    # the main process checks the tokenizer, config and corpus before it writes anything; the others follow it
    with accelerator.main_process_first():
        tok = load_tokenizer(args, ds, ckpt, accelerator)
        config = build_config(args, tok, ckpt)
        blocks = prepare_blocks(ds, tok, args.seq_len, args.text_column, args.val_fraction, args.val_blocks,
                                args.seed, accelerator.process_index, accelerator.num_processes)
        save_trained_tokenizer(args, ckpt, tok, accelerator)
    resumed = json.loads((ckpt / STATE_FILE).read_text()) if ckpt else None
    run_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    run_args["world_size"] = accelerator.num_processes
    saved_args = {"fsdp": False, "fsdp_units": "model", **resumed["args"]} if resumed else {}  # older checkpoints
    if resumed and saved_args["fsdp"] != args.fsdp:
        raise ValueError(f"checkpoint {ckpt} was written {'without' if args.fsdp else 'with'} --fsdp: "
                         f"resume it the same way (sharded and unsharded checkpoints differ)")
    if resumed:
        changed = [k for k in _RESUME_KEYS if saved_args.get(k) != run_args[k]]
        if changed:
            accelerator.print(f"warning: {', '.join(changed)} differ from the checkpoint: the resumed run will not "
                              f"reproduce the original one")
    prepare_output_dir(args, ckpt, accelerator)

    model = HopeForCausalLM(config)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
        model.model.checkpoint_span_groups = args.activation_checkpointing != "spans"
    if args.fsdp:
        model = FSDPUnit(vectorize_scalars(freeze_idle_cms_rates(model, args)))
    tokens_per_step = args.batch_size * args.seq_len * args.grad_accum * accelerator.num_processes
    if args.optimizer == "adamw" and not args.cms_outer_periods:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                      weight_decay=args.weight_decay)
    else:
        optimizer = create_optimizer(model, args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                                     cms_periods=args.cms_outer_periods, period_unit="tokens",
                                     tokens_per_step=tokens_per_step,
                                     **({"betas": (0.9, 0.95)} if args.optimizer == "adamw" else {}))
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 10)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, args.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if args.fsdp:
        register_block_methods(model)
        # FSDP2 warns when a unit returns a view (an in-place op on it would skip the pre-backward gather); a block's
        # `init_state` returns views of its initial states and the causal LM its logits, none changed in place
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    if args.compile:                    # regional: the blocks, in place; evaluation and sampling run eagerly
        accelerator.unwrap_model(model).compile_blocks()
    accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimizer step

    step, tokens, elapsed = 0, 0, 0.0
    if ckpt is not None:
        try:
            accelerator.load_state(str(ckpt))
        except (OSError, RuntimeError, SafetensorError) as e:  # a truncated or partly deleted checkpoint
            raise ValueError(f"cannot read the checkpoint {ckpt}: {one_line(e)}") from e
        step, tokens, elapsed = resumed["step"], resumed["tokens"], resumed["elapsed"]
        accelerator.print(f"resumed from {ckpt} at step {step}")
    log = RunLog(args.output_dir / "train_log.jsonl", is_main, step if ckpt else None)
    n_params = sum(p.numel() for p in model.parameters())
    sharding = " sharded with FSDP2" if args.fsdp else ""
    if args.fsdp and args.fsdp_units == "block":
        sharding += ", one unit per HopeBlock"
    accelerator.print(f"model: Hope {args.preset}, {n_params:,} parameters, vocab {len(tok)}; "
                      f"{accelerator.num_processes} process(es){sharding} on "
                      f"{accelerator.device}; train blocks "
                      f"{blocks.num_train if blocks.num_train is not None else '(streamed)'}, val blocks "
                      f"{len(blocks.val)} of {args.seq_len}")

    idle = idle_cms_levels(config, args.seq_len)
    if idle:
        accelerator.print(f"warning: the CMS level(s) with chunk {idle} never commit inside a {args.seq_len}-token "
                          f"training block, so their learning rate is not trained (they do commit at inference on "
                          f"longer texts); use --block-size > {max(idle)} to train them")
    if ckpt is None:  # the untrained model's validation loss, for the log and the plot
        val0 = evaluate(model, blocks.val, args.batch_size, accelerator)
        log.write(step=0, val_loss=val0, val_ppl=math.exp(val0))
    batches = iter_batches(blocks.train, args.batch_size, args.seed, start=step * args.grad_accum)
    # a `with` block, so the bar is closed before an error is printed
    with tqdm(total=args.max_steps, initial=step, desc="train", unit="step", disable=not is_main) as bar:
        model.train()
        val_loss = float("nan")
        while step < args.max_steps:
            t0 = time.perf_counter()
            loss = torch.zeros((), device=accelerator.device)
            for micro in range(args.grad_accum):
                batch = next(batches).to(accelerator.device)
                if args.debug_log_batches and micro == 0:
                    hashes = accelerator.gather(torch.tensor([batch_hash(batch)], device=accelerator.device))
                    log.write(step=step + 1, batch_hashes=hashes.tolist())
                with accelerator.accumulate(model):
                    loss += forward_backward(model, batch, args.tbptt_segments, accelerator) / args.grad_accum
            loss = accelerator.reduce(loss, "mean").item()
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)  # before clipping
            if error := divergence(step + 1, loss, float(grad_norm), args):
                raise ValueError(error)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            elapsed += time.perf_counter() - t0  # training time only (no evaluation or checkpointing)
            lr = scheduler.get_last_lr()[0]
            tok_s = tokens / elapsed
            log.write(step=step, loss=loss, lr=lr, grad_norm=round(float(grad_norm), 4), tokens=tokens,
                      tokens_per_s=round(tok_s, 1))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
            if step % args.eval_every == 0 or step == args.max_steps:
                val_loss = evaluate(model, blocks.val, args.batch_size, accelerator)
                log.write(step=step, val_loss=val_loss, val_ppl=math.exp(val_loss))
                if is_main:
                    tqdm.write(f"step {step}: val loss {val_loss:.4f}, perplexity {math.exp(val_loss):,.2f}")
            if (args.save_every and step % args.save_every == 0) or step == args.max_steps:
                state = {"step": step, "tokens": tokens, "elapsed": elapsed, "args": run_args}
                if args.fsdp:
                    complete_adam_state(optimizer)
                save_checkpoint(accelerator, args, step, state, config, tok)
    if args.debug_log_batches:
        digest = torch.tensor([params_hash(model)], device=accelerator.device)
        log.write(step=step, param_hashes=accelerator.gather(digest).tolist())
    if math.isnan(val_loss):  # resumed from the last checkpoint: nothing left to train
        val_loss = evaluate(model, blocks.val, args.batch_size, accelerator)

    final = args.output_dir / "final"
    full = gather_full_model(accelerator, model, config) if args.fsdp else None
    if is_main:
        model = full if args.fsdp else accelerator.unwrap_model(model)
        final = save_final(model, tok, args, val_loss, tokens)
        plot_losses(log.records(), args.output_dir / "loss.png")
        print(f"validation loss {val_loss:.4f}, perplexity {math.exp(val_loss):,.2f} after {step} steps, "
              f"{tokens:,} tokens")
        if accelerator.device.type == "cuda":
            print(f"peak GPU memory (process 0): {torch.cuda.max_memory_allocated(accelerator.device) / 2**30:.2f} GiB")
        if args.sample_tokens:
            print(f"greedy sample: {sample(model, tok, args.sample_prompt, args.sample_tokens)!r}")
        print(f"model: {final.resolve()}\nplot: {(args.output_dir / 'loss.png').resolve()}\n"
              f"log: {log.path.resolve()}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


if __name__ == "__main__":
    from hope_hf import cli

    _args = build_parser().parse_args()
    cli.run(run, _args, _args.debug)
