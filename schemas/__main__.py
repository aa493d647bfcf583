"""Prints docs/schemas.md from the declared schemas: `python -m loopcoder.schemas > docs/schemas.md`."""

from . import records
from .records import ALL_RECORD_SCHEMAS

INTRO = """# Record schemas

Every table the stack exchanges is an Arrow table of one of these record types. The record name and
its version travel in the schema metadata (`loopcoder.schema`, `loopcoder.schema_version`), so a
Parquet shard says what it holds. Pipelines write and trainers read only through these schemas.
This page is generated: `python -m loopcoder.schemas > docs/schemas.md`.

## Using them

```python
import pyarrow.parquet as pq
from loopcoder.schemas import SOURCE_FILE, get_schema, schema_of

table = SOURCE_FILE.from_records(rows)             # builds, attaches metadata, validates
SOURCE_FILE.validate(pq.read_table(path))          # SchemaError naming the column and the problem
name, version = schema_of(pq.read_schema(path))    # what a shard holds, from its footer alone
get_schema(name).validate(pq.read_table(path))
```

`validate` checks, in order: the record name and version in the metadata, missing columns,
unexpected columns (allowed with `allow_extra_columns=True`), each column's exact Arrow type
(nested struct fields included), and nulls in non-nullable columns. `attach(table)` casts a table
with the right columns (any order, compatible types) to the schema and adds the metadata.

## Versioning

A schema's version is bumped whenever a column is added, removed, renamed or changes type; readers
refuse other versions rather than guess. Text columns holding whole files are `large_string`
(64-bit offsets), so one batch may exceed 2 GiB of text.

## Record types

Which part of the stack writes and reads each one:
"""


def render() -> str:
    parts = [INTRO, records.__doc__.split("\n\n", 1)[1].strip(), ""]
    for schema in ALL_RECORD_SCHEMAS.values():
        parts += [f"### `{schema.name}`", "", schema.describe(), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
