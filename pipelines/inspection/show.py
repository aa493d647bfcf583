"""Pretty-printed samples: FIM parts and special tokens visible, commits as diffs."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from loopcoder.pipelines.io.filesystem import basename, discover_shards, parquet_file
from loopcoder.schemas import schema_of

SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")
SAFE_FUNCTIONS = {"len": len, "any": any, "all": all, "min": min, "max": max, "abs": abs, "sum": sum}


def compile_where(expression: str | None):
    """A predicate over a row dict from a Python expression on its columns, e.g. `language == "Go"`.

    The expression sees the row's columns as names and `len/any/all/min/max/abs/sum`; nothing else
    (no builtins, no imports). It is the caller's own input, run on the caller's machine.
    """
    if not expression:
        return None
    try:
        return compile(expression, "<--where>", "eval")
    except SyntaxError as error:
        raise ValueError(f"--where is not a valid expression: {error.msg} in {expression!r}") from None


def _names_used(expression: str) -> set[str]:
    """Column names an expression reads: its free names, minus comprehension variables and functions."""
    tree = ast.parse(expression, mode="eval")
    loaded = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    bound = {
        target.id
        for node in ast.walk(tree) if isinstance(node, ast.comprehension)
        for target in ast.walk(node.target) if isinstance(target, ast.Name)
    }  # fmt: skip
    return loaded - bound - set(SAFE_FUNCTIONS)


def iter_rows(path: str | Path, where: str | None = None, limit: int = 5) -> Iterator[tuple[str, str, dict]]:
    """(shard, record type, row) for the first `limit` rows matching `where`, reading batch by batch."""
    code = compile_where(where)
    needed = _names_used(where) if code is not None else set()
    shown, searched = 0, 0
    columns_seen: set[str] = set()
    for shard in discover_shards(path):
        parquet = parquet_file(shard)
        identity = schema_of(parquet.schema_arrow)
        record = identity[0] if identity else "unknown"
        columns_seen |= set(parquet.schema_arrow.names)
        if not needed <= set(parquet.schema_arrow.names):
            continue  # a shard of another record type: the expression does not apply to it
        searched += 1
        for batch in parquet.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                if code is None or eval(code, {"__builtins__": {}, **SAFE_FUNCTIONS}, row):  # noqa: S307
                    yield shard, record, row
                    shown += 1
                    if shown >= limit:
                        return
    if searched == 0 and needed:
        unknown = ", ".join(sorted(needed - columns_seen)) or ", ".join(sorted(needed))
        raise ValueError(
            f"--where uses {unknown}, which no shard under {path} has; columns: {', '.join(sorted(columns_seen))}"
        )


def render_row(console, shard: str, record: str, row: dict, max_lines: int = 40, tokenizer=None) -> None:
    """Prints one row with rich: a header, then the view that suits its record type."""
    from rich.panel import Panel
    from rich.syntax import Syntax
    from rich.text import Text

    title = row.get("id") or row.get("path") or ""
    header = ", ".join(
        f"{k}={row[k]}" for k in ("repo", "path", "language", "mode", "split_kind", "node_type", "category", "kept",
                                   "rejection_reason", "lifecycle_percentile") if k in row and row[k] is not None
    )  # fmt: skip
    console.rule(f"[bold]{record}[/bold] {title}  [dim]{basename(shard)}[/dim]")
    if header:
        console.print(header, style="dim")

    def clip(text: str) -> str:
        lines = text.splitlines()
        return "\n".join(lines[:max_lines]) + (
            f"\n... {len(lines) - max_lines} more lines" if len(lines) > max_lines else ""
        )

    if record in ("fim_sample", "repo_fim_sample"):
        for part, style in (("prefix", "cyan"), ("middle", "bold green"), ("suffix", "magenta")):
            console.print(Panel(Text(clip(row[part] or "")), title=part, border_style=style, title_align="left"))
        console.print(Panel(highlight_special_tokens(clip(row["text"])), title="formatted text", title_align="left"))
    elif record == "commit_triplet":
        console.print(Text(row["message"] or "", style="italic"))
        console.print(Syntax(clip(row["patch"] or ""), "diff", theme="ansi_dark", word_wrap=True))
    elif record == "packed_sequence":
        console.print(render_packed(row, tokenizer, max_lines))
    elif record == "sft_conversation":
        for message in row["messages"]:
            console.print(Panel(Text(clip(message["content"] or "")), title=message["role"], title_align="left"))
    elif "content" in row:
        lexer = (row.get("language") or "text").lower().replace("c++", "cpp").replace("c#", "csharp")
        console.print(Syntax(clip(row["content"] or ""), lexer, theme="ansi_dark", line_numbers=True, word_wrap=True))
    else:
        console.print({k: v for k, v in row.items()})


def highlight_special_tokens(text: str):
    from rich.text import Text

    rendered = Text(text)
    rendered.highlight_regex(SPECIAL_TOKEN, style="bold yellow reverse")
    return rendered


def render_packed(row: dict, tokenizer, max_lines: int):
    """A packed row decoded document by document; tokens outside the loss mask are dimmed."""
    from rich.text import Text

    ids, mask, bounds = row["input_ids"], row["loss_mask"], row["cu_seqlens"]
    rendered = Text()
    if tokenizer is None:
        rendered.append(f"{len(ids)} tokens, {len(bounds) - 1} documents (pass --tokenizer to decode): {ids[:64]}")
        return rendered
    for doc, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        rendered.append(f"\n[document {doc}: tokens {start}-{end}]\n", style="bold blue")
        for token_id, supervised in zip(ids[start:end], mask[start:end], strict=True):
            piece = tokenizer.decode([token_id])
            style = "bold yellow reverse" if SPECIAL_TOKEN.fullmatch(piece) else (None if supervised else "dim")
            rendered.append(piece, style=style)
    lines = rendered.split("\n")
    clipped = Text("\n").join(lines[: max_lines * 4])
    return clipped
