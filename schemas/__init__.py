"""Versioned Arrow schemas of every record type the stack exchanges.

from loopcoder.schemas import SOURCE_FILE
table = SOURCE_FILE.from_records(rows)   # validated, metadata attached
SOURCE_FILE.validate(pq.read_table(path))  # SchemaError naming the column on mismatch
"""

# Imported from a checkout as `schemas` (the repository root on sys.path), this folder would be a second copy
# of `loopcoder.schemas`, with its own module state: refuse, and say how to import it.
if __name__ != "loopcoder.schemas":
    raise ImportError(f"import this package as `loopcoder.schemas`, not `{__name__}` (pip install -e . first)")

from .base import SCHEMA_NAME_KEY, SCHEMA_VERSION_KEY, RecordSchema, SchemaError, schema_of
from .records import (
    ALL_RECORD_SCHEMAS,
    COMMIT_TRIPLET,
    FILTERED_FILE,
    FIM_SAMPLE,
    PACKED_SEQUENCE,
    REPO_FIM_SAMPLE,
    RL_PROBLEM,
    SFT_CONVERSATION,
    SOURCE_FILE,
    get_schema,
)

__all__ = [
    "ALL_RECORD_SCHEMAS",
    "COMMIT_TRIPLET",
    "FILTERED_FILE",
    "FIM_SAMPLE",
    "PACKED_SEQUENCE",
    "REPO_FIM_SAMPLE",
    "RL_PROBLEM",
    "SCHEMA_NAME_KEY",
    "SCHEMA_VERSION_KEY",
    "SFT_CONVERSATION",
    "SOURCE_FILE",
    "RecordSchema",
    "SchemaError",
    "get_schema",
    "schema_of",
]
