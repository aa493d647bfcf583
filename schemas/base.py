"""A versioned Arrow schema for one record type, and its validation.

Every table a pipeline writes or a trainer reads carries its record type and version in the
schema metadata (`loopcoder.schema`, `loopcoder.schema_version`). `RecordSchema.validate`
checks a table against the declared schema and fails with an error naming the column (or
metadata key) and the problem, so that a shard written by another version of the code, or by
hand, is caught before it is trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

SCHEMA_NAME_KEY = b"loopcoder.schema"
SCHEMA_VERSION_KEY = b"loopcoder.schema_version"


class SchemaError(ValueError):
    """A table does not match its record schema; the message names the column and the problem."""


@dataclass(frozen=True)
class RecordSchema:
    """One record type: its name, version, Arrow fields and a sentence on what it holds.

    Bump `version` whenever a field is added, removed, renamed or changes type; readers refuse
    tables of another version rather than guess.
    """

    name: str
    version: int
    fields: tuple[pa.Field, ...]
    description: str = ""
    field_docs: Mapping[str, str] = field(default_factory=dict)

    @property
    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema with the record name and version in its metadata."""
        metadata = {SCHEMA_NAME_KEY: self.name.encode(), SCHEMA_VERSION_KEY: str(self.version).encode()}
        return pa.schema(list(self.fields), metadata=metadata)

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def empty_table(self) -> pa.Table:
        return self.arrow_schema.empty_table()

    def from_records(self, records: Iterable[Mapping[str, Any]]) -> pa.Table:
        """Builds a table of this record type from dicts (missing nullable keys become null)."""
        table = pa.Table.from_pylist(list(records), schema=self.arrow_schema)
        self.validate(table)
        return table

    def attach(self, table: pa.Table) -> pa.Table:
        """Casts a table with the right columns to this schema (column order, types, metadata)."""
        self._check_columns(table.schema, allow_extra_columns=False)
        try:
            return table.select(self.column_names).cast(self.arrow_schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise SchemaError(f"{self.name}: cannot cast table to schema version {self.version}: {error}") from error

    def validate(self, table: pa.Table | pa.Schema, *, allow_extra_columns: bool = False) -> None:
        """Raises SchemaError naming the first problem; returns None when the table conforms.

        Checks, in order: the record name and version in the metadata, missing columns,
        unexpected columns (unless `allow_extra_columns`), each column's type, and nulls in
        non-nullable columns.
        """
        schema = table if isinstance(table, pa.Schema) else table.schema
        metadata = schema.metadata or {}
        found_name = metadata.get(SCHEMA_NAME_KEY)
        if found_name is None:
            raise SchemaError(
                f"{self.name}: table has no '{SCHEMA_NAME_KEY.decode()}' metadata "
                f"(expected record type '{self.name}' version {self.version})"
            )
        if found_name.decode() != self.name:
            raise SchemaError(f"{self.name}: table holds record type '{found_name.decode()}', not '{self.name}'")
        found_version = metadata.get(SCHEMA_VERSION_KEY, b"").decode()
        if found_version != str(self.version):
            raise SchemaError(
                f"{self.name}: schema version mismatch: table has version '{found_version or 'none'}', "
                f"this code reads version {self.version}"
            )
        self._check_columns(schema, allow_extra_columns)
        for expected in self.fields:
            actual = schema.field(expected.name)
            if not actual.type.equals(expected.type):
                raise SchemaError(
                    f"{self.name}: column '{expected.name}' has type {actual.type}, expected {expected.type}"
                )
        if isinstance(table, pa.Table):
            for expected in self.fields:
                if not expected.nullable and table.column(expected.name).null_count:
                    nulls = table.column(expected.name).null_count
                    raise SchemaError(f"{self.name}: column '{expected.name}' is not nullable but has {nulls} null(s)")

    def _check_columns(self, schema: pa.Schema, allow_extra_columns: bool) -> None:
        missing = [name for name in self.column_names if schema.get_field_index(name) < 0]
        if missing:
            raise SchemaError(f"{self.name}: missing column(s) {', '.join(repr(m) for m in missing)}")
        if not allow_extra_columns:
            extra = [name for name in schema.names if name not in self.column_names]
            if extra:
                raise SchemaError(f"{self.name}: unexpected column(s) {', '.join(repr(e) for e in extra)}")

    def describe(self) -> str:
        """A Markdown table of the fields, used by docs and dataset cards."""
        rows = [
            f"**{self.name}** (version {self.version}): {self.description}",
            "",
            "| column | type | null | meaning |",
        ]
        rows.append("|---|---|---|---|")
        for f in self.fields:
            rows.append(
                f"| `{f.name}` | `{f.type}` | {'yes' if f.nullable else 'no'} | {self.field_docs.get(f.name, '')} |"
            )
        return "\n".join(rows)


def schema_of(table: pa.Table | pa.Schema) -> tuple[str, int] | None:
    """(record name, version) read from a table's metadata, or None if it carries none."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    metadata = schema.metadata or {}
    if SCHEMA_NAME_KEY not in metadata:
        return None
    try:
        version = int(metadata.get(SCHEMA_VERSION_KEY, b"-1").decode())
    except ValueError:
        version = -1
    return metadata[SCHEMA_NAME_KEY].decode(), version
