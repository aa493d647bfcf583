"""Finding the shards under a path."""

from __future__ import annotations

from pathlib import Path


def discover_shards(path: str | Path) -> list[Path]:
    """Every `*.parquet` file at or under `path`, sorted; hidden, temporary and internal files are skipped.

    Files whose name or folder starts with a dot are shards being written
    (`.part-00001.parquet.XXXX.tmp`) or staging folders; folders starting with an underscore
    (`_work/`) hold a job's intermediate files between stages. Neither is finished output.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    if root.is_file():
        if root.suffix != ".parquet":
            raise ValueError(f"{root} is not a Parquet shard (expected a .parquet file or a directory)")
        return [root]
    shards = [
        p for p in root.rglob("*.parquet")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
    ]  # fmt: skip
    return sorted(shards)
