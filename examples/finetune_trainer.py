"""Fine-tune a saved Hope checkpoint with transformers' `Trainer`, report perplexity, save, and push.

    python examples/finetune_trainer.py --model runs/train/final --output-dir runs/finetune
    python examples/finetune_trainer.py --model runs/train/final --dataset my_corpus.txt --max-steps 200

Loads the checkpoint with `AutoModelForCausalLM`, packs a `datasets` corpus (default: the embedded stdlib-docstring
corpus) into blocks, trains with gradient accumulation and activation checkpointing, and reports perplexity twice:
exp(eval_loss) from `Trainer.evaluate`, and the offline `evaluate` module `metrics/nll_perplexity` (loaded by path,
no Hub access) on the per-token NLLs. The model is saved to OUTPUT/model and pushed with `push_to_hub`; offline (or
without --hub-model-id) push_to_hub cannot target a local directory, so the same files (`save_pretrained` of model
and tokenizer) are written to OUTPUT/hub instead, and the script says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import datasets
import evaluate
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

import hope_hf  # noqa: F401 - registers the Auto classes
from hope_hf.data import check_seq_len, load_text_dataset, prepare_blocks

METRIC = Path(__file__).resolve().parents[1] / "metrics" / "nll_perplexity"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a save_pretrained directory (model + tokenizer)")
    p.add_argument("--output-dir", type=Path, default=Path("runs/finetune"))
    p.add_argument("--dataset", default="stdlib", help="'stdlib', a local file/dir, or a Hub dataset name")
    p.add_argument("--text-column", default="text")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--val-blocks", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hub-model-id", default=None, help="push here when online (e.g. user/hope-finetuned)")
    return p.parse_args(argv)


def load_blocks(args, tok, config):
    """Train and eval `datasets.Dataset`s of packed `input_ids` blocks."""
    check_seq_len(config, args.seq_len)
    blocks = prepare_blocks(load_text_dataset(args.dataset), tok, args.seq_len, args.text_column,
                            val_blocks=args.val_blocks, seed=args.seed)
    return blocks.train.with_format(None), datasets.Dataset.from_dict({"input_ids": blocks.val.tolist()})


@torch.no_grad()
def metric_perplexity(model, eval_ds, batch_size: int) -> dict:
    """Per-token NLLs of the eval blocks, summarised by the offline `nll_perplexity` evaluate module."""
    metric = evaluate.load(str(METRIC))
    model.eval()
    for i in range(0, len(eval_ds), batch_size):
        ids = torch.tensor(eval_ds[i: i + batch_size]["input_ids"], device=model.device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        metric.add_batch(nlls=nll.tolist())
    return metric.compute()


def push(trainer, tok, args) -> str:
    """`push_to_hub` when online with a repo id; otherwise save the same files to OUTPUT/hub and say so."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if args.hub_model_id and not offline:
        trainer.model.push_to_hub(args.hub_model_id)
        tok.push_to_hub(args.hub_model_id)
        return f"pushed to https://huggingface.co/{args.hub_model_id}"
    hub = args.output_dir / "hub"
    trainer.model.save_pretrained(hub)
    tok.save_pretrained(hub)
    why = "HF_HUB_OFFLINE is set" if offline else "no --hub-model-id given"
    return (f"not pushed ({why}; push_to_hub cannot target a local directory): the files it would upload were "
            f"written with save_pretrained to {hub.resolve()}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    train_ds, eval_ds = load_blocks(args, tok, model.config)
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "trainer"), max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        activation_checkpointing=True, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.1,
        logging_steps=max(1, args.max_steps // 10), save_strategy="no", report_to="none", seed=args.seed,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False), processing_class=tok)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    eval_loss = trainer.evaluate()["eval_loss"]
    metric = metric_perplexity(trainer.model, eval_ds, args.batch_size)
    trainer.save_model(str(args.output_dir / "model"))
    pushed = push(trainer, tok, args)
    results = {"eval_loss_before": before, "eval_loss": eval_loss, "perplexity": math.exp(eval_loss),
               "metric": metric, "model": str(args.output_dir / "model"), "push": pushed}
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"eval loss {before:.4f} -> {eval_loss:.4f}; perplexity exp(eval_loss) = {math.exp(eval_loss):.3f}, "
          f"nll_perplexity metric = {metric['perplexity']:.3f} over {metric['num_tokens']:,} tokens")
    print(f"saved: {(args.output_dir / 'model').resolve()}\n{pushed}")
    return {**results, "trainer": trainer}


if __name__ == "__main__":
    main()
