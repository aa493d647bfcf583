"""Per-token log-probabilities (and entropy) from the final hidden states, a chunk of tokens at a time.

    scored = token_log_probs(model, targets, input_ids=..., position_ids=..., chunk_size=1024, temperature=0.7)
    scored.log_probs        # [B, T] float32 log π(target) of the temperature-scaled distribution
    scored.entropy          # [B, T] float32 entropy of that distribution (no gradient), with `entropy=True`

The model body runs once; the output projection (`lm_head`), the fp32 cast and the log-softmax then run over
`chunk_size` tokens of the flattened batch at a time, so the largest logits tensor is `[chunk_size, V]` instead
of `[B, T, V]` (with V around 10^5, the full fp32 logits of a batch are often the largest tensor of a step).
With gradients each chunk is recomputed in the backward pass (activation checkpointing of that chunk), so the
backward pass does not keep every chunk's logits either. `chunk_size` 0 scores the whole batch in one chunk.

One loss path: the SFT loss (training and evaluation), GRPO's rollout, reference and update log-probabilities all
come from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


@dataclass
class TokenScores:
    log_probs: torch.Tensor  # [B, T] float32
    entropy: torch.Tensor | None = None  # [B, T] float32, detached


def causal_lm(model):
    """The `LoopCoderForCausalLM` inside a DeepSpeed engine and/or a PEFT wrapper (LoRA layers stay in place)."""
    inner = getattr(model, "module", model)
    get_base = getattr(inner, "get_base_model", None)
    return get_base() if get_base is not None else inner


def hidden_states(model, **inputs) -> torch.Tensor:
    """`[B, T, d]` final hidden states (after the last norm) of the model body; no logits are computed.

    The call goes through `model` itself (a DeepSpeed engine's forward, with ZeRO-3's parameter bookkeeping around
    the whole module), asking for the logits of no position, and a hook on the body keeps its output."""
    body = causal_lm(model).model
    kept: list[torch.Tensor] = []
    handle = body.register_forward_hook(lambda module, args, output: kept.append(output.last_hidden_state))
    no_position = torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device)
    try:
        model(**inputs, use_cache=False, logits_to_keep=no_position)
    finally:
        handle.remove()
    return kept[-1]


def _chunk_scores(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, entropy: bool
):
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = torch.gather(logp_all, -1, targets[:, None]).squeeze(-1)
    if not entropy:
        return logp, None
    with torch.no_grad():
        ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


def scores_from_hidden(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    entropy: bool = False,
) -> TokenScores:
    """Log-probabilities of `targets` [B, T] given `hidden` [B, T, d], `chunk_size` tokens of B x T at a time."""
    shape = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1).to(hidden.device)
    total = flat_targets.numel()
    size = total if chunk_size <= 0 else chunk_size
    recompute = torch.is_grad_enabled() and hidden.requires_grad and size < total
    # A frozen ZeRO-3 weight (LoRA's base) is saved for the backward pass by reference, not as a detached alias, so
    # by the end of the recomputation DeepSpeed has released it to its empty placeholder and torch's check of the
    # recomputed tensors' shapes would fail; DeepSpeed gathers it again before the head's backward uses it.
    check = "none" if any(hasattr(p, "ds_id") and not p.requires_grad for p in head.parameters()) else "default"
    log_probs, entropies = [], []
    for start in range(0, total, max(size, 1)):
        piece_h, piece_t = flat_hidden[start : start + size], flat_targets[start : start + size]
        if recompute:
            logp, ent = checkpoint(
                _chunk_scores,
                head,
                piece_h,
                piece_t,
                temperature,
                entropy,
                use_reentrant=False,
                determinism_check=check,
            )
        else:
            logp, ent = _chunk_scores(head, piece_h, piece_t, temperature, entropy)
        log_probs.append(logp)
        if ent is not None:
            entropies.append(ent.detach())
    if not log_probs:
        empty = flat_hidden.new_zeros(shape, dtype=torch.float32)
        return TokenScores(empty, empty.clone() if entropy else None)
    return TokenScores(torch.cat(log_probs).view(shape), torch.cat(entropies).view(shape) if entropy else None)


def token_log_probs(
    model,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    entropy: bool = False,
    positions: slice | None = None,
    **inputs,
) -> TokenScores:
    """Scores of `targets` [B, T'] predicted from `hidden_states(model, **inputs)[:, positions]` (T' positions;
    default: all)."""
    hidden = hidden_states(model, **inputs)
    if positions is not None:
        hidden = hidden[:, positions]
    return scores_from_hidden(causal_lm(model).lm_head, hidden, targets, chunk_size, temperature, entropy)


__all__ = ["TokenScores", "causal_lm", "hidden_states", "scores_from_hidden", "token_log_probs"]
