"""Results on disk: `results.json` (metrics plus the model, data, config and code version) and `report.md`.

    write_results(out_dir, "fim", metrics, model_dir=..., data=..., config={...}, tables={...}, plots=[...])

The JSON is the record to compare runs with; the Markdown report is for reading: a header with the
provenance, one table per entry of `tables` (a list of dict rows), and the plots as images.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from loopcoder.pipelines.io.writers import atomic_write_bytes


def code_version() -> dict:
    """The loopcoder version and, in a checkout, the commit (read from `.git`; no git process is started)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("loopcoder")
    except PackageNotFoundError:
        package = "unknown"
    info = {"loopcoder": package, "python": platform.python_version()}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[2]
    head = root / ".git" / "HEAD"
    if head.is_file():
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_path = root / ".git" / ref[5:]
            commit = ref_path.read_text().strip() if ref_path.is_file() else _packed_ref(root, ref[5:])
        else:
            commit = ref
        if commit:
            info["commit"] = commit
    return info


def _packed_ref(root: Path, name: str) -> str | None:
    packed = root / ".git" / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            if line.endswith(" " + name):
                return line.split()[0]
    return None


def model_info(model_dir: str | Path, model=None) -> dict:
    """Where the model came from and what it is (type, loops, parameters)."""
    info: dict = {"path": str(Path(model_dir).resolve())}
    config_path = Path(model_dir) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        info["model_type"] = config.get("model_type")
        for key in ("num_loops", "plt_num_loops", "loop_num"):
            if key in config:
                info["trained_loops"] = config[key]
    if model is not None:
        info["parameters"] = sum(p.numel() for p in model.parameters())
        info["num_loops"] = getattr(model.config, "num_loops", None)
        info["dtype"] = str(model.dtype).replace("torch.", "")
    return info


def _clean(value):
    """NaN and infinities become null, so the JSON is valid everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def format_cell(value) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: str | Path,
    evaluation: str,
    metrics: dict,
    model: dict,
    data: dict | None = None,
    config: dict | None = None,
    tables: dict[str, Sequence[dict]] | None = None,
    plots: Sequence[str] = (),
) -> Path:
    """Writes `results.json` and `report.md` into `out_dir`; returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "evaluation": evaluation,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "data": data or {},
        "config": config or {},
        "code": code_version(),
        "metrics": metrics,
    }
    path = out_dir / "results.json"
    atomic_write_bytes(path, (json.dumps(_clean(payload), indent=2, default=str) + "\n").encode())
    lines = [
        f"# Evaluation: {evaluation}",
        "",
        f"- model: `{model.get('path')}` ({model.get('model_type')}, "
        f"{model.get('num_loops', model.get('trained_loops'))} loops, {model.get('parameters', '?')} parameters)",
        f"- data: {', '.join(f'{k}: `{v}`' for k, v in (data or {}).items()) or 'none'}",
        f"- config: {', '.join(f'{k}={v}' for k, v in (config or {}).items())}",
        f"- code: loopcoder {payload['code'].get('loopcoder')}"
        + (f", commit {payload['code']['commit'][:12]}" if payload["code"].get("commit") else ""),
        f"- created: {payload['created']}",
        "",
    ]
    for title, rows in (tables or {}).items():
        lines += [f"## {title}", "", markdown_table(rows)]
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    atomic_write_bytes(out_dir / "report.md", "\n".join(lines).encode())
    return path


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    text = "".join(json.dumps(_clean(row), default=str) + "\n" for row in rows)
    atomic_write_bytes(Path(path), text.encode())


__all__ = ["code_version", "markdown_table", "model_info", "write_jsonl", "write_results"]
