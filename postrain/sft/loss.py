"""The packed-batch loss: per-token cross entropy where the weights say, summed per row.

The optimizer minimises the token mean over the whole global batch (all micro-batches of all
ranks): each micro-batch contributes `sum(token losses) / N_global`, where N_global is the
all-reduced count of trained tokens of the step. With DeepSpeed averaging gradients over the W
data-parallel ranks, the backward loss is that value times W (and `scale_wrt_gas=False`), so one
process and many see the same gradient for the same global batch.
"""

from __future__ import annotations

import torch

from loopcoder.postrain.runtime.logprobs import token_log_probs

from .data import MicroBatch


def token_losses(model, batch: MicroBatch, device: torch.device, chunk_size: int = 1024) -> torch.Tensor:
    """`[B, T]` float32 cross entropy of each token's next-token prediction, 0 where not trained on; the logits
    are made `chunk_size` tokens at a time (`runtime.logprobs`), for training and evaluation alike."""
    scores = token_log_probs(
        model,
        batch.targets.to(device),
        chunk_size=chunk_size,
        input_ids=batch.input_ids.to(device),
        position_ids=batch.position_ids.to(device),
    )
    return -scores.log_probs * batch.weights.to(device)


def category_sums(losses: torch.Tensor, batch: MicroBatch) -> dict[str, list[float]]:
    """{category: [loss sum, trained tokens]} of one micro-batch (rows hold one category each)."""
    per_row = losses.detach().sum(-1).double().cpu()
    tokens = batch.weights.sum(-1).double()
    sums: dict[str, list[float]] = {}
    for category, loss, count in zip(batch.categories, per_row.tolist(), tokens.tolist(), strict=True):
        entry = sums.setdefault(category, [0.0, 0.0])
        entry[0] += loss
        entry[1] += count
    return sums


def merge_sums(into: dict[str, list[float]], other: dict[str, list[float]]) -> dict[str, list[float]]:
    for category, (loss, count) in other.items():
        entry = into.setdefault(category, [0.0, 0.0])
        entry[0] += loss
        entry[1] += count
    return into


__all__ = ["token_losses", "category_sums", "merge_sums"]
