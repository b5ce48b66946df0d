"""examples/finetune_trainer.py end to end on a tiny checkpoint: Trainer with gradient accumulation and activation
checkpointing, perplexity two ways, save, offline "push", and a reload with identical logits."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from transformers import AutoModelForCausalLM

from hope_hf import HopeConfig, HopeForCausalLM

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_trainer.py"


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_trainer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_finetune_trainer_example(tmp_path, tokenizer, tokenizer_texts):
    torch.manual_seed(0)
    config = HopeConfig.from_preset("tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    base = tmp_path / "base"
    HopeForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tokenizer_texts))
    out = tmp_path / "ft"
    try:
        res = load_example().main(["--model", str(base), "--output-dir", str(out), "--dataset", str(corpus),
                                   "--max-steps", "6", "--batch-size", "2", "--grad-accum", "2", "--val-blocks", "4",
                                   "--lr", "3e-3"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    args = res["trainer"].args
    assert args.gradient_accumulation_steps == 2 and args.activation_checkpointing
    assert res["trainer"].state.global_step == 6
    assert res["eval_loss"] < res["eval_loss_before"]
    assert res["perplexity"] == pytest.approx(math.exp(res["eval_loss"]))
    assert res["metric"]["perplexity"] == pytest.approx(res["perplexity"], rel=1e-4)
    assert res["metric"]["num_tokens"] == 4 * 127
    assert "push_to_hub cannot target a local directory" in res["push"]

    trained = res["trainer"].model.eval()
    assert trained.is_activation_checkpointing
    ids = torch.randint(3, len(tokenizer), (2, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = trained(input_ids=ids, use_cache=False).logits
        for saved in (out / "model", out / "hub"):
            reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
            assert torch.equal(reloaded(input_ids=ids, use_cache=False).logits, expected)
