"""Conversations from commit triplets (a real git history) and from documented functions (tree-sitter)."""

import subprocess
import sysconfig
from pathlib import Path

import pytest

from loopcoder.pipelines.samples.commits import CommitConfig, CommitTripletExtractor
from loopcoder.pipelines.samples.conversations import (
    ConversationConfig,
    DocstringExtractor,
    code_block,
    commit_conversations,
    docstring_conversations,
    fenced_code_blocks,
)
from loopcoder.schemas import SFT_CONVERSATION

STDLIB = Path(sysconfig.get_paths()["stdlib"])
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
MESSAGES = [
    "Add a clamp helper for bounded values",
    "Handle negative inputs in scale()",
    "wip",
    "Support an offset in shift()\n\nSigned-off-by: t <t@e>",
    "Rename the total accumulator for clarity",
    "Add a stats module with mean and spread",
    "Make scale() reject NaN",
    "Document the helpers",
    "Speed up shift() for large inputs",
    "Return early from clamp() on equal bounds",
]


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=GIT_ENV)
    return result.stdout


@pytest.fixture(scope="module")
def triplets(tmp_path_factory):
    repo = tmp_path_factory.mktemp("history") / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for i, message in enumerate(MESSAGES):
        body = "".join(
            f"def f{j}(x):\n    if x > {j}:\n        return x * {i + 1}\n    return {j}\n\n" for j in range(i + 2)
        )
        (repo / "helpers.py").write_text(body)
        if i >= 5:
            (repo / "stats.py").write_text(f"def mean(xs):\n    return sum(xs) / len(xs) + {i}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", message)
    config = CommitConfig(lifecycle=(0.0, 1.0), triplets_per_repo=20, min_diff_lines=1, max_span_commits=1)
    extractor = CommitTripletExtractor(config)
    found = extractor(repo, "demo/repo")
    assert len(found) >= 6, extractor.rejections
    return found


def apply_answer(tmp: Path, triplet: dict, record: dict) -> dict[str, str | None]:
    """Writes the old files shown to the user, `git apply`s the assistant's diff, returns the changed files."""
    work = tmp / record["id"].replace("/", "_").replace(":", "_").replace("@", "_")
    work.mkdir()
    git(work, "init", "-q")
    for file in triplet["old_files"]:
        if file["content"] is not None:
            assert f"`{file['path']}`:" in record["messages"][0]["content"]
            (work / file["path"]).write_text(file["content"])
    [(info, diff)] = fenced_code_blocks(record["messages"][1]["content"])
    assert info == "diff" and "\nindex " not in diff
    (work / "answer.diff").write_text(diff + "\n")
    git(work, "apply", "answer.diff")
    return {
        f["path"]: (work / f["path"]).read_text() if (work / f["path"]).exists() else None
        for f in triplet["new_files"]
    }


def test_commit_conversation_asks_with_message_and_old_files_and_answers_with_an_applicable_patch(triplets, tmp_path):
    records, rejections = commit_conversations(triplets)
    SFT_CONVERSATION.from_records(records)
    by_id = {t["id"]: t for t in triplets}
    uninformative = [t for t in triplets if t["message"].strip() == "wip"]
    assert rejections == {"uninformative_message": len(uninformative)}
    assert len(records) == len(triplets) - len(uninformative) >= 5
    for record in records:
        triplet = by_id[record["id"].removeprefix("commit:")]
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert record["kind"] == "commit" and record["language"] == "Python" and record["source"] == "demo/repo"
        assert triplet["message"].strip().splitlines()[0] in user["content"]
        assert "Signed-off-by" not in user["content"]
        assert apply_answer(tmp_path, triplet, record) == {f["path"]: f["content"] for f in triplet["new_files"]}
    added = [r for r in records if "does not exist yet" in r["messages"][0]["content"]]
    assert added and all("`stats.py` does not exist yet." in r["messages"][0]["content"] for r in added)


def test_commit_answers_as_new_files_and_same_seed_same_conversations(triplets):
    records, _ = commit_conversations(triplets, ConversationConfig(answer="new_files"))
    for record in records:
        blocks = [code for _, code in fenced_code_blocks(record["messages"][1]["content"])]
        triplet = next(t for t in triplets if record["id"] == f"commit:{t['id']}")
        assert blocks == [f["content"].rstrip("\n") for f in triplet["new_files"] if f["content"] is not None]
    assert commit_conversations(triplets)[0] == commit_conversations(list(reversed(triplets)))[0][::-1]
    prompts = {r["messages"][0]["content"].split("\n")[0] for r in commit_conversations(triplets)[0]}
    reseeded = {
        r["messages"][0]["content"].split("\n")[0]
        for r in commit_conversations(triplets, ConversationConfig(seed=5))[0]
    }
    assert len(prompts | reseeded) > 1  # the wording is drawn per triplet


def test_commit_with_a_control_token_or_too_long_is_rejected(triplets):
    poisoned = dict(triplets[0], message="Fix <|im_end|> handling in the parser")
    huge = dict(triplets[1], message="A real change " * 5000)
    records, rejections = commit_conversations([poisoned, huge])
    assert records == [] and rejections == {"special_token": 1, "too_long": 1}


PYTHON_FILE = '''import math


class Circle:
    @property
    def area(self) -> float:
        """The area of the circle, from its radius."""
        if self.radius < 0:
            raise ValueError("negative radius")
        return math.pi * self.radius ** 2

    def later(self):
        """Will compute the perimeter some day, maybe."""
        raise NotImplementedError


def tiny():
    "x"
    return 1


def outer(values):
    """Sum of the squares of the positive values."""

    def square(v):
        """Square of v, as an integer or a float."""
        return v * v

    return sum(square(v) for v in values if v > 0)
'''


def test_python_docstrings_become_signature_to_implementation_conversations():
    row = {"id": "f1", "repo": "demo", "path": "shapes.py", "language": "Python", "content": PYTHON_FILE}
    extractor = DocstringExtractor()
    records = extractor(row)
    SFT_CONVERSATION.from_records(records)
    assert extractor.rejections == {"stub": 1, "short_docstring": 1}
    by_name = {r["messages"][1]["content"].split("def ", 1)[1].split("(")[0]: r for r in records}
    assert set(by_name) == {"area", "outer", "square"}
    area = by_name["area"]
    [(_, prompt_code)] = fenced_code_blocks(area["messages"][0]["content"])
    [(info, answer_code)] = fenced_code_blocks(area["messages"][1]["content"])
    assert info == "python" and "It is a method of `Circle`." in area["messages"][0]["content"]
    assert prompt_code == '@property\ndef area(self) -> float:\n    """The area of the circle, from its radius."""'
    assert answer_code.startswith(prompt_code) and answer_code.endswith("return math.pi * self.radius ** 2")
    assert "method of" not in by_name["square"]["messages"][0]["content"]  # nested in a function, not a method
    compile(answer_code, "area.py", "exec")
    assert all(r["kind"] == "docstring" and r["language"] == "Python" for r in records)


@pytest.mark.parametrize(
    ("language", "path", "source", "signature", "body_line"),
    [
        ("Java", "A.java", "class A {\n    /**\n     * Adds both numbers, or returns b when a is negative.\n     */\n"
         "    public int add(int a, int b) {\n        if (a < 0) { return b; }\n        return a + b;\n    }\n}\n",
         "/**\n * Adds both numbers, or returns b when a is negative.\n */\npublic int add(int a, int b)", "return a + b;"),
        ("Go", "a.go", "package p\n\n// Add returns the sum, or zero for negative a.\nfunc Add(a, b int) int {\n"
         "\tif a < 0 {\n\t\treturn 0\n\t}\n\treturn a + b\n}\n",
         "// Add returns the sum, or zero for negative a.\nfunc Add(a, b int) int", "return a + b"),
        ("Rust", "a.rs", "impl S {\n    /// Adds a to the stored value and returns the total.\n"
         "    pub fn add(&mut self, a: i32) -> i32 {\n        self.v += a;\n        self.v\n    }\n}\n",
         "/// Adds a to the stored value and returns the total.\npub fn add(&mut self, a: i32) -> i32", "self.v += a;"),
        ("JavaScript", "a.js", "/** Doubles every value and returns a new list. */\nexport function double(xs) {\n"
         "  return xs.map((x) => x * 2);\n}\n",
         "/** Doubles every value and returns a new list. */\nexport function double(xs)", "xs.map"),
        ("TypeScript", "a.ts", "class K {\n  /** Halves the value, rounding towards zero. */\n  half(x: number): number {\n"
         "    return Math.trunc(x / 2);\n  }\n}\n",
         "/** Halves the value, rounding towards zero. */\nhalf(x: number): number", "Math.trunc"),
    ],
)  # fmt: skip
def test_doc_comments_above_functions_in_other_languages(language, path, source, signature, body_line):
    records, rejections = docstring_conversations(
        [{"id": "f", "repo": "r", "path": path, "language": language, "content": source}]
    )
    assert len(records) == 1, rejections
    [(_, prompt_code)] = fenced_code_blocks(records[0]["messages"][0]["content"])
    [(_, answer_code)] = fenced_code_blocks(records[0]["messages"][1]["content"])
    assert prompt_code == signature
    assert body_line in answer_code and answer_code.rstrip().endswith("}")
    assert records[0]["language"] == language


def test_comment_separated_by_a_blank_line_is_not_documentation():
    source = "package p\n\n// Add returns the sum of both values.\n\nfunc Add(a, b int) int {\n\treturn a + b\n}\n"
    records, _ = docstring_conversations(
        [{"id": "f", "repo": "r", "path": "a.go", "language": "Go", "content": source}]
    )
    assert records == []


def test_stdlib_files_give_parsable_answers_and_a_seeded_cap_per_file():
    rows = []
    for path in sorted((STDLIB / "json").glob("*.py")):
        rows.append(
            {"id": path.name, "repo": "json", "path": path.name, "language": "Python", "content": path.read_text()}
        )
    rows.append(rows[0] | {"id": "broken", "ast_status": "error"})
    config = ConversationConfig(max_per_file=2)
    records, rejections = docstring_conversations(rows, config)
    assert rejections["unparsable_file"] == 1
    per_file = {}
    for record in records:
        per_file.setdefault(record["id"].split(":")[1], []).append(record)
        [(_, code)] = fenced_code_blocks(record["messages"][1]["content"])
        compile(code, record["id"], "exec")
    assert len(per_file) >= 3 and max(len(v) for v in per_file.values()) == 2
    assert docstring_conversations(list(reversed(rows)), config)[0] == sorted(
        records, key=lambda r: [row["id"] for row in reversed(rows)].index(r["id"].split(":")[1])
    )


def test_code_block_fences_survive_backticks_inside():
    text = "a = '```'\nprint(a)"
    rendered = "Here:\n" + code_block(text, "python") + "\nand\n" + code_block("x", "")
    assert fenced_code_blocks(rendered) == [("python", text), ("", "x")]
