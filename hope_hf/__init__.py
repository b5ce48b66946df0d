"""hope-hf: Google Research's Nested Learning "Hope" architecture as Hugging Face transformers classes.

Importing the package registers `HopeConfig` (model_type "hope") with AutoConfig, and the models with AutoModel and
AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_hope import HopeCache
from .configuration_hope import PRESETS, HopeConfig
from .modeling_hope import HopeForCausalLM, HopeModel, HopePreTrainedModel

AutoConfig.register("hope", HopeConfig, exist_ok=True)
AutoModel.register(HopeConfig, HopeModel, exist_ok=True)
AutoModelForCausalLM.register(HopeConfig, HopeForCausalLM, exist_ok=True)
# saving copies the Hub-facing files next to the weights (auto_map in config.json), for trust_remote_code loading
HopeConfig.register_for_auto_class()
HopeModel.register_for_auto_class("AutoModel")
HopeForCausalLM.register_for_auto_class("AutoModelForCausalLM")


def _write_model_card(directory, model):
    from .cards import write_model_card

    return write_model_card(directory, model)


# save_pretrained writes a model card (README.md) when the directory has none
HopePreTrainedModel.model_card_writer = staticmethod(_write_model_card)

__version__ = "0.1.0"
__all__ = ["HopeConfig", "HopeModel", "HopeForCausalLM", "HopePreTrainedModel", "HopeCache", "PRESETS"]
