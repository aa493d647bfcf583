"""The record types the stack exchanges: pipelines write and trainers read only these.

| record | written by | read by |
|---|---|---|
| `source_file` | readers (directories, git checkouts, tables), sample corpus | cleaning |
| `filtered_file` | cleaning, dedup, AST validation, decontamination | FIM, tokenisation, `shards stats` |
| `fim_sample` | file-level FIM | tokenisation |
| `repo_fim_sample` | repository-level FIM | tokenisation |
| `commit_triplet` | commit extraction | tokenisation |
| `packed_sequence` | tokenisation and packing | pre-training and SFT |
| `sft_conversation` | SFT data preparation | SFT trainer |
| `rl_problem` | RL data preparation | GRPO trainer, evaluation |
"""

from __future__ import annotations

import pyarrow as pa

from .base import RecordSchema


def _schema(name: str, version: int, description: str, columns: list[tuple]) -> RecordSchema:
    """columns: (name, type, meaning) or (name, type, meaning, nullable)."""
    fields = tuple(pa.field(c[0], c[1], nullable=c[3] if len(c) > 3 else False) for c in columns)
    return RecordSchema(name, version, fields, description, {c[0]: c[2] for c in columns})


NULLABLE = True

_FILE_COLUMNS = [
    ("id", pa.string(), "stable id: sha256 of repo, revision and path, truncated to 32 hex digits"),
    ("repo", pa.string(), "repository or source name (`python-stdlib`, `owner/name`)"),
    ("path", pa.string(), "path of the file inside the repository, `/`-separated"),
    ("language", pa.string(), "language from the extension or file name (`Python`, `C++`, ...; `unknown`)"),
    ("content", pa.large_string(), "the file's text, decoded as UTF-8"),
    ("size_bytes", pa.int64(), "size of the raw file in bytes"),
    ("license", pa.string(), "SPDX licence identifier when known", NULLABLE),
    ("revision", pa.string(), "commit or version the file was read at", NULLABLE),
]

SOURCE_FILE = _schema("source_file", 1, "one source file as read from its origin", _FILE_COLUMNS)

FILTER_DECISION = pa.struct(
    [
        pa.field("step", pa.string(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),
    ]
)

FILTERED_FILE = _schema(
    "filtered_file",
    3,
    "a source file after cleaning, with every filter's decision",
    _FILE_COLUMNS
    + [
        ("kept", pa.bool_(), "true if every step kept the file"),
        ("rejection_reason", pa.string(), "the first rejecting step's reason (`max_line_length`, ...)", NULLABLE),
        ("decisions", pa.list_(FILTER_DECISION), "each step's decision in order: step, kept, reason"),
        ("content_sha256", pa.string(), "hex sha256 of the cleaned content (exact dedup key)"),
        ("near_dup_cluster", pa.int64(), "MinHash cluster id, null when the file is in no cluster", NULLABLE),
        (
            "ast_status",
            pa.string(),
            "tree-sitter parse status: `ok`, `tolerated`, `error`, `timeout`, `crash`; null when not parsed",
            NULLABLE,
        ),
        (
            "quality_scores",
            pa.map_(pa.string(), pa.float32()),
            "`classify` step: classifier name -> probability of its positive label; null when not scored",
            NULLABLE,
        ),
    ],
)

_FIM_COLUMNS = [
    ("mode", pa.string(), "`psm` (prefix, suffix, middle) or `spm` (suffix, prefix, middle)"),
    ("split_kind", pa.string(), "how the middle was chosen: `char`, `line`, `ast`"),
    ("node_type", pa.string(), "tree-sitter node type of an AST split (`call`, `if_statement`, ...)", NULLABLE),
    ("prefix", pa.large_string(), "text before the middle"),
    ("middle", pa.large_string(), "the span to fill in"),
    ("suffix", pa.large_string(), "text after the middle"),
    ("text", pa.large_string(), "the formatted sample with FIM special tokens"),
]

FIM_SAMPLE = _schema(
    "fim_sample",
    1,
    "a file-level fill-in-the-middle sample",
    [
        ("id", pa.string(), "sample id (source file id and split seed)"),
        ("source_id", pa.string(), "id of the file the sample was cut from"),
        ("repo", pa.string(), "repository of the source file"),
        ("path", pa.string(), "path of the source file"),
        ("language", pa.string(), "language of the source file"),
    ]
    + _FIM_COLUMNS,
)

REPO_FIM_SAMPLE = _schema(
    "repo_fim_sample",
    2,
    "a repository-level sample: context files of the same repository, then the target, FIM-formatted or, with "
    "`mode` `plain`, whole (prefix the whole file, middle and suffix empty)",
    [
        ("id", pa.string(), "sample id"),
        ("repo", pa.string(), "repository name, rendered after `<|repo_name|>`"),
        ("target_path", pa.string(), "path of the file holding the middle"),
        ("language", pa.string(), "language of the target file"),
        ("context_paths", pa.list_(pa.string()), "context files in rendered order, most relevant first"),
    ]
    + _FIM_COLUMNS
    + [("num_tokens", pa.int32(), "tokens of `text` under the tokenizer used to budget it", NULLABLE)],
)

FILE_VERSION = pa.struct([pa.field("path", pa.string(), nullable=False), pa.field("content", pa.large_string())])

COMMIT_TRIPLET = _schema(
    "commit_triplet",
    2,
    "one development iteration of a repository: changed files before, the patch, changed files after",
    [
        ("id", pa.string(), "`repo@start..end` (abbreviated commit ids)"),
        ("repo", pa.string(), "repository name"),
        ("commit", pa.string(), "the end commit's id"),
        ("parent_commit", pa.string(), "the start commit's id: the patch goes from it to `commit`"),
        ("message", pa.large_string(), "messages of the commits from start (excluded) to end, newest first"),
        ("old_files", pa.list_(FILE_VERSION), "changed files at the start commit (content null if added)"),
        ("patch", pa.large_string(), "unified diff from start to end; `git apply` to old_files yields new_files"),
        ("new_files", pa.list_(FILE_VERSION), "changed files at the end commit (content null if deleted)"),
        ("lifecycle_percentile", pa.float32(), "position of the start commit in first-parent history, 0 = root"),
        ("date", pa.string(), "committer date of the end commit, ISO 8601", NULLABLE),
    ],
)

PACKED_SEQUENCE = _schema(
    "packed_sequence",
    1,
    "one training row: documents packed end to end, with their boundaries and loss mask",
    [
        ("input_ids", pa.list_(pa.int32()), "token ids of the packed row"),
        ("cu_seqlens", pa.list_(pa.int32()), "cumulative document lengths: [0, len0, len0+len1, ..., len(input_ids)]"),
        ("loss_mask", pa.list_(pa.int8()), "1 where the token is a prediction target, 0 elsewhere"),
        ("category", pa.string(), "source category (`file_fim`, `repo_fim`, `commit`, `sft`, `pretrain_replay`, ...)"),
        ("num_documents", pa.int32(), "number of documents in the row"),
    ],
)

MESSAGE = pa.struct([pa.field("role", pa.string(), nullable=False), pa.field("content", pa.large_string())])

SFT_CONVERSATION = _schema(
    "sft_conversation",
    2,
    "one supervised conversation; the loss is on assistant turns only",
    [
        ("id", pa.string(), "conversation id"),
        ("messages", pa.list_(MESSAGE), "turns with role `system`, `user`, `assistant` or `tool`"),
        ("source", pa.string(), "dataset the conversation came from"),
        ("difficulty", pa.float32(), "difficulty score in [0, 1] for the curriculum", NULLABLE),
        (
            "difficulty_tier",
            pa.string(),
            "curriculum tier from `difficulty`: `easy`, `medium` or `hard` (packed as `sft_<tier>`)",
            NULLABLE,
        ),
        ("kind", pa.string(), "how it was made: `commit`, `docstring` or `user` (a conversation file)", NULLABLE),
        ("language", pa.string(), "language of the code in the answer (`Python`, ...), when known", NULLABLE),
    ],
)

TEST_CASE = pa.struct(
    [
        pa.field("stdin", pa.large_string()),
        pa.field("expected_stdout", pa.large_string()),
        pa.field("assert_code", pa.large_string()),
    ]
)

RL_PROBLEM = _schema(
    "rl_problem",
    1,
    "a programming problem with hidden tests, for rewards and evaluation",
    [
        ("id", pa.string(), "problem id"),
        ("prompt", pa.large_string(), "the problem statement shown to the model"),
        ("language", pa.string(), "language the solution must be written in"),
        ("tests", pa.list_(TEST_CASE), "stdin/expected_stdout pairs, or assert snippets run after the solution"),
        ("time_limit_seconds", pa.float32(), "wall-clock limit per test case"),
        ("memory_limit_mb", pa.int32(), "address-space limit per test case"),
        ("source", pa.string(), "dataset the problem came from"),
    ],
)

ALL_RECORD_SCHEMAS: dict[str, RecordSchema] = {
    s.name: s
    for s in (
        SOURCE_FILE,
        FILTERED_FILE,
        FIM_SAMPLE,
        REPO_FIM_SAMPLE,
        COMMIT_TRIPLET,
        PACKED_SEQUENCE,
        SFT_CONVERSATION,
        RL_PROBLEM,
    )
}


def get_schema(name: str) -> RecordSchema:
    """The record schema called `name`; the error lists the known names."""
    try:
        return ALL_RECORD_SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown record type '{name}'; known: {', '.join(sorted(ALL_RECORD_SCHEMAS))}") from None
