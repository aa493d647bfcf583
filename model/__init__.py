"""The looped model: LoopCoder-V2 (PLT) and IQuest-Coder-V1-Loop as Hugging Face models.

Importing this package registers the three model types with `AutoConfig` /
`AutoModel` / `AutoModelForCausalLM`:

* "loopcoder" (`LoopCoderConfig`, `LoopCoderForCausalLM`), our own spelling of the config;
* "iquestpltcoder" (released LoopCoder-V2 config.json, `IQuestPLTCoderForCausalLM`);
* "iquestloopcoder" (released IQuest-Coder-V1-Loop config.json, `IQuestLoopCoderForCausalLM`).

so released checkpoints load with `AutoModelForCausalLM.from_pretrained(dir)` without
`trust_remote_code`. See docs/model.md.
"""

# Imported from a checkout as `model` (the repository root on sys.path), this folder would be a second copy
# of `loopcoder.model`, with its own module state: refuse, and say how to import it.
if __name__ != "loopcoder.model":
    raise ImportError(f"import this package as `loopcoder.model`, not `{__name__}` (pip install -e . first)")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .attention import LOOPED_ATTENTION_FUNCTIONS, register_looped_attention
from .cache import LoopCoderCache
from .configuration_loopcoder import IQuestLoopCoderConfig, IQuestPLTCoderConfig, LoopCoderConfig
from .modeling_loopcoder import (
    IQuestLoopCoderForCausalLM,
    IQuestPLTCoderForCausalLM,
    LoopCoderForCausalLM,
    LoopCoderModel,
    LoopCoderPreTrainedModel,
)


class IQuestPLTCoderModel(LoopCoderModel):
    config_class = IQuestPLTCoderConfig


class IQuestLoopCoderModel(LoopCoderModel):
    config_class = IQuestLoopCoderConfig


for _config, _base, _lm in (
    (LoopCoderConfig, LoopCoderModel, LoopCoderForCausalLM),
    (IQuestPLTCoderConfig, IQuestPLTCoderModel, IQuestPLTCoderForCausalLM),
    (IQuestLoopCoderConfig, IQuestLoopCoderModel, IQuestLoopCoderForCausalLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)

__all__ = [
    "LoopCoderConfig",
    "IQuestPLTCoderConfig",
    "IQuestLoopCoderConfig",
    "LoopCoderPreTrainedModel",
    "LoopCoderModel",
    "LoopCoderForCausalLM",
    "IQuestPLTCoderForCausalLM",
    "IQuestLoopCoderForCausalLM",
    "LoopCoderCache",
    "LOOPED_ATTENTION_FUNCTIONS",
    "register_looped_attention",
]
