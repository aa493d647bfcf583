"""Packed shards from the sample corpus, for the demo SFT run, the tests and the benchmark.

    loopcoder train prepare-sample --corpus data/sample --out data/sample_packed [--seq-len 256]

Until the Ray tokenisation job writes packed shards, this turns a sample corpus
(`loopcoder data sample-corpus`) into the shard sets `jobs/sft/sample_tiny.yaml` trains on, with
the packing of `pipelines/samples/packing.py`:

    OUT/pretrain/       source files as plain text (category `pretrain_file`), the replay set
    OUT/sft_easy/       conversations "write file X" -> file, shortest third (category `sft_file`)
    OUT/sft_medium/     middle third
    OUT/sft_hard/       longest third, plus commit conversations "message -> patch" (`sft_commit`)
    OUT/eval/           held-out conversations (1 in `eval_every`), never in the sets above
    OUT/manifest.json   rows and tokens per set

The conversations are synthetic (the instruction is derived from the file's path), so they are a
stand-in that exercises assistant-only loss, packing and the curriculum, not an SFT dataset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from loopcoder.pipelines.io.writers import ShardWriter, atomic_write_json
from loopcoder.pipelines.samples.packing import Document, PackingConfig, pack, tokenize_conversation, tokenize_text
from loopcoder.schemas import PACKED_SEQUENCE


def _rows(directory: Path, columns: list[str], limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.parquet")):
        rows += pq.read_table(path, columns=columns).to_pylist()
        if len(rows) >= limit:
            break
    return rows[:limit]


def _held_out(key: str, every: int) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % every == 0


def write_shards(rows: list[dict[str, Any]], directory: Path, rows_per_shard: int = 64) -> int:
    """Replaces the `part-*.parquet` shards of `directory` with `rows`; returns the rows written."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("part-*.parquet"):
        old.unlink()
    with ShardWriter(directory, PACKED_SEQUENCE, rows_per_shard) as writer:
        writer.write_all(rows)
    return writer.rows_written


def prepare_sample(
    corpus: str | Path,
    out: str | Path,
    seq_len: int = 256,
    max_files: int = 600,
    max_commits: int = 200,
    eval_every: int = 20,
    rows_per_shard: int = 64,
) -> dict[str, Any]:
    """Builds the shard sets listed in the module docstring; returns the manifest."""
    from loopcoder.schemas.tokens import load_tokenizer

    corpus, out = Path(corpus), Path(out)
    if not (corpus / "source_files").is_dir():
        raise FileNotFoundError(f"{corpus} has no source_files/ (build it with `loopcoder data sample-corpus`)")
    tokenizer = load_tokenizer()
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = PackingConfig(seq_len=seq_len)
    # keep each file short enough that a conversation fits a row
    max_chars = seq_len
    files = _rows(corpus / "source_files", ["id", "repo", "path", "language", "content"], max_files)
    commits = []
    if (corpus / "commits").is_dir():
        commits = _rows(corpus / "commits", ["id", "message", "patch"], max_commits)

    pretrain, conversations, held_out = [], [], []
    for record in files:
        content = record["content"][:max_chars]
        if not content.strip():
            continue
        pretrain.append(tokenize_text(tokenizer, content, "pretrain_file"))
        messages = [
            {
                "role": "user",
                "content": f"Write the {record['language']} file `{record['path']}` of {record['repo']}.",
            },
            {"role": "assistant", "content": content},
        ]
        document = tokenize_conversation(tokenizer, messages, "sft_file")
        (held_out if _held_out(record["id"], eval_every) else conversations).append(document)
    commit_docs = []
    for record in commits:
        if not record["patch"].strip() or not record["message"].strip():
            continue
        messages = [
            {"role": "user", "content": f"Write the patch for this change:\n{record['message'][:200]}"},
            {"role": "assistant", "content": record["patch"][:max_chars]},
        ]
        document = tokenize_conversation(tokenizer, messages, "sft_commit")
        (held_out if _held_out(record["id"], eval_every) else commit_docs).append(document)

    conversations.sort(key=lambda d: len(d.ids))
    third = len(conversations) // 3
    sets: dict[str, list[Document]] = {
        "pretrain": pretrain,
        "sft_easy": conversations[:third],
        "sft_medium": conversations[third : 2 * third],
        "sft_hard": conversations[2 * third :] + commit_docs,
        "eval": held_out,
    }
    manifest: dict[str, Any] = {"corpus": str(corpus), "seq_len": seq_len, "sets": {}}
    for name, documents in sets.items():
        rows, stats = pack(documents, config, pad_id)
        if not rows:
            raise ValueError(f"prepare-sample: set {name!r} is empty (corpus too small?)")
        write_shards(rows, out / name, rows_per_shard)
        manifest["sets"][name] = {
            "rows": len(rows),
            "documents": sum(stats.documents.values()),
            "tokens": sum(stats.tokens.values()),
            "dropped": dict(stats.dropped),
        }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def build_stdlib_shards(out: str | Path, max_files: int = 200, seq_len: int = 128) -> Path:
    """A small sample corpus of the standard library only (no git history), packed; reused when already built.

    Tests and the benchmark train on it: the same sample-corpus and packing code as the demo, sized for seconds.
    """
    from loopcoder.pipelines.sample_corpus import SampleCorpusConfig, build_sample_corpus

    out = Path(out)
    if (out / "packed" / "manifest.json").exists():
        return out / "packed"
    source = {
        "kind": "directory",
        "repo": "python-stdlib",
        "path": "{stdlib}",
        "license": "PSF-2.0",
        "include": ["*.py"],
        "exclude": ["test/*", "*/test/*", "*/tests/*", "idlelib/*", "site-packages/*"],
        "max_files": max_files,
    }
    build_sample_corpus(SampleCorpusConfig(output=str(out / "corpus"), sources=[source]), out / "corpus")
    prepare_sample(out / "corpus", out / "packed", seq_len=seq_len, max_files=max_files, eval_every=10)
    return out / "packed"


TINY_MODEL = dict(
    vocab_size=8192,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_loops=2,
    loop_window=64,
    max_position_embeddings=1024,
)


def tiny_run_config(shards: str | Path, output_dir: str | Path, **overrides: Any):
    """An `SFTConfig` for the tiny looped model on `build_stdlib_shards` output: SFT with the three-phase curriculum
    and replay, quiet (no bar, no TensorBoard), one thread. Tests and the benchmark start from it."""
    from .config import SFTConfig

    shards = Path(shards)
    raw: dict[str, Any] = dict(
        model_config=dict(TINY_MODEL),
        datasets={name: str(shards / name) for name in ("pretrain", "sft_easy", "sft_medium", "sft_hard", "eval")},
        curriculum=[
            {"name": "easy", "steps": 4, "mixture": {"sft_easy": 1.0}},
            {"name": "medium", "steps": 4, "mixture": {"sft_easy": 0.3, "sft_medium": 0.7}},
            {"name": "hard", "steps": 4, "mixture": {"sft_medium": 0.3, "sft_hard": 0.7}},
        ],
        replay={"pretrain": 1.0},
        replay_fraction=0.25,
        micro_batch_size=1,
        global_batch_size=4,
        learning_rate=3e-3,
        warmup_steps=2,
        output_dir=str(output_dir),
        resume="never",
        cpu_threads=1,
        progress_bar=False,
        report_to=[],
        tokenizer=None,
        log_interval=1,
    )
    raw.update(overrides)
    return SFTConfig.from_dict(raw)


__all__ = ["prepare_sample", "write_shards", "build_stdlib_shards", "tiny_run_config", "TINY_MODEL"]
