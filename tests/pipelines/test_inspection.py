"""`loopcoder shards ...` and `loopcoder data card/publish` on real pipeline outputs."""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopcoder.jobs.commands import shards as shards_commands
from loopcoder.jobs.commands.publishing import register_publishing
from loopcoder.pipelines.inspection import validate_shards
from loopcoder.pipelines.inspection.show import iter_rows
from loopcoder.pipelines.inspection.stats import collect_stats
from loopcoder.pipelines.publishing import build_card, files_to_publish, shard_configs, write_card
from loopcoder.pipelines.sample_corpus import SampleCorpusConfig, build_sample_corpus
from loopcoder.schemas import FIM_SAMPLE, PACKED_SEQUENCE, SCHEMA_VERSION_KEY, SOURCE_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A real sample-corpus output: standard-library files and this repository's commits."""
    import sysconfig

    out = tmp_path_factory.mktemp("inspect") / "corpus"
    config = SampleCorpusConfig(
        sources=[
            {"kind": "directory", "repo": "python-stdlib", "path": sysconfig.get_paths()["stdlib"],
             "include": ["json/*.py", "email/*.py", "*.pyi", "html/*"], "max_files": 60},
            {"kind": "directory", "repo": "npm", "path": "/usr/lib/node_modules/npm", "include": ["lib/*.js"],
             "max_files": 10, "optional": True},
            {"kind": "git_history", "repo": "loopcoder", "path": str(REPO_ROOT), "max_triplets": 3},
        ],
        rows_per_shard=10,
    )  # fmt: skip
    build_sample_corpus(config, out)
    return out


@pytest.fixture
def packed_and_fim(tmp_path) -> Path:
    out = tmp_path / "tokenised"
    rows = [
        {"input_ids": [1, 2, 3, 4, 5], "cu_seqlens": [0, 2, 5], "loss_mask": [0, 1, 1, 1, 1], "category": "file_fim",
         "num_documents": 2},
        {"input_ids": [7, 8, 9], "cu_seqlens": [0, 3], "loss_mask": [1, 1, 1], "category": "commit", "num_documents": 1},
    ]  # fmt: skip
    (out / "packed").mkdir(parents=True)
    pq.write_table(PACKED_SEQUENCE.from_records(rows), out / "packed" / "part-00000.parquet")
    pq.write_table(PACKED_SEQUENCE.from_records(rows[:1]), out / "packed" / "part-00001.parquet")
    fim = {"id": "f1", "source_id": "s", "repo": "r", "path": "a.py", "language": "Python", "mode": "psm",
           "split_kind": "ast", "node_type": "call", "prefix": "print(", "middle": "x", "suffix": ")\n",
           "text": "<|fim_prefix|>print(<|fim_suffix|>)\n<|fim_middle|>x<|im_end|>"}  # fmt: skip
    (out / "fim").mkdir()
    pq.write_table(
        FIM_SAMPLE.from_records([fim, fim | {"id": "f2", "split_kind": "line"}]), out / "fim" / "part-00000.parquet"
    )
    return out


def run_command(register, argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_stats_match_an_independent_count(corpus):
    stats = collect_stats(corpus)
    files = pq.read_table(corpus / "source_files")
    commits = pq.read_table(corpus / "commits")
    shards = sorted(corpus.rglob("part-*.parquet"))
    assert stats.shards == len(shards) > 2
    assert stats.rows == files.num_rows + commits.num_rows
    assert stats.bytes_on_disk == sum(p.stat().st_size for p in shards)
    assert stats.records["source_file"]["rows"] == files.num_rows
    assert dict(stats.languages) == dict(Counter(files.column("language").to_pylist()))
    sizes = np.asarray(files.column("size_bytes").to_pylist())
    assert stats.length_percentiles["p50"] == pytest.approx(np.percentile(sizes, 50))
    assert stats.length_percentiles["max"] == sizes.max()
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert dict(stats.job_rejections) == manifest["rejections"]


def test_stats_of_packed_sequences_count_tokens_from_the_footer(packed_and_fim):
    stats = collect_stats(packed_and_fim)
    packed = pq.read_table(packed_and_fim / "packed")
    assert stats.tokens == sum(len(ids) for ids in packed.column("input_ids").to_pylist()) == 13
    assert stats.documents == 5
    assert dict(stats.categories) == {"file_fim": 2, "commit": 1}
    assert dict(stats.tokens_by_category) == {"file_fim": 10, "commit": 3}
    assert dict(stats.fim_split_kinds) == {"ast": 1, "line": 1}
    assert stats.length_unit == "tokens per document" and stats.length_percentiles["max"] == 3


def test_stats_command_prints_tables_and_json(corpus, capsys):
    assert run_command(shards_commands.register, ["stats", str(corpus), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["rows"] == collect_stats(corpus).rows
    assert run_command(shards_commands.register, ["stats", str(corpus)]) == 0
    assert "languages" in capsys.readouterr().out


def test_validate_passes_real_output_and_names_each_problem(corpus, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    shards, problems = validate_shards(broken)
    assert problems == [] and len(shards) > 2
    first = sorted((broken / "source_files").glob("*.parquet"))
    # a truncated shard
    first[0].write_bytes(first[0].read_bytes()[: first[0].stat().st_size // 2])
    # a wrong column type
    table = pq.read_table(first[1])
    table = table.set_column(
        table.schema.get_field_index("size_bytes"), "size_bytes", table.column("size_bytes").cast(pa.string())
    )
    pq.write_table(table, first[1])
    # an old schema version
    table = pq.read_table(first[2])
    pq.write_table(table.replace_schema_metadata(table.schema.metadata | {SCHEMA_VERSION_KEY: b"0"}), first[2])
    _, problems = validate_shards(broken)
    messages = {Path(p.path).name: p.message for p in problems}
    assert "truncated or corrupt" in messages[first[0].name]
    assert "column 'size_bytes' has type string, expected int64" in messages[first[1].name]
    assert "version mismatch: table has version '0'" in messages[first[2].name]
    assert run_command(shards_commands.register, ["validate", str(broken)]) == 1
    out = capsys.readouterr().out
    assert f"INVALID {first[0]}" in out and f"{len(shards) - 3} of {len(shards)} shard(s) valid" in out


def test_validate_catches_corrupt_pages_unless_quick(tmp_path):
    path = tmp_path / "part-00000.parquet"
    generator = random.Random(0)
    rows = [{"id": str(i), "repo": "r", "path": f"{i}.py", "language": "Python", "content": generator.randbytes(300).hex(),
             "size_bytes": 600, "license": None, "revision": None} for i in range(50)]  # fmt: skip
    pq.write_table(SOURCE_FILE.from_records(rows), path, compression="zstd")
    # overwrite the middle of the content column's compressed pages; the footer stays intact
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(SOURCE_FILE.arrow_schema.get_field_index("content"))
    first_page = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    start = first_page + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    _, quick = validate_shards(path, quick=True)
    _, deep = validate_shards(path)
    assert quick == []
    assert len(deep) == 1 and "cannot be decoded" in deep[0].message


def test_show_renders_fim_parts_special_tokens_and_diffs(corpus, packed_and_fim, capsys):
    assert run_command(shards_commands.register, ["show", str(packed_and_fim / "fim"), "--n", "1"]) == 0
    out = capsys.readouterr().out
    for visible in ("prefix", "middle", "suffix", "<|fim_prefix|>", "<|fim_middle|>"):
        assert visible in out
    assert run_command(shards_commands.register, ["show", str(corpus / "commits"), "--n", "1"]) == 0
    assert re.search(r"^@@ ", capsys.readouterr().out, re.MULTILINE)
    assert run_command(shards_commands.register, ["show", str(packed_and_fim / "packed"), "--n", "1"]) == 0
    assert "[document 1: tokens 2-5]" in capsys.readouterr().out


def test_show_filters_rows_and_rejects_unknown_columns(corpus):
    rows = [row for _, _, row in iter_rows(corpus, where='path.startswith("json/") and size_bytes > 1000', limit=100)]
    expected = [
        r
        for r in pq.read_table(corpus / "source_files").to_pylist()
        if r["path"].startswith("json/") and r["size_bytes"] > 1000
    ]
    assert [r["id"] for r in rows] == [r["id"] for r in expected] and rows
    with pytest.raises(ValueError, match="--where uses lenguage"):
        list(iter_rows(corpus, where='lenguage == "Go"'))


def test_plot_writes_pngs(corpus, tmp_path, capsys):
    assert run_command(shards_commands.register, ["plot", str(corpus), "-o", str(tmp_path / "charts")]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    assert {p.name for p in written} >= {"lengths.png", "languages.png"}
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_card_parses_validates_and_its_snippet_loads_the_shards(corpus, tmp_path):
    from datasets import load_dataset
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    out = tmp_path / "carded"
    shutil.copytree(corpus, out)
    assert run_command(register_publishing, ["card", str(out), "--license", "mit"]) == 0
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "mit" and card.data.size_categories == ["n<1K"]
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert set(configs) == {"source_files", "commits"}
    for name, config in configs.items():
        (pattern,) = [f["path"] for f in config["data_files"]]
        assert sorted(out.glob(pattern)) == sorted((out / name).glob("part-*.parquet"))
    assert all((out / "charts" / p).exists() for p in ("lengths.png", "languages.png"))
    # the `datasets` snippet of the card runs as written
    snippet = re.search(r"```python\n(from datasets import load_dataset\n\n.*?)```", card.text, re.DOTALL).group(1)
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102
    assert namespace["source_files"].num_rows == pq.read_table(out / "source_files").num_rows
    assert namespace["commits"].num_rows == pq.read_table(out / "commits").num_rows
    # and the directory loads as a dataset repository through the card's configs
    assert load_dataset(str(out), "source_files", split="train").num_rows == namespace["source_files"].num_rows


def _tree_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _cli(*args, env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env_overrides
    loopcoder = shutil.which("loopcoder") or str(Path(sys.executable).parent / "loopcoder")
    return subprocess.run([loopcoder, *args], capture_output=True, text=True, env=env, timeout=120)


def test_publish_dry_run_lists_the_directory_plus_the_card(corpus, tmp_path):
    listing = _cli("data", "publish", str(corpus), "--repo-id", "org/sample", "--dry-run",
                   env_overrides={"HF_HOME": str(tmp_path / "hf")})  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    printed = [line.split()[0] for line in listing.stdout.splitlines()[:-1]]
    expected = sorted([p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file()] + ["README.md"])
    assert printed == expected == sorted(files_to_publish(corpus) + ["README.md"])


@pytest.mark.parametrize("case", ["no_token", "unreachable"])
def test_publish_failures_are_one_line_and_touch_nothing(corpus, tmp_path, case):
    before = _tree_fingerprint(corpus)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    if case == "unreachable":
        env |= {"HF_TOKEN": "hf_" + "x" * 34, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"}
    result = _cli("data", "publish", str(corpus), "--repo-id", "org/sample", env_overrides=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loopcoder: error: ")
    assert ("no Hugging Face token found" if case == "no_token" else "cannot reach the Hugging Face Hub") in lines[0]
    assert _tree_fingerprint(corpus) == before


def test_configs_name_each_shard_folder(packed_and_fim):
    configs = shard_configs(packed_and_fim)
    assert {name: (c["record"], c["rows"], c["shards"]) for name, c in configs.items()} == {
        "fim": ("fim_sample", 2, 1),
        "packed": ("packed_sequence", 3, 2),
    }
    card = build_card(packed_and_fim, with_charts=False)
    assert "13 tokens" in card


def test_write_card_is_atomic_and_replaces_the_previous_card(corpus, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(corpus, out)
    (out / "README.md").write_text("old")
    path = write_card(out, with_charts=False)
    assert Path(path).read_text().startswith("---\n") and not list(out.glob(".README.md.*"))
