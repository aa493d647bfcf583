"""Dataset cards and publishing job outputs to the Hugging Face Hub.

    loopcoder data card PATH [--name NAME] [--license SPDX]
    loopcoder data publish PATH --repo-id ORG/NAME [--private] [--revision BRANCH] [--dry-run]

The card is a `README.md` whose YAML header `huggingface_hub.DatasetCard` and `datasets` read:
one config per folder of shards (with its `data_files` glob and Arrow-derived features), licence,
size category and tags; then how the data was built, statistics, charts and loading snippets.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from loopcoder.pipelines.inspection.stats import collect_stats
from loopcoder.pipelines.io import filesystem as fs
from loopcoder.pipelines.io.filesystem import discover_shards
from loopcoder.schemas import ALL_RECORD_SCHEMAS, schema_of

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
CHARTS_DIR = "charts"
# `config.json` is what the clean job and the samples job write; the others are read when present
RESOLVED_CONFIG_NAMES = (
    "config.json",
    "job.resolved.yaml",
    "config.resolved.yaml",
    "resolved_config.yaml",
    "resolved_config.json",
)
SIZE_CATEGORIES = [
    (1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T"),
]  # fmt: skip


class PublishError(RuntimeError):
    """Publishing failed before anything was changed; the message says why in one line."""


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if rows < limit), "n>1T")


def shard_configs(root: str | Path) -> dict[str, dict[str, Any]]:
    """One dataset config per folder of shards: name, data_files glob, record type, Arrow schema."""
    root = fs.absolute(root)
    groups: dict[str, list[str]] = defaultdict(list)
    for shard in discover_shards(root):
        relative = shard[len(root) + 1 :]
        groups[relative.rpartition("/")[0] or "."].append(shard)
    configs = {}
    for folder, shards in sorted(groups.items()):
        schema = fs.parquet_file(shards[0]).schema_arrow
        identity = schema_of(schema)
        configs[folder.replace("/", "_") if folder != "." else "default"] = {
            "data_files": f"{folder}/*.parquet" if folder != "." else "*.parquet",
            "record": identity[0] if identity else "unknown",
            "schema": schema,
            "rows": sum(fs.parquet_file(s).metadata.num_rows for s in shards),
            "shards": len(shards),
        }
    return configs


def resolved_job_config(root: str | Path) -> tuple[str, Any] | None:
    """(file name, content) of the resolved config a job wrote beside its output, if any."""
    for name in RESOLVED_CONFIG_NAMES:
        try:
            text = fs.read_bytes(fs.join(root, name)).decode("utf-8")
        except FileNotFoundError:
            continue
        return name, json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    payload = fs.read_json_if_exists(fs.join(root, "manifest.json"))
    if isinstance(payload, dict) and "config" in payload:
        return "manifest.json", payload["config"]
    return None


def _as_datasets_type(arrow_type):
    """An Arrow type `datasets` has a feature for: a map becomes what it is stored as, a list of key/value structs."""
    import pyarrow as pa

    if pa.types.is_map(arrow_type):
        entry = pa.struct(
            [("key", _as_datasets_type(arrow_type.key_type)), ("value", _as_datasets_type(arrow_type.item_type))]
        )
        return pa.list_(entry)
    if pa.types.is_list(arrow_type):
        return pa.list_(_as_datasets_type(arrow_type.value_type))
    if pa.types.is_large_list(arrow_type):
        return pa.large_list(_as_datasets_type(arrow_type.value_type))
    if pa.types.is_struct(arrow_type):
        return pa.struct([pa.field(f.name, _as_datasets_type(f.type), f.nullable) for f in arrow_type])
    return arrow_type


def _features_yaml(schema) -> list[dict]:
    import pyarrow as pa
    from datasets import Features
    from datasets.info import DatasetInfo

    plain = pa.schema([pa.field(f.name, _as_datasets_type(f.type), f.nullable) for f in schema.remove_metadata()])
    return DatasetInfo(features=Features.from_arrow_schema(plain))._to_yaml_dict()["features"]


def build_card(root: str | Path, name: str | None = None, license: str = "other", with_charts: bool = True) -> str:
    """The text of the dataset card for a job output directory (a local path or a URI)."""
    root = fs.absolute(root)
    configs = shard_configs(root)
    if not configs:
        raise ValueError(f"no .parquet shards under {root}")
    stats = collect_stats(root, keep_lengths=with_charts)
    charts = _write_charts(stats, root) if with_charts else []
    name = name or fs.basename(root)
    languages = [language for language, _ in stats.languages.most_common() if language != "unknown"]
    metadata: dict[str, Any] = {
        "pretty_name": name,
        "license": license,
        "language": ["code"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(stats.rows)],
        "tags": ["code", "loopcoder", *[language.lower() for language in languages[:20]]],
        "configs": [
            {"config_name": config_name, "data_files": [{"split": "train", "path": config["data_files"]}]}
            for config_name, config in configs.items()
        ],
        "dataset_info": [
            {
                "config_name": config_name,
                "features": _features_yaml(config["schema"]),
                "splits": [{"name": "train", "num_examples": config["rows"]}],
            }
            for config_name, config in configs.items()
        ],  # fmt: skip
    }
    if len(configs) == 1 or "default" in configs:
        metadata["configs"][0]["default"] = True
    header = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
    body = [f"# {name}", "", _summary(stats, configs), "", "## Configs", ""]
    body += ["| config | record type | shards | rows | files |", "|---|---|---|---|---|"]
    for config_name, config in configs.items():
        body.append(
            f"| `{config_name}` | `{config['record']}` | {config['shards']:,} | {config['rows']:,} | `{config['data_files']}` |"
        )
    body += ["", "Each record type is described in the loopcoder schemas:", ""]
    for record in sorted({c["record"] for c in configs.values()}):
        if record in ALL_RECORD_SCHEMAS:
            body += [ALL_RECORD_SCHEMAS[record].describe(), ""]
    body += ["## How it was built", ""]
    resolved = resolved_job_config(root)
    if resolved is None:
        body += ["No resolved job config was found beside the shards.", ""]
    else:
        body += [f"Resolved job configuration (`{resolved[0]}`):", "", "```yaml",
                 yaml.safe_dump(resolved[1], sort_keys=False, width=120).strip(), "```", ""]  # fmt: skip
    body += ["## Statistics", "", *_stats_tables(stats), ""]
    if charts:
        body += ["## Charts", ""]
        body += [f"![{chart.rsplit('.', 1)[0]}]({CHARTS_DIR}/{chart})" for chart in charts]
        body.append("")
    body += [
        "## Loading",
        "",
        "With `datasets`, from this directory:",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
    ]
    for config_name, config in configs.items():
        body.append(
            f'{config_name} = load_dataset("parquet", data_files={{"train": "{fs.join(root, config["data_files"])}"}}, split="train")'
        )
    body += ["```", "", "From the Hub, once published (`loopcoder data publish`):", "", "```python",
             "from datasets import load_dataset", "",
             f'ds = load_dataset("ORG/{name}", "{next(iter(configs))}", split="train")', "```", "",
             "With Ray Data:", "", "```python", "import ray", ""]  # fmt: skip
    for config_name, config in configs.items():
        folder = fs.parent(fs.join(root, config["data_files"]))
        body.append(f'{config_name} = ray.data.read_parquet("{folder}")')
    body += ["```", ""]
    return f"---\n{header}---\n\n" + "\n".join(body)


def _write_charts(stats, root: str) -> list[str]:
    """The PNG charts under `root/charts/` (drawn locally, then uploaded when `root` is a URI); their names."""
    from loopcoder.pipelines.inspection.plots import plot_stats

    if fs.is_local(root):
        return [path.name for path in plot_stats(stats, Path(root) / CHARTS_DIR)]
    with tempfile.TemporaryDirectory() as scratch:
        names = []
        for path in plot_stats(stats, scratch):
            fs.atomic_write_bytes(fs.join(root, CHARTS_DIR, path.name), path.read_bytes())
            names.append(path.name)
        return names


def _summary(stats, configs) -> str:
    parts = [f"{stats.rows:,} rows in {stats.shards:,} Parquet shards ({stats.bytes_on_disk / 1e6:,.1f} MB)"]
    if stats.tokens is not None:
        parts.append(f"{stats.tokens:,} tokens")
    if stats.languages:
        parts.append(f"{len(stats.languages)} languages")
    return "A code dataset built with loopcoder: " + ", ".join(parts) + "."


def _stats_tables(stats) -> list[str]:
    lines = []
    for title, counter in (("Languages", stats.languages), ("Categories", stats.categories),
                           ("Tokens per category", stats.tokens_by_category), ("FIM split kinds", stats.fim_split_kinds),
                           ("Rejections by reason", stats.rejections)):  # fmt: skip
        if not counter:
            continue
        total = sum(counter.values())
        lines += [f"**{title}**", "", "| value | count | share |", "|---|---|---|"]
        lines += [f"| {value} | {count:,} | {count / total:.1%} |" for value, count in counter.most_common(25)]
        lines.append("")
    if stats.length_percentiles:
        values = ", ".join(f"{k} {v:,.0f}" for k, v in stats.length_percentiles.items())
        lines += [f"Lengths ({stats.length_unit}): {values}.", ""]
    if stats.dedup_clusters is not None:
        lines += [f"Near-duplicate clusters: {stats.dedup_clusters:,}.", ""]
    return lines


def write_card(root: str | Path, **kwargs) -> str:
    """Writes `root/README.md` (a local path or a URI) atomically; returns its location."""
    path = fs.join(fs.absolute(root), CARD_NAME)
    fs.atomic_write_bytes(path, build_card(root, **kwargs).encode("utf-8"))
    return path


def files_to_publish(root: str | Path) -> list[str]:
    """Paths (relative, POSIX) uploaded by `publish`: every file of the directory but hidden and internal ones.

    Names starting with a dot are temporary or hidden; names starting with an underscore are a job's
    internal state (`_work/` between stages, the `_SUCCESS` marker). A shard no marker of its job lists
    (left by a task that did not finish) is not uploaded either.
    """
    root = fs.absolute(root)
    files = fs.list_files(root)
    shards = {shard[len(root) + 1 :] for shard in discover_shards(root)}
    return [f for f in files if not f.endswith(".parquet") or f in shards]


def publish(root: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
            dry_run: bool = False, license: str = "other") -> list[str]:  # fmt: skip
    """Uploads the directory (and a generated card if it has none) to a Hub dataset repo.

    Checks the token and the endpoint before anything else, so that a publish that cannot work
    fails with one line and leaves the directory as it was; the card, when generated, is
    uploaded from memory rather than written into the directory.
    """
    if not fs.is_local(root):
        raise ValueError(f"publish uploads a local directory; {root} is not one (copy it to local disk first)")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    files = files_to_publish(root)
    if not any(f.endswith(".parquet") for f in files):
        raise ValueError(f"no .parquet shards under {root}")
    generate_card = CARD_NAME not in files
    listing = sorted([*files, CARD_NAME]) if generate_card else files
    if dry_run:
        return listing
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise PublishError("no Hugging Face token found: run `hf auth login` or set HF_TOKEN")
    api = HfApi(token=token)
    try:
        user = api.whoami()
    except Exception as error:  # noqa: BLE001 - any transport or auth failure means: nothing was done
        raise PublishError(f"cannot reach the Hugging Face Hub at {api.endpoint}: {_one_line(error)}") from error
    logger.info("publishing %d files to %s as %s", len(listing), repo_id, user.get("name"))
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        if generate_card:
            card = build_card(root, name=repo_id.split("/")[-1], license=license, with_charts=False)
            api.upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo=CARD_NAME, repo_id=repo_id,
                            repo_type="dataset", revision=revision, commit_message="Add dataset card")  # fmt: skip
        api.upload_folder(folder_path=root, repo_id=repo_id, repo_type="dataset", revision=revision,
                          allow_patterns=files, commit_message=f"Upload {root.name}")  # fmt: skip
    except Exception as error:  # noqa: BLE001
        raise PublishError(f"upload to {repo_id} failed (rerun to resume): {_one_line(error)}") from error
    return listing


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
