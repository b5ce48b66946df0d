"""Model cards for Hope checkpoints (package-only module, not copied to the Hub).

The single source is the template `hope_hf/model_card_template.md` (shipped as package data); `render_model_card`
fills its `{{placeholders}}` and `write_model_card` writes the result as `README.md` into a saved model directory.

    python -m hope_hf.cards --preset tiny --vocab-size 2048 --name hope-demo-tiny --demo-steps 150 \
        -o model_cards/demo-tiny.md
    python -m hope_hf.cards --checkpoint runs/demo -o runs/demo/README.md
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path

from .configuration_hope import HopeConfig

TEMPLATE = "model_card_template.md"

# One line per HopeConfig field, for the card's configuration table.
FIELD_DOCS = {
    "vocab_size": "tokens in the vocabulary",
    "hidden_size": "model width (heads x head size)",
    "num_hidden_layers": "Hope blocks",
    "num_attention_heads": "memory heads per block",
    "memory_hidden_size": "hidden width of each memory MLP",
    "memory_chunk_size": "tokens per output-memory update",
    "projection_chunk_size": "tokens per k/v/q/eta/alpha memory update",
    "cms_chunk_sizes": "tokens per update of each CMS level",
    "cms_intermediate_size": "hidden width of each CMS MLP",
    "conv_size": "depthwise causal conv width on the memory input",
    "self_modifying": "k/v/q/eta/alpha are self-modifying memories",
    "use_dgd": "delta gradient descent (else plain gradient step)",
    "use_momentum": "momentum in the memory updates",
    "adaptive_query": "queries from a memory (else a fixed linear map)",
    "memory_objective": "inner recall loss (`l2` or `dot`)",
    "memory_grad_clip": "per-token norm bound of each memory layer's inner gradient",
    "memory_writes_first_layer": "every memory writes its first layer in context too (else only its second)",
    "memory_lr_max": "upper bound of the memory learning rates",
    "memory_lr_init": "memory learning rate at initialisation",
    "memory_retention_init": "range of the memory retention gates over the heads at initialisation",
    "projection_lr_scale_init": "initial learning-rate scale of the self-modifying projection memories",
    "cms_lr_init": "initial CMS learning rate",
    "cms_out_scale_init": "initial output scale of each CMS level (0: the level starts silent)",
    "cms_teach_signal": "where the CMS error signal comes from",
    "rms_norm_eps": "RMSNorm epsilon",
    "initializer_range": "std of the weight initialisation",
    "tie_word_embeddings": "LM head shares the input embeddings",
    "use_cache": "return a HopeCache by default",
    "pad_token_id": "padding token",
    "bos_token_id": "beginning-of-sequence token",
    "eos_token_id": "end-of-sequence token",
}


def config_fields() -> list[str]:
    """The fields HopeConfig declares (the generic PreTrainedConfig fields are left out)."""
    return list(HopeConfig.__annotations__)


def load_template() -> str:
    return files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")


def count_parameters(config) -> int:
    """Parameters of a HopeForCausalLM with this config (built on the meta device: no memory, no init)."""
    import torch

    from .modeling_hope import HopeForCausalLM

    with torch.device("meta"):
        model = HopeForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def _cell(value) -> str:
    return f"`{value}`".replace("|", "\\|")


def _config_table(config) -> str:
    rows = ["| Field | Value | Meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {_cell(getattr(config, name, None))} | {FIELD_DOCS.get(name, '')} |"
             for name in config_fields()]
    return "\n".join(rows)


def _format_count(n: int | None) -> str:
    if n is None:
        return "not reported"
    return f"{n:,} ({n / 1e6:.2f} M)" if n < 1e9 else f"{n:,} ({n / 1e9:.2f} B)"


def _format_value(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def _training(training) -> str:
    if not training:
        return "Not reported (the weights may be randomly initialised)."
    if isinstance(training, str):
        return training
    return "\n".join(f"- **{str(k).replace('_', ' ')}:** {_format_value(v)}" for k, v in training.items())


def _eval_table(results) -> str:
    """`{metric: value}` -> a Metric | Value table; a list of dicts -> one row per dict, columns in first-seen order."""
    if not results:
        return "No evaluation results reported."
    if isinstance(results, Mapping):
        results = [{"Metric": k, "Value": v} for k, v in results.items()]
    if isinstance(results, str) or not isinstance(results, Sequence):
        raise TypeError("eval_results must be a mapping {metric: value} or a list of dicts")
    cols = list(dict.fromkeys(k for row in results for k in row))
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_format_value(row.get(c, "")).replace("|", "\\|") for c in cols) + " |"
              for row in results]
    return "\n".join(lines)


def render_model_card(config, num_parameters=None, training=None, eval_results=None, model_name="hope") -> str:
    """The model card (Markdown with YAML front matter) for a Hope model with this `config`.

    `num_parameters`: counted from the config when None. `training`: a string or a mapping shown as a list (data,
    steps, tokens, ...). `eval_results`: `{metric: value}` or a list of dicts (one table row each)."""
    if num_parameters is None:
        try:
            num_parameters = count_parameters(config)
        except Exception:  # noqa: BLE001 - a card without a count is still a card
            num_parameters = None
    cms = config.cms_chunk_sizes
    values = {
        "model_name": model_name,
        "cms_levels": "here " + ", ".join(map(str, cms)) if cms else "this model has no CMS levels",
        "memory_writes": "both layers of every memory" if config.memory_writes_first_layer else
                         "only their second layer (the first stays a meta-learned feature map)",
        "config_table": _config_table(config),
        "num_parameters": _format_count(num_parameters),
        "training": _training(training),
        "eval_results": _eval_table(eval_results),
    }

    def fill(match):
        key = match.group(1)
        if key not in values:
            raise KeyError(f"the model card template uses an unknown placeholder {{{{{key}}}}}")
        return str(values[key])

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", fill, load_template())


GENERIC_DIR_NAMES = re.compile(r"^(final|model|output|checkpoint.*|step-.*|tmp.*|\..*)$")


def default_model_name(directory, config) -> str:
    """The card title for a model saved in `directory`: the directory's name, unless it is a generic one (`final`,
    `checkpoint-*`, a hidden temporary directory...); then `hope-<preset>` (or `hope-<hidden size>d` for a custom
    config)."""
    name = Path(directory).resolve().name
    if not GENERIC_DIR_NAMES.match(name):
        return name
    from .configuration_hope import PRESETS

    preset = next((p for p, fields in PRESETS.items()
                   if all(getattr(config, k, None) == v for k, v in fields.items())), None)
    return f"hope-{preset}" if preset else f"hope-{config.hidden_size}d"


def write_model_card(directory, model_or_config, **kwargs) -> Path:
    """Write `README.md` (the model card) into `directory`; returns its path.

    `model_or_config`: a Hope model (its parameters are counted) or a HopeConfig. `kwargs` go to
    `render_model_card`; `model_name` defaults to `default_model_name(directory, config)`."""
    directory = Path(directory)
    config = getattr(model_or_config, "config", model_or_config)
    if kwargs.get("num_parameters") is None and hasattr(model_or_config, "parameters"):
        kwargs["num_parameters"] = sum(p.numel() for p in model_or_config.parameters())
    kwargs.setdefault("model_name", default_model_name(directory, config))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "README.md"
    path.write_text(render_model_card(config, **kwargs), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Render a Hope model card.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a HopeConfig preset (tiny, small, 340m, 760m, 1.3b)")
    src.add_argument("--checkpoint", type=Path, help="a saved model directory (its config.json)")
    parser.add_argument("--vocab-size", type=int, help="vocab_size override for --preset")
    parser.add_argument("--name", help="model name / Hub id shown in the card")
    parser.add_argument("--demo-steps", type=int, help="describe training as `python -m hope_hf.demo --steps N`")
    parser.add_argument("-o", "--output", type=Path, help="write here (default: print)")
    args = parser.parse_args(argv)

    if args.preset:
        over = {"vocab_size": args.vocab_size} if args.vocab_size else {}
        config, name = HopeConfig.from_preset(args.preset, **over), args.name or f"hope-{args.preset}"
    else:
        config, name = HopeConfig.from_pretrained(args.checkpoint), args.name or args.checkpoint.resolve().name
    training = None
    if args.demo_steps:
        from .demo import training_info

        training = training_info(args.demo_steps)
    card = render_model_card(config, training=training, model_name=name)
    if args.output:
        args.output.write_text(card, encoding="utf-8")
    else:
        print(card)
    return card


__all__ = ["FIELD_DOCS", "config_fields", "count_parameters", "default_model_name", "render_model_card",
           "write_model_card"]

if __name__ == "__main__":
    main()
