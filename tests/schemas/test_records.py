import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopcoder.schemas import (
    ALL_RECORD_SCHEMAS,
    SCHEMA_VERSION_KEY,
    SOURCE_FILE,
    SchemaError,
    get_schema,
    schema_of,
)

FILE = {
    "id": "0f3a",
    "repo": "python-stdlib",
    "path": "json/decoder.py",
    "language": "Python",
    "content": "def f():\n    return 'é'\n",
    "size_bytes": 24,
    "license": "PSF-2.0",
    "revision": None,
}
FIM = {"mode": "psm", "split_kind": "ast", "node_type": "call", "prefix": "a(", "middle": "b", "suffix": ")"}
FIM["text"] = "<|fim_prefix|>a(<|fim_suffix|>)<|fim_middle|>b<|im_end|>"

VALID_RECORDS = {
    "source_file": FILE,
    "filtered_file": FILE
    | {
        "kept": False,
        "rejection_reason": "max_line_length",
        "decisions": [
            {"step": "size", "kept": True, "reason": None},
            {"step": "quality", "kept": False, "reason": "max_line_length"},
        ],
        "content_sha256": "ab" * 32,
        "near_dup_cluster": None,
        "ast_status": "ok",
    },
    "fim_sample": {"id": "s1", "source_id": "0f3a", "repo": "r", "path": "a.py", "language": "Python"} | FIM,
    "repo_fim_sample": {
        "id": "s2",
        "repo": "r",
        "target_path": "a.py",
        "language": "Python",
        "context_paths": ["b.py"],
    }
    | FIM
    | {"num_tokens": 17},
    "commit_triplet": {
        "id": "r@c1",
        "repo": "r",
        "commit": "c1",
        "parent_commit": "c0",
        "message": "fix off-by-one",
        "old_files": [{"path": "a.py", "content": "x = 1\n"}],
        "patch": "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n",
        "new_files": [{"path": "a.py", "content": "x = 2\n"}],
        "lifecycle_percentile": 0.5,
        "date": "2026-01-02T03:04:05+00:00",
    },
    "packed_sequence": {
        "input_ids": [5, 6, 7, 8],
        "cu_seqlens": [0, 2, 4],
        "loss_mask": [1, 1, 0, 1],
        "category": "file_fim",
        "num_documents": 2,
    },
    "sft_conversation": {
        "id": "c1",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "source": "unit",
        "difficulty": None,
    },
    "rl_problem": {
        "id": "p1",
        "prompt": "Read n, print n*2.",
        "language": "python",
        "tests": [{"stdin": "2\n", "expected_stdout": "4\n", "assert_code": None}],
        "time_limit_seconds": 2.0,
        "memory_limit_mb": 512,
        "source": "unit",
    },
}


def test_every_record_type_has_a_valid_example():
    assert set(VALID_RECORDS) == set(ALL_RECORD_SCHEMAS)


@pytest.mark.parametrize("name", sorted(ALL_RECORD_SCHEMAS))
def test_valid_table_passes_and_survives_parquet(name, tmp_path):
    schema = get_schema(name)
    table = schema.from_records([VALID_RECORDS[name]] * 3)
    schema.validate(table)
    pq.write_table(table, tmp_path / "shard.parquet")
    reread = pq.read_table(tmp_path / "shard.parquet")
    schema.validate(reread)
    assert schema_of(reread) == (name, schema.version)
    assert reread.to_pylist()[0] == table.to_pylist()[0]


@pytest.mark.parametrize("name", sorted(ALL_RECORD_SCHEMAS))
def test_missing_column_is_named(name):
    schema = get_schema(name)
    table = schema.from_records([VALID_RECORDS[name]])
    dropped = schema.fields[1].name
    broken = table.drop_columns([dropped]).replace_schema_metadata(table.schema.metadata)
    with pytest.raises(SchemaError, match=f"missing column.*'{dropped}'"):
        schema.validate(broken)


@pytest.mark.parametrize("name", sorted(ALL_RECORD_SCHEMAS))
def test_wrong_type_is_named(name):
    schema = get_schema(name)
    table = schema.from_records([VALID_RECORDS[name]])
    column = schema.fields[0].name
    broken = table.set_column(0, pa.field(column, pa.int64()), pa.array([1], pa.int64()))
    broken = broken.replace_schema_metadata(table.schema.metadata)
    with pytest.raises(SchemaError, match=f"column '{column}' has type int64, expected"):
        schema.validate(broken)


@pytest.mark.parametrize("name", sorted(ALL_RECORD_SCHEMAS))
def test_wrong_version_is_named(name):
    schema = get_schema(name)
    table = schema.from_records([VALID_RECORDS[name]])
    metadata = dict(table.schema.metadata)
    metadata[SCHEMA_VERSION_KEY] = str(schema.version + 1).encode()
    with pytest.raises(SchemaError, match=f"version mismatch: table has version '{schema.version + 1}'"):
        schema.validate(table.replace_schema_metadata(metadata))


def test_table_without_metadata_or_of_another_type_fails():
    table = SOURCE_FILE.from_records([FILE])
    with pytest.raises(SchemaError, match="no 'loopcoder.schema' metadata"):
        SOURCE_FILE.validate(table.replace_schema_metadata(None))
    with pytest.raises(SchemaError, match="record type 'fim_sample', not 'source_file'"):
        get_schema("source_file").validate(get_schema("fim_sample").from_records([VALID_RECORDS["fim_sample"]]))


def test_nested_struct_type_change_is_caught():
    schema = get_schema("commit_triplet")
    table = schema.from_records([VALID_RECORDS["commit_triplet"]])
    wrong = pa.array([[{"path": "a.py"}]], pa.list_(pa.struct([pa.field("path", pa.string())])))
    index = table.schema.get_field_index("old_files")
    broken = table.set_column(index, pa.field("old_files", wrong.type), wrong).replace_schema_metadata(
        table.schema.metadata
    )
    with pytest.raises(SchemaError, match="column 'old_files' has type"):
        schema.validate(broken)


def test_nulls_in_non_nullable_column_and_extra_columns_fail():
    table = SOURCE_FILE.from_records([FILE])
    with_null = table.set_column(
        table.schema.get_field_index("content"),
        pa.field("content", pa.large_string()),
        pa.array([None], pa.large_string()),
    ).replace_schema_metadata(table.schema.metadata)
    with pytest.raises(SchemaError, match="column 'content' is not nullable but has 1 null"):
        SOURCE_FILE.validate(with_null)
    extra = table.append_column("stars", pa.array([3])).replace_schema_metadata(table.schema.metadata)
    with pytest.raises(SchemaError, match="unexpected column.*'stars'"):
        SOURCE_FILE.validate(extra)
    SOURCE_FILE.validate(extra, allow_extra_columns=True)


def test_from_records_rejects_bad_values_and_attach_conforms_column_order():
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        SOURCE_FILE.from_records([FILE | {"size_bytes": "big"}])
    plain = pa.Table.from_pylist([FILE])  # inferred types, no metadata, another column order
    plain = plain.select(list(reversed(plain.column_names)))
    attached = SOURCE_FILE.attach(plain)
    SOURCE_FILE.validate(attached)
    assert attached.column_names == SOURCE_FILE.column_names


def test_unknown_record_type_lists_known_names():
    with pytest.raises(KeyError, match="known: commit_triplet"):
        get_schema("nope")


def test_docs_page_is_generated_from_the_declared_schemas():
    from pathlib import Path

    from loopcoder.schemas.__main__ import render

    page = (Path(__file__).resolve().parents[2] / "docs" / "schemas.md").read_text(encoding="utf-8")
    assert page == render(), "docs/schemas.md is out of date: python -m loopcoder.schemas > docs/schemas.md"
    for schema in ALL_RECORD_SCHEMAS.values():
        assert schema.describe() in page
