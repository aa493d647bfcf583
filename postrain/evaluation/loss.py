"""Held-out loss and perplexity per category over `packed_sequence` shards.

    from loopcoder.postrain.evaluation.loss import evaluate_loss
    result = evaluate_loss(model, "data/heldout_packed", batch_size=4, max_rows=256)
    result["by_category"]["file_fim"]["loss"], result["overall"]["perplexity"]

Each packed row is fed as it was trained on: position ids restart at every document (the looped model
reads the document boundaries from them, so attention and the cross-loop history stay inside a
document), the target of token t is token t + 1 of the same document, and padding is never scored.
`mode="sft"` scores only tokens under the row's loss mask (what SFT trains on), `mode="pretrain"` every
token of every document. The loss is the token mean of the cross entropy (nats) per category and over
all rows; perplexity = exp(loss). A generic Hugging Face model that ignores position ids for masking
attends across packed documents; evaluate such models on shards packed one document per row.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from loopcoder.pipelines.io.filesystem import discover_shards
from loopcoder.postrain.runtime.logprobs import token_log_probs
from loopcoder.schemas import PACKED_SEQUENCE

logger = logging.getLogger(__name__)

LOSS_MODES = ("sft", "pretrain")
COLUMNS = ["input_ids", "cu_seqlens", "loss_mask", "category", "num_documents"]


def read_packed_rows(data: str | Path, max_rows: int | None = None) -> list[dict]:
    """Rows of every `packed_sequence` shard under `data` (sorted by path), at most `max_rows`.

    Shards are grouped by folder (the samples job writes one per category, `heldout/<category>/`);
    a cap takes rows from the folders in turn, so a small cap still covers every category rather
    than the first one.
    """
    data = Path(data)
    paths = [Path(p) for p in discover_shards(data)]
    if not paths:
        raise FileNotFoundError(f"no *.parquet shards under {data}")
    folders: dict[Path, list[Path]] = {}
    for path in paths:
        folders.setdefault(path.parent, []).append(path)
    streams = [_shard_rows(folder_paths) for folder_paths in folders.values()]
    if max_rows is None:
        return [row for stream in streams for row in stream]
    rows: list[dict] = []
    while streams and len(rows) < max_rows:
        for stream in list(streams):
            row = next(stream, None)
            if row is None:
                streams.remove(stream)
                continue
            rows.append(row)
            if len(rows) >= max_rows:
                break
    return rows


def _shard_rows(paths: list[Path]):
    for path in paths:
        PACKED_SEQUENCE.validate(pq.ParquetFile(path).schema_arrow)
        yield from pq.read_table(path, columns=COLUMNS).to_pylist()


def collate_rows(rows: list[dict], mode: str, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """`input_ids`, `position_ids`, `targets`, `weights` (`[B, T]`) for packed rows (see the module docstring)."""
    length = max(len(r["input_ids"]) for r in rows)
    batch = len(rows)
    input_ids = np.full((batch, length), pad_id, dtype=np.int64)
    position_ids = np.zeros((batch, length), dtype=np.int64)
    scored = np.zeros((batch, length), dtype=bool)  # token t is predicted from t - 1
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[b, :n] = row["input_ids"]
        bounds = np.asarray(row["cu_seqlens"])
        starts = np.repeat(bounds[:-1], np.diff(bounds))
        position_ids[b, :n] = np.arange(n) - starts
        position_ids[b, n:] = np.arange(length - n)
        inside = np.zeros(length, dtype=bool)
        inside[: int(bounds[row["num_documents"]])] = True
        inside[position_ids[b] == 0] = False
        if mode == "sft":
            inside[:n] &= np.asarray(row["loss_mask"], dtype=bool)
        scored[b] = inside
    weights = np.zeros((batch, length), dtype=np.float32)
    weights[:, :-1] = scored[:, 1:]
    targets = np.zeros((batch, length), dtype=np.int64)
    targets[:, :-1] = input_ids[:, 1:]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        "targets": torch.from_numpy(targets),
        "weights": torch.from_numpy(weights),
    }


@torch.no_grad()
def evaluate_loss(
    model,
    data: str | Path | list[dict],
    batch_size: int = 4,
    max_rows: int | None = None,
    mode: str = "sft",
    logprob_chunk_size: int = 1024,
) -> dict:
    """Token-mean loss and perplexity per category and overall; `data` is a shard directory or rows. The per-token
    losses are the SFT trainer's (`runtime.logprobs`, `logprob_chunk_size` tokens of fp32 logits at a time)."""
    if mode not in LOSS_MODES:
        raise ValueError(f"mode must be one of {LOSS_MODES}, got {mode!r}")
    rows = read_packed_rows(data, max_rows) if isinstance(data, str | Path) else list(data)[:max_rows]
    if not rows:
        raise ValueError(f"no packed rows in {data}")
    vocab_size = model.config.vocab_size
    largest = max(max(r["input_ids"]) for r in rows)
    if largest >= vocab_size:
        raise ValueError(f"the shards hold token id {largest}, beyond the model's vocabulary ({vocab_size})")
    model.eval()
    sums: dict[str, list[float]] = {}
    started = time.perf_counter()
    # rows of one category together: fewer padded tokens per batch and no cross-category mixing
    rows = sorted(rows, key=lambda r: (r["category"], len(r["input_ids"])))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate_rows(chunk, mode)
        scores = token_log_probs(
            model,
            batch["targets"].to(model.device),
            chunk_size=logprob_chunk_size,
            input_ids=batch["input_ids"].to(model.device),
            position_ids=batch["position_ids"].to(model.device),
        )
        losses = -scores.log_probs * batch["weights"].to(model.device)
        for row, loss, count in zip(chunk, losses.sum(-1).tolist(), batch["weights"].sum(-1).tolist(), strict=True):
            entry = sums.setdefault(row["category"], [0.0, 0.0])
            entry[0] += loss
            entry[1] += count
    seconds = time.perf_counter() - started

    def entry(loss_sum: float, tokens: float) -> dict:
        loss = loss_sum / tokens if tokens else float("nan")
        return {"loss": loss, "perplexity": math.exp(loss) if tokens else float("nan"), "tokens": int(tokens)}

    total = [sum(v[0] for v in sums.values()), sum(v[1] for v in sums.values())]
    result = {
        "overall": entry(*total),
        "by_category": {category: entry(*sums[category]) for category in sorted(sums)},
        "rows": len(rows),
        "mode": mode,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(total[1] / seconds, 1) if seconds else None,
    }
    logger.info("loss %.4f (ppl %.2f) over %d tokens", result["overall"]["loss"], result["overall"]["perplexity"],
                result["overall"]["tokens"])  # fmt: skip
    return result


__all__ = ["LOSS_MODES", "collate_rows", "evaluate_loss", "read_packed_rows"]
