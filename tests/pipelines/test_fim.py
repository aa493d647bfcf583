"""FIM properties over real source files: exact reconstruction, whole AST nodes, one special token each."""

import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from loopcoder.pipelines.io.languages import language_of
from loopcoder.pipelines.samples.fim import PSM, SPM, FimConfig, FimSplitter, ast_level, format_fim
from loopcoder.schemas.tokens import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_END

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def real_files(limit: int = 150) -> list[dict]:
    paths = sorted(p for p in STDLIB.glob("*.py") if p.stat().st_size > 200)[:limit]
    docs = []
    for extra in (Path("/usr/include/zlib.h"), Path("/usr/lib/node_modules/npm/lib/npm.js")):
        if extra.exists():
            paths.append(extra)
    for path in paths:
        docs.append({"id": str(path), "repo": "r", "path": path.name, "language": language_of(path.name),
                     "content": path.read_text(encoding="utf-8")})  # fmt: skip
    return docs


SNIPPETS = {
    "Java": ("A.java", "class A {\n  int add(int a, int b) {\n    if (a > b) { return a - b; }\n    return a + b * 2;\n  }\n}\n"),
    "Go": ("a.go", "package a\n\nfunc Add(a int, b int) int {\n\tif a > b {\n\t\treturn a - b\n\t}\n\treturn a + b*2\n}\n"),
    "Rust": ("a.rs", "fn add(a: i32, b: i32) -> i32 {\n    if a > b {\n        return a - b;\n    }\n    a + b * 2\n}\n"),
    "TypeScript": ("a.ts", "function add(a: number, b: number): number {\n  if (a > b) { return a - b; }\n  return a + b * 2;\n}\n"),
    "C++": ("a.cpp", "int add(int a, int b) {\n  if (a > b) { return a - b; }\n  return a + b * 2;\n}\n"),
    "C#": ("A.cs", "class A {\n  int Add(int a, int b) {\n    if (a > b) { return a - b; }\n    return a + b * 2;\n  }\n}\n"),
    "PHP": ("a.php", "<?php\nfunction add($a, $b) {\n  if ($a > $b) { return $a - $b; }\n  return $a + $b * 2;\n}\n"),
    "JavaScript": ("a.js", "function add(a, b) {\n  if (a > b) { return a - b; }\n  return a + b * 2;\n}\n"),
    "C": ("a.c", "int add(int a, int b) {\n  if (a > b) { return a - b; }\n  return a + b * 2;\n}\n"),
    "Python": ("a.py", "def add(a, b):\n    if a > b:\n        return a - b\n    return a + b * 2\n"),
}  # fmt: skip


def reparsed_node(splitter: FimSplitter, doc: dict, sample: dict):
    """The node of the re-parsed original whose span is exactly the middle, or None."""
    grammar = splitter.config.grammars[doc["language"]]
    data = doc["content"].encode()
    start = len(sample["prefix"].encode())
    end = start + len(sample["middle"].encode())
    node = splitter._parser(grammar).parse(data).root_node.descendant_for_byte_range(start, end)
    while node is not None:
        if node.start_byte == start and node.end_byte == end and node.type == sample["node_type"]:
            return node
        if node.start_byte < start or node.end_byte > end:
            node = node.parent
            if node is None or node.start_byte != start or node.end_byte != end:
                return None
        else:
            node = node.parent
    return None


@pytest.fixture(scope="module")
def samples():
    splitter = FimSplitter(FimConfig(fim_rate=1.0, seed=7))
    docs = real_files()
    return splitter, [(doc, splitter(doc)) for doc in docs]


def test_every_sample_reconstructs_the_file_exactly(samples):
    _, pairs = samples
    assert len(pairs) > 100
    for doc, sample in pairs:
        assert sample is not None
        assert sample["prefix"] + sample["middle"] + sample["suffix"] == doc["content"]


def test_each_special_token_appears_exactly_once_in_psm_and_spm(samples):
    _, pairs = samples
    modes = Counter()
    for _, sample in pairs:
        modes[sample["mode"]] += 1
        for token in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, IM_END):
            assert sample["text"].count(token) == 1
        expected = format_fim(sample["prefix"], sample["middle"], sample["suffix"], sample["mode"])
        assert sample["text"] == expected
    assert modes[PSM] and modes[SPM]


def test_spm_order_is_suffix_prefix_middle():
    assert format_fim("P", "M", "S", SPM) == "<|fim_suffix|>S<|fim_prefix|>P<|fim_middle|>M<|im_end|>"
    assert format_fim("P", "M", "S", PSM) == "<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>M<|im_end|>"


def test_ast_middles_are_whole_nodes_of_the_recorded_type(samples):
    splitter, pairs = samples
    ast_samples = [(doc, s) for doc, s in pairs if s["split_kind"] == "ast"]
    assert len(ast_samples) > 20
    low, high = splitter.config.middle_chars
    for doc, sample in ast_samples:
        assert low <= len(sample["middle"]) <= high
        assert ast_level(sample["node_type"]) is not None
        assert reparsed_node(splitter, doc, sample) is not None, (doc["path"], sample["node_type"])


@pytest.mark.parametrize("language", sorted(SNIPPETS))
def test_ast_splits_work_in_every_grammar(language):
    path, content = SNIPPETS[language]
    config = FimConfig(fim_rate=1.0, split_kind_weights={"ast": 1.0}, middle_chars=(5, 200))
    splitter = FimSplitter(config)
    node_types = set()
    for seed in range(12):
        doc = {"id": f"{language}-{seed}", "repo": "r", "path": path, "language": language, "content": content}
        sample = splitter(doc)
        assert sample["split_kind"] == "ast", splitter.last_skip_reason
        assert sample["prefix"] + sample["middle"] + sample["suffix"] == content
        assert reparsed_node(splitter, doc, sample) is not None
        node_types.add(sample["node_type"])
    assert len(node_types) >= 2  # more than one level or node type is drawn


def test_realised_rates_follow_the_config():
    docs = [d for d in real_files(400) if d["language"] == "Python"]
    config = FimConfig(fim_rate=0.5, spm_rate=0.25, split_kind_weights={"char": 0.5, "line": 0.25, "ast": 0.25})
    splitter = FimSplitter(config)
    results = [splitter(d) for d in docs]
    made = [r for r in results if r is not None]
    n = len(docs)
    tolerance = 3 * (0.25 / n) ** 0.5 + 0.02  # three standard errors of a proportion
    assert abs(len(made) / n - 0.5) < tolerance
    kinds = Counter(r["split_kind"] for r in made)
    assert abs(kinds["char"] / len(made) - 0.5) < 2 * tolerance
    assert abs((kinds["line"] + kinds["ast"]) / len(made) - 0.5) < 2 * tolerance
    assert abs(sum(r["mode"] == SPM for r in made) / len(made) - 0.25) < 2 * tolerance


def test_samples_do_not_depend_on_order_or_instance():
    docs = real_files(30)
    forward = [FimSplitter(FimConfig(seed=3))(d) for d in docs]
    backward = [FimSplitter(FimConfig(seed=3))(d) for d in reversed(docs)][::-1]
    assert forward == backward
    assert forward != [FimSplitter(FimConfig(seed=4))(d) for d in docs]


def test_char_splits_never_cut_a_utf8_character():
    content = "é日本🚀x" * 20
    splitter = FimSplitter(FimConfig(fim_rate=1.0, split_kind_weights={"char": 1.0}))
    for seed in range(30):
        sample = splitter({"id": str(seed), "repo": "r", "path": "a.txt", "language": "Text", "content": content})
        for part in ("prefix", "middle", "suffix"):
            sample[part].encode("utf-8").decode("utf-8")
        assert (sample["prefix"] + sample["middle"] + sample["suffix"]).encode() == content.encode()


def test_files_holding_special_tokens_are_left_alone():
    splitter = FimSplitter(FimConfig(fim_rate=1.0))
    doc = {"id": "x", "repo": "r", "path": "a.py", "language": "Python", "content": "s = '<|fim_middle|>'\n"}
    assert splitter(doc) is None and splitter.last_skip_reason == "contains_special_token"


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown split kind"):
        FimConfig(split_kind_weights={"word": 1.0})
    with pytest.raises(ValueError, match="fim_rate"):
        FimConfig(fim_rate=1.5)
