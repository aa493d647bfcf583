"""The loop-count study: one checkpoint run at loop counts 1 ... R + 1, quality against cost, with loop diagnostics.

    from loopcoder.postrain.evaluation.loops import study_loops
    result = study_loops("runs/sft/final", loss_data="data/heldout_packed", fim_samples=samples)
    result["rows"]  # one per loop count: loss, FIM EM/ES, pass@1, last loop's update and cosine, gates, cost

For every loop count r the model is loaded with `num_loops = r` (see `generation.load_model`) and gets the
same evaluations: held-out loss (with `loss_data`), FIM EM/ES (with `fim_samples`), pass@k (with
`problems` and a sandbox), the loop diagnostics of `loopcoder.model.diagnostics` (per-loop update norm,
relative update and cosine to the previous loop; per-layer gate means) and two costs: forward time per
1,000 tokens (from the loss pass, or the diagnostics pass without data) and greedy decode time per token.
This is the gain/cost view of the LoopCoder-v2 paper: a further loop is worth running while its loss or
ES gain is large and its hidden-state update is not vanishing (relative update well above 0, cosine below 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from loopcoder.model.diagnostics import diagnose, encode_texts
from loopcoder.schemas.tokens import load_tokenizer

from .generation import HFGenerator, load_model
from .loss import evaluate_loss, read_packed_rows

logger = logging.getLogger(__name__)

DEFAULT_TEXT = '''def fibonacci(n: int) -> list[int]:
    """The first n Fibonacci numbers."""
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()
'''


def _diagnostic_sequences(
    model_dir, model, rows: list[dict] | None, count: int, max_tokens: int
) -> list[torch.Tensor]:
    """The first document of the first `count` packed rows, else the default snippet."""
    if rows:
        sequences = []
        for row in rows[:count]:
            end = min(row["cu_seqlens"][1], max_tokens)
            sequences.append(torch.tensor(row["input_ids"][:end]))
        return [s for s in sequences if s.numel() > 1]
    return [ids[:max_tokens] for ids in encode_texts(model_dir, [DEFAULT_TEXT], model.config.vocab_size)]


@torch.no_grad()
def decode_ms_per_token(model, prompt: torch.Tensor, new_tokens: int = 16) -> float:
    """Wall time per greedily decoded token after a prefill of `prompt` (cache on), in milliseconds."""
    ids = prompt[None].to(model.device)
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False, pad_token_id=0)
    started = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), **options)
    total = time.perf_counter() - started
    started = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=0)
    prefill = time.perf_counter() - started
    return 1000 * max(total - prefill, 0.0) / (new_tokens - 1)


def study_loops(
    model_dir: str | Path,
    loop_counts: Sequence[int] | None = None,
    loss_data: str | Path | None = None,
    loss_rows: int | None = 64,
    loss_mode: str = "sft",
    fim_samples: Sequence[dict] | None = None,
    problems: Sequence[dict] | None = None,
    pool=None,
    batch_size: int = 4,
    diagnostic_rows: int = 8,
    diagnostic_tokens: int = 512,
) -> dict:
    """Runs the evaluations at each loop count (default 1 ... R + 1); returns `rows` (the table) and `details`."""
    from transformers import AutoConfig

    import loopcoder.model  # noqa: F401 - registers the looped model types

    config = AutoConfig.from_pretrained(model_dir)
    trained = getattr(config, "num_loops", None)
    if trained is None:
        raise ValueError(f"{model_dir} is not a looped model ({config.model_type})")
    loop_counts = list(loop_counts or range(1, trained + 2))
    rows_data = read_packed_rows(loss_data, loss_rows) if loss_data else None
    table, details = [], []
    for loops in loop_counts:
        logger.info("loop count %d", loops)
        model = load_model(model_dir, num_loops=loops)
        row: dict = {"loops": loops, "trained": loops == trained}
        detail: dict = {"loops": loops}
        sequences = _diagnostic_sequences(model_dir, model, rows_data, diagnostic_rows, diagnostic_tokens)
        started = time.perf_counter()
        diagnostics = diagnose(model, sequences)
        diagnose_seconds = time.perf_counter() - started
        detail["diagnostics"] = diagnostics.to_dict()
        if rows_data:
            loss = evaluate_loss(model, rows_data, batch_size=batch_size, mode=loss_mode)
            detail["loss"] = loss
            row["loss"] = loss["overall"]["loss"]
            row["perplexity"] = loss["overall"]["perplexity"]
            row["forward_ms_per_1k_tokens"] = 1e6 / loss["tokens_per_second"] if loss["tokens_per_second"] else None
        else:
            row["forward_ms_per_1k_tokens"] = 1e6 * diagnose_seconds / diagnostics.num_tokens
        if fim_samples or problems:
            tokenizer = load_tokenizer(model_dir, fallback="bundled", vocab_size=model.config.vocab_size)
            generator = HFGenerator(model, tokenizer, batch_size)
            if fim_samples:
                from .fim import evaluate_fim

                fim = evaluate_fim(fim_samples, generator)
                detail["fim"] = fim.summary
                row["fim_em"] = fim.summary["overall"]["em"]
                row["fim_es"] = fim.summary["overall"]["es"]
            if problems:
                from .problems import evaluate_problems

                solved = evaluate_problems(problems, generator, n=1, temperature=0.0, ks=(1,), pool=pool)
                detail["problems"] = solved.summary
                row["pass@1"] = solved.summary["pass@1"]
        last = diagnostics.loops[-1]
        row["last_loop_relative_update"] = last.relative_update
        row["last_loop_cosine"] = last.cosine_to_previous
        gates = [g.mean_gate for g in diagnostics.gates]
        row["mean_gate"] = sum(gates) / len(gates) if loops > 1 and gates else float("nan")
        row["decode_ms_per_token"] = decode_ms_per_token(model, sequences[0][:64])
        table.append(row)
        details.append(detail)
        del model
    return {"trained_loops": trained, "rows": table, "details": details}


def plot_loops(study: dict, path: str | Path) -> Path:
    """Three panels against the loop count: quality (loss, FIM ES, pass@1), per-loop diagnostics, cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = study["rows"]
    loops = [r["loops"] for r in rows]
    figure, (quality, dynamics, cost) = plt.subplots(1, 3, figsize=(13, 3.8))
    plotted = False
    if any("loss" in r for r in rows):
        quality.plot(loops, [r.get("loss") for r in rows], "o-", label="held-out loss")
        plotted = True
    gains = quality.twinx() if plotted and any(("fim_es" in r or "pass@1" in r) for r in rows) else quality
    for key, label in (("fim_es", "FIM ES"), ("fim_em", "FIM EM"), ("pass@1", "pass@1")):
        if any(key in r for r in rows):
            gains.plot(loops, [r.get(key) for r in rows], "s--", label=label)
    if gains is not quality:
        gains.legend(loc="upper right", fontsize=8)
    quality.legend(loc="upper left", fontsize=8)
    quality.set_title("quality")
    quality.set_xlabel("loops")
    for detail in study["details"]:
        stats = detail["diagnostics"]["loops"]
        dynamics.plot(
            [s["loop"] for s in stats], [s["relative_update"] for s in stats], "o-", label=f"R={detail['loops']}"
        )
    dynamics.set_yscale("log")
    dynamics.set_title("relative update |H_r - H_r-1| / |H_r-1|")
    dynamics.set_xlabel("loop index r (0: against the embeddings)")
    dynamics.set_xticks(range(max(loops)))
    dynamics.legend(fontsize=8)
    cost.plot(loops, [r["decode_ms_per_token"] for r in rows], "o-", label="decode ms/token")
    cost.plot(loops, [r["forward_ms_per_1k_tokens"] for r in rows], "s--", label="forward ms/1k tokens")
    cost.set_title("cost")
    cost.set_xlabel("loops")
    cost.legend(fontsize=8)
    for axis in (quality, cost):
        axis.set_xticks(loops)
    trained = study.get("trained_loops")
    if trained in loops:
        for axis in (quality, cost):
            axis.axvline(trained, color="grey", linestyle=":", linewidth=1)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = ["DEFAULT_TEXT", "decode_ms_per_token", "plot_loops", "study_loops"]
