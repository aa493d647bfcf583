"""Configuration of the looped code models (LoopCoder-V2 "PLT" and IQuest-Coder-V1 "Loop").

One config class drives both released variants. The loop fields below are the model's own
names; the two subclasses `IQuestPLTCoderConfig` (`model_type: "iquestpltcoder"`) and
`IQuestLoopCoderConfig` (`model_type: "iquestloopcoder"`) read and write the released
`config.json` keys (`plt_*`, `loop_num`, `loop_window_size`) so that released checkpoints load
without remote code and `save_pretrained` writes the released format back.

See docs/model.md ("Configuration") for every field and /work/shared/plt_architecture.md for the
architecture they describe.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

GATE_INPUTS = ("hidden", "query")
DECODE_SCHEDULES = ("parallel", "sequential")
GATE_GRANULARITIES = ("head",)


@strict
class LoopCoderConfig(PreTrainedConfig):
    r"""Configuration of a looped Llama-style decoder.

    Parameters that describe the dense backbone are the Llama ones (`vocab_size`, `hidden_size`,
    `intermediate_size`, `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`,
    `head_dim`, `hidden_act`, `max_position_embeddings`, `rms_norm_eps`, `rope_parameters`,
    `attention_bias`, `mlp_bias`, `tie_word_embeddings`, `initializer_range`). `attention_output_bias`
    (None = `attention_bias`) lets folding keep Qwen2's layout: biases on q/k/v, none on o_proj.

    Parameters of the loop (defaults = released LoopCoder-V2):
        num_loops (int, defaults to 2): passes `R` over the shared layers (1 = a plain dense model).
        loop_window (int, defaults to 64): left extent `W` of the local branch in loops >= 1: query t
            sees its own loop's keys `t - W ... t` (`W + 1` keys incl. itself). V2 releases `[64, 0]`
            (65 keys); V1's `loop_window_size: 64` counts keys incl. self, i.e. `W = 63`.
        clp_shift (bool, defaults to True): cross-loop position offset (V2). Loop r at token t reads loop
            r - 1's output at token t - 1 (zero at a document's first token) and the loop input is
            `emb_scale * E + hidden_scale * H`. False = V1: loop r reads loop r - 1's raw output at t.
        emb_scale, hidden_scale (float, Optional): `a`, `b` of the V2 loop input; None means 1.0.
        normalize_per_loop (bool, defaults to True): pass each non-final loop's output through the
            shared final norm before feeding it to the next loop (V2 only).
        gate_input (str, defaults to "hidden"): "hidden" = `sigmoid(W RMSNorm(x) + b)` from the layer's
            residual input (released V2); "query" = `sigmoid(<q_h, w_h> + b_h)` from the post-RoPE query (V1).
        gate_in_model (bool, defaults to False): where the gates live: False = `model.layers.{i}.self_attn.plt_gate`
            (V2), True = `model.gate_projections.{i}` (V1).
        gate_bias_init (float, defaults to 2.0): initial gate bias for fresh weights (sigmoid(2) = 0.88, global-dominated,
            the value found in the released V1 weights).

    Parameters of training and decoding (not part of the architecture):
        loop_grad_scale (float, defaults to 1.0): factor on the gradient flowing from loop r back into loop r - 1's
            output through the loop input (BPTT stabilisation; 1.0 = exact gradient).
        loop_detach (bool, defaults to False): truncate BPTT: loop r's input carries no gradient into loop r - 1.
        decode_schedule (str, defaults to "parallel"): "parallel" runs all loops of a decoded token through each layer
            as one batched step (needs `clp_shift`); "sequential" runs the loops one after the other.
        clp_chunk_size (int, defaults to 64): chunk size of the parallel schedule's chunked prefill.
    """

    model_type = "loopcoder"
    keys_to_ignore_at_inference = ["past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }

    vocab_size: int = 76800
    hidden_size: int = 5120
    intermediate_size: int = 27648
    num_hidden_layers: int = 14
    num_attention_heads: int = 40
    num_key_value_heads: int | None = 8
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: int | float | None = 0.0
    attention_output_bias: bool | None = None
    mlp_bias: bool = False

    num_loops: int = 2
    loop_window: int = 64
    clp_shift: bool = True
    emb_scale: float | None = None
    hidden_scale: float | None = None
    normalize_per_loop: bool = True
    gate_input: str = "hidden"
    gate_in_model: bool = False
    gate_bias_init: float = 2.0

    loop_grad_scale: float = 1.0
    loop_detach: bool = False
    decode_schedule: str = "parallel"
    clp_chunk_size: int = 64

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_parameters is None and "rope_theta" not in kwargs:
            kwargs["rope_theta"] = 500000.0
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Raises a ValueError naming the field when the loop settings cannot describe a model."""
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if not 1 <= self.num_loops <= 8:
            raise ValueError(f"num_loops must be in 1..8, got {self.num_loops}")
        if self.loop_window < 0:
            raise ValueError(f"loop_window must be >= 0, got {self.loop_window}")
        if self.gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input must be one of {GATE_INPUTS}, got {self.gate_input!r}")
        if self.decode_schedule not in DECODE_SCHEDULES:
            raise ValueError(f"decode_schedule must be one of {DECODE_SCHEDULES}, got {self.decode_schedule!r}")
        if self.gate_in_model and self.gate_input != "query":
            raise ValueError("gate_in_model (the V1 layout) holds query gates: set gate_input='query'")
        if self.clp_chunk_size < 1:
            raise ValueError(f"clp_chunk_size must be >= 1, got {self.clp_chunk_size}")

    @property
    def local_cache_size(self) -> int:
        """Entries of the local (sliding) K/V cache per later loop and layer: the window incl. the token itself."""
        return self.loop_window + 1

    @property
    def loop_emb_scale(self) -> float:
        return 1.0 if self.emb_scale is None else float(self.emb_scale)

    @property
    def loop_hidden_scale(self) -> float:
        return 1.0 if self.hidden_scale is None else float(self.hidden_scale)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        # `LoopCoderForCausalLM.from_pretrained` on a released directory: build the subclass that
        # understands that directory's keys.
        target = CONFIG_CLASSES.get(config_dict.get("model_type"), cls)
        if target is not cls and issubclass(target, LoopCoderConfig) and cls is LoopCoderConfig:
            return target.from_dict(config_dict, **kwargs)
        return super().from_dict(config_dict, **kwargs)


# Fields computed from the released keys by the subclasses below; never written to their config.json.
_DERIVED_FIELDS = (
    "num_loops",
    "loop_window",
    "clp_shift",
    "emb_scale",
    "hidden_scale",
    "normalize_per_loop",
    "gate_input",
    "gate_in_model",
)


@strict
class IQuestPLTCoderConfig(LoopCoderConfig):
    """LoopCoder-V2 (PLT) as released: `model_type: "iquestpltcoder"` with its `plt_*` keys.

    `plt_window_size = [left, right]` is the flash-attn window the model was trained with: `left`
    earlier tokens plus the token itself are visible; `right` must be 0. `plt_emb_scale` /
    `plt_hidden_scale` default to None (= 1.0) as in the vendor class; the released checkpoint's
    config.json carries the values to use.
    """

    model_type = "iquestpltcoder"

    plt_num_loops: int | None = None
    plt_window_size: list[int] | None = None
    plt_normalize_per_loop: bool | None = None
    plt_emb_scale: float | None = None
    plt_hidden_scale: float | None = None
    plt_gate_use_hidden_states: bool | None = None

    def __post_init__(self, **kwargs):
        if self.plt_num_loops is not None:
            self.num_loops = self.plt_num_loops
        if self.plt_window_size is not None:
            left, right = self.plt_window_size
            if right != 0:
                raise ValueError(f"plt_window_size right extent must be 0 (causal), got {self.plt_window_size}")
            self.loop_window = int(left)
        if self.plt_normalize_per_loop is not None:
            self.normalize_per_loop = self.plt_normalize_per_loop
        if self.plt_emb_scale is not None:
            self.emb_scale = self.plt_emb_scale
        if self.plt_hidden_scale is not None:
            self.hidden_scale = self.plt_hidden_scale
        if self.plt_gate_use_hidden_states is not None:
            self.gate_input = "hidden" if self.plt_gate_use_hidden_states else "query"
        self.clp_shift = True
        self.gate_in_model = False
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.update(
            plt_num_loops=self.num_loops,
            plt_window_size=[self.loop_window, 0],
            plt_normalize_per_loop=self.normalize_per_loop,
            plt_emb_scale=self.emb_scale,
            plt_hidden_scale=self.hidden_scale,
            plt_gate_use_hidden_states=self.gate_input == "hidden",
            architectures=["IQuestPLTCoderForCausalLM"],
        )
        for key in _DERIVED_FIELDS:
            output.pop(key, None)
        return output


@strict
class IQuestLoopCoderConfig(LoopCoderConfig):
    """IQuest-Coder-V1-Loop as released: `model_type: "iquestloopcoder"`, `loop_num`, `loop_window_size`.

    `loop_window_size` counts the visible keys **including** the current token (64 -> keys t-63 ... t),
    the reading of vLLM, mlx-lm, Megatron and the newer HF code.
    """

    model_type = "iquestloopcoder"

    loop_num: int | None = None
    loop_window_size: int | None = None

    def __post_init__(self, **kwargs):
        self.num_loops = 2 if self.loop_num is None else self.loop_num
        self.loop_window = 63 if self.loop_window_size is None else self.loop_window_size - 1
        self.clp_shift = False
        self.normalize_per_loop = False
        self.emb_scale = None
        self.hidden_scale = None
        self.gate_input = "query"
        self.gate_in_model = True
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.update(
            loop_num=self.num_loops,
            loop_window_size=self.loop_window + 1,
            architectures=["IQuestLoopCoderForCausalLM"],
        )
        for key in _DERIVED_FIELDS:
            output.pop(key, None)
        return output


def convert_config(config: LoopCoderConfig, model_type: str) -> LoopCoderConfig:
    """The same model under another config flavour ("loopcoder", "iquestpltcoder", "iquestloopcoder").

    Tensor names do not change between flavours, so a checkpoint converts by rewriting config.json.
    Raises ValueError when the target flavour cannot express the model (e.g. a V2 model as "iquestloopcoder").
    """
    if model_type not in CONFIG_CLASSES:
        raise ValueError(f"model_type must be one of {sorted(CONFIG_CLASSES)}, got {model_type!r}")
    settings = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures")}
    for key in _DERIVED_FIELDS:
        settings[key] = getattr(config, key)
    for key in list(settings):
        if key.startswith("plt_") or key in ("loop_num", "loop_window_size"):
            settings.pop(key)
    if model_type == "iquestpltcoder":
        if not config.clp_shift or config.gate_in_model:
            raise ValueError(
                "only models with the cross-loop shift and per-layer gates have the iquestpltcoder layout"
            )
        settings.update(
            plt_num_loops=config.num_loops,
            plt_window_size=[config.loop_window, 0],
            plt_normalize_per_loop=config.normalize_per_loop,
            plt_emb_scale=config.emb_scale,
            plt_hidden_scale=config.hidden_scale,
            plt_gate_use_hidden_states=config.gate_input == "hidden",
        )
    elif model_type == "iquestloopcoder":
        if config.clp_shift or not config.gate_in_model or config.normalize_per_loop:
            raise ValueError(
                "only V1-style models (no shift, query gates in model.gate_projections) are iquestloopcoder"
            )
        settings.update(loop_num=config.num_loops, loop_window_size=config.loop_window + 1)
    if model_type != "loopcoder":
        for key in _DERIVED_FIELDS:
            settings.pop(key)
    return CONFIG_CLASSES[model_type](**settings)


CONFIG_CLASSES: dict[str, type[LoopCoderConfig]] = {
    LoopCoderConfig.model_type: LoopCoderConfig,
    IQuestPLTCoderConfig.model_type: IQuestPLTCoderConfig,
    IQuestLoopCoderConfig.model_type: IQuestLoopCoderConfig,
}

__all__ = ["LoopCoderConfig", "IQuestPLTCoderConfig", "IQuestLoopCoderConfig", "CONFIG_CLASSES", "convert_config"]
