"""Loop diagnostics: how much each loop changes the hidden state, and how global each layer's gate is.

For a model and a few texts (run one at a time, no padding):

* per loop r: the mean L2 norm of the update `H_r - H_{r-1}` (loop 0: against the embeddings), the
  same relative to `|H_{r-1}|`, and the mean cosine similarity between `H_r` and `H_{r-1}` per token;
* per physical layer: the mean gate value over tokens, heads and loops >= 1 (the share of the global
  branch), and the same per loop.

These are the measurements the LoopCoder-v2 paper uses to choose the loop count: when a further loop
barely moves the hidden state (small update, cosine near 1), it is not worth its cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from loopcoder.schemas.tokens import has_tokenizer, load_tokenizer


@dataclass
class LoopStats:
    loop: int
    update_norm: float
    relative_update: float
    cosine_to_previous: float


@dataclass
class LayerGateStats:
    layer: int
    mean_gate: float
    per_loop: list[float] = field(default_factory=list)


@dataclass
class Diagnostics:
    num_tokens: int
    loops: list[LoopStats]
    gates: list[LayerGateStats]

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def diagnose(model, sequences: list[torch.Tensor]) -> Diagnostics:
    """Runs `model` (a `LoopCoderForCausalLM`) over each `[T]` id sequence and averages the statistics over tokens."""
    config = model.config
    attentions = [layer.self_attn for layer in model.model.layers]
    sums = {
        "update": [0.0] * config.num_loops,
        "relative": [0.0] * config.num_loops,
        "cosine": [0.0] * config.num_loops,
    }
    gate_sums = [[0.0] * max(config.num_loops - 1, 0) for _ in attentions]
    num_tokens = 0
    model.eval()
    try:
        for attention in attentions:
            attention.recorded_gates = []
        for ids in sequences:
            ids = ids.reshape(1, -1).to(model.device)
            out = model.model(ids, output_loop_states=True, use_cache=False)
            previous = model.model.embed_tokens(ids).float()
            for loop, hidden in enumerate(out.loop_hidden_states):
                hidden = hidden.float()
                update = (hidden - previous).norm(dim=-1)[0]
                sums["update"][loop] += update.sum().item()
                sums["relative"][loop] += (update / previous.norm(dim=-1)[0].clamp_min(1e-12)).sum().item()
                sums["cosine"][loop] += torch.cosine_similarity(hidden, previous, dim=-1)[0].sum().item()
                previous = hidden
            for layer_idx, attention in enumerate(attentions):
                # one recorded gate per loop >= 1, [1, T, H]
                for loop_idx, gate in enumerate(attention.recorded_gates):
                    gate_sums[layer_idx][loop_idx] += gate.mean(-1).sum().item()
                attention.recorded_gates = []
            num_tokens += ids.shape[1]
    finally:
        for attention in attentions:
            attention.recorded_gates = None
    if num_tokens == 0:
        raise ValueError("diagnose needs at least one non-empty sequence")
    loops = [
        LoopStats(
            loop=r,
            update_norm=sums["update"][r] / num_tokens,
            relative_update=sums["relative"][r] / num_tokens,
            cosine_to_previous=sums["cosine"][r] / num_tokens,
        )
        for r in range(config.num_loops)
    ]
    gates = []
    for layer_idx, per_loop in enumerate(gate_sums):
        means = [value / num_tokens for value in per_loop]
        gates.append(LayerGateStats(layer_idx, sum(means) / len(means) if means else float("nan"), means))
    return Diagnostics(num_tokens=num_tokens, loops=loops, gates=gates)


def encode_texts(model_dir, texts: list[str], vocab_size: int) -> list[torch.Tensor]:
    """Token ids of `texts` with the tokenizer saved beside the model, or UTF-8 bytes when there is none.

    The byte fallback exists for randomly initialised models (`loopcoder model init`), which ship no
    tokenizer; it maps byte b to id `b % vocab_size`.
    """
    if has_tokenizer(model_dir):
        tokenizer = load_tokenizer(model_dir)
        return [torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    return [torch.tensor([b % vocab_size for b in text.encode("utf-8")]) for text in texts]


__all__ = ["diagnose", "Diagnostics", "LoopStats", "LayerGateStats", "encode_texts"]
