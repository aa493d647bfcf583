"""PNG charts of shard statistics: what a person would rather look at than read."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from loopcoder.pipelines.inspection.stats import ShardStats

MAX_BARS = 20


def plot_stats(stats: ShardStats, out_dir: str | Path) -> list[Path]:
    """Writes every chart the statistics have data for; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def bars(counter: Counter, title: str, xlabel: str, name: str, share: bool = True) -> None:
        if not counter:
            return
        items = counter.most_common(MAX_BARS)
        total = sum(counter.values())
        labels = [str(k) for k, _ in items][::-1]
        values = [v / total * 100 if share else v for _, v in items][::-1]
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.4))
        ax.barh(labels, values, color="#4C72B0")
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.1f}%" if share else f" {value:,.0f}", va="center", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(title + (f" (top {MAX_BARS} of {len(counter)})" if len(counter) > MAX_BARS else ""))
        ax.spines[["top", "right"]].set_visible(False)
        save(fig, name)

    if stats.lengths:
        import numpy as np

        lengths = np.asarray(stats.lengths)
        positive = lengths[lengths > 0]
        fig, ax = plt.subplots(figsize=(7, 4))
        if positive.size:
            bins = np.logspace(np.log10(positive.min()), np.log10(positive.max() + 1), 40)
            ax.hist(positive, bins=bins, color="#4C72B0")
            ax.set_xscale("log")
        for name, value in stats.length_percentiles.items():
            if name.startswith("p"):
                ax.axvline(value, color="#C44E52", linestyle="--", linewidth=1)
                ax.text(value, ax.get_ylim()[1] * 0.95, f" {name}", color="#C44E52", fontsize=8)
        ax.set_xlabel(stats.length_unit or "length")
        ax.set_ylabel("count")
        ax.set_title(f"Length distribution ({lengths.size:,} items)")
        ax.spines[["top", "right"]].set_visible(False)
        save(fig, "lengths.png")
    bars(stats.languages, "Language share", "% of files", "languages.png")
    bars(stats.categories, "Category share", "% of rows", "categories.png")
    bars(stats.tokens_by_category, "Tokens per category", "tokens", "tokens_per_category.png", share=False)
    bars(stats.rejections, "Rejections by reason", "files rejected", "rejections.png", share=False)
    bars(stats.fim_split_kinds, "FIM split kinds", "% of FIM samples", "fim_split_kinds.png")
    if stats.candidate_pairs_by_jaccard:
        bins = sorted(stats.candidate_pairs_by_jaccard)
        counts = [stats.candidate_pairs_by_jaccard[b] for b in bins]
        threshold = stats.near_duplicate_threshold
        colours = [
            "#C44E52" if threshold is not None and float(b.split("-")[0]) >= threshold else "#8C8C8C" for b in bins
        ]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(bins, counts, color=colours)
        for x, count in enumerate(counts):
            ax.text(x, count, f"{count:,}", ha="center", va="bottom", fontsize=8)
        ax.set_xlabel("exact Jaccard similarity of the pair's shingle sets")
        ax.set_ylabel("candidate pairs")
        kept_note = f"; red: at or above the threshold {threshold:g}, duplicates" if threshold is not None else ""
        ax.set_title(f"Near-dedup candidate pairs (LSH buckets){kept_note}", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        save(fig, "near_duplicate_pairs.png")
    return written
