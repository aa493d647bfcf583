"""Mining verifiable RL problems from the cleaned corpus: doctests and unit-tested functions -> `rl_problem` shards.

    loopcoder rl mine jobs/data/rl_mining.yaml [--input DIR] [--output DIR]

Stages:

1. `extract` (Ray Data: the kept Python rows of every input shard, grouped by repository, one
   `mine_group` task per repository): every top-level function becomes a candidate when
   - **doctest**: its docstring holds examples (parsed by the standard library's `doctest` parser);
     each example with an expected answer becomes one assert test (the examples before it run
     first, as doctest runs them in one namespace), or
   - **unit_test**: a test file of the same repository (`test_*.py`, `*_test.py`, `tests/`) imports it
     and asserts on calls of it with literal arguments (`assert f(1, "a") == [2]`, `assert f(x) is None`,
     `assert not f(0)`); each such assert becomes one test.
   The prompt is the function's context (the module-level imports and definitions it needs, found
   from its free names), its signature and its docstring with the answers of the examples
   removed. The reference is the context and the whole function; the stub is the prompt with a
   `pass` body. Only the standard library may be imported: a candidate needing another package,
   a relative import, a star import or a name the module does not define is rejected with its reason;
2. `decontaminate`: a candidate whose prompt and reference overlap an evaluation benchmark
   (`pipelines/steps/decontamination.py` over the benchmark registry `pipelines/steps/benchmarks.py`, HumanEval
   by default) is removed and listed in `contaminated.jsonl` with the benchmark and problem it holds;
3. `verify` (Ray Data, one sandbox pool per actor): the reference runs every test `reference_runs`
   times (a test that does not pass every time is flaky and dropped), then the stub runs them; tests
   the stub passes are dropped (they reward doing nothing); a candidate is kept when it still has
   `min_tests` tests, all passed by the reference and failed by the stub;
4. `dedup`: exact (normalised function source) and near duplicates (MinHash LSH over the function
   source with `pipelines/dedup/minhash.py`, candidate pairs verified at exact Jaccard >= `threshold`):
   the first problem by id is kept;
5. `write`: `problems/part-*.parquet` (`rl_problem`), `references/part-*.parquet` (id, repository,
   path, function, kind, reference, stub: what the test of this step re-runs), `contaminated.jsonl`,
   `stats.json` (counts by repository and kind, rejections by reason) and `problems_by_repo.png`.

A test of an `rl_problem` is plain assert code run after the program; every test also checks that the
function was defined by the program (`f.__module__ == __name__`), so importing the library's own copy
of a standard-library function does not pass.
"""

from __future__ import annotations

import ast
import builtins
import copy
import dataclasses
import doctest
import hashlib
import json
import logging
import re
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loopcoder.pipelines.dedup.minhash import MinhashConfig, MinhashSignatures, jaccard, shingle_set, tokens
from loopcoder.pipelines.io.writers import (
    ShardWriter,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
)
from loopcoder.pipelines.steps.decontamination import DecontaminationConfig, Decontaminator
from loopcoder.schemas import RL_PROBLEM
from loopcoder.schemas.config_file import ConfigFile, dataclass_arguments

logger = logging.getLogger(__name__)

DOCTEST = "doctest"
UNIT_TEST = "unit_test"
KINDS = (DOCTEST, UNIT_TEST)
ALLOWED_MODULES = frozenset(sys.stdlib_module_names) | {"__future__"}
BUILTIN_NAMES = frozenset(dir(builtins)) | {"__name__", "__file__", "__doc__", "__builtins__"}
_TEST_FILE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$|(^|/)tests?/[^/]*\.py$")
_SKIP_DIRECTIVES = (doctest.SKIP,)
_INEXACT_DIRECTIVES = (doctest.ELLIPSIS, doctest.NORMALIZE_WHITESPACE)

REFERENCE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("function", pa.string()),
        ("kind", pa.string()),
        ("reference", pa.large_string()),
        ("stub", pa.large_string()),
        ("num_tests", pa.int32()),
    ]
)


@dataclass
class MiningConfig(ConfigFile):
    """A mining job (`jobs/data/rl_mining.yaml`); every key but `name`, `input` and `output` is optional."""

    name: str
    input: str  # folder of cleaned shards (filtered_file: kept rows; source_file: every row)
    output: str
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    min_tests: int = 1  # tests left after verification for a problem to be kept
    max_tests: int = 10  # tests per problem (the first ones of the docstring or test file)
    max_context_lines: int = 150  # module-level context a function may need; larger is rejected
    max_function_lines: int = 80
    methods: bool = True  # methods of top-level classes too (the class is the context, the method comes last)
    reference_runs: int = 2  # the reference must pass each test this many times (flaky tests are dropped)
    time_limit_seconds: float = 2.0
    memory_limit_mb: int = 512
    benchmarks: list[Any] = field(default_factory=lambda: ["humaneval"])  # as DecontaminationConfig.benchmarks
    dedup: dict[str, Any] = field(default_factory=lambda: {"threshold": 0.7})  # MinhashConfig keys
    isolation: str = "auto"  # sandbox isolation: auto, bwrap, rlimit
    verify_actors: int | None = None  # Ray actors running sandboxes; default: cluster CPUs // sandbox_workers
    sandbox_workers: int = 2  # concurrent executions per actor
    rows_per_shard: int = 2000
    num_cpus: int | None = None  # local Ray only

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> MiningConfig:
        config = cls(**dataclass_arguments(cls, raw, source))
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"{source}: kinds must be a non-empty subset of {', '.join(KINDS)}, got {self.kinds}")
        if self.min_tests < 1 or self.max_tests < self.min_tests:
            raise ValueError(f"{source}: need 1 <= min_tests <= max_tests, got {self.min_tests}, {self.max_tests}")
        if self.reference_runs < 1:
            raise ValueError(f"{source}: reference_runs must be at least 1")
        self.minhash_config()
        DecontaminationConfig(benchmarks=list(self.benchmarks))

    def minhash_config(self) -> MinhashConfig:
        return MinhashConfig(**self.dedup)

    def fingerprint(self) -> str:
        relevant = {k: v for k, v in self.to_dict().items() if k not in ("output", "num_cpus", "verify_actors")}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Rejected(Exception):
    """A candidate that cannot become a problem; the message is the counted reason."""


def _loaded_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _bound_names(node: ast.AST) -> set[str]:
    """Names a statement binds anywhere inside it (assignments, parameters, imports, definitions)."""
    bound: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del):
            bound.add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(n.name)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            bound.update(_import_names(n))
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
    return bound


def _import_names(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.asname or a.name.split(".")[0] for a in node.names}
    return {a.asname or a.name for a in node.names if a.name != "*"}


def _free_names(node: ast.AST, lazy_annotations: bool = False) -> set[str]:
    """Names a function or statement reads but does not bind itself (over-approximated: one scope).

    A function's annotations count unless `lazy_annotations` (`from __future__ import annotations`).
    """
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        outer = set().union(*(_loaded_names(d) for d in node.decorator_list)) if node.decorator_list else set()
        if not isinstance(node, ast.ClassDef):
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    outer |= _loaded_names(default)
            if not lazy_annotations:
                annotations = [a.annotation for a in ast.walk(node.args) if isinstance(a, ast.arg)] + [node.returns]
                for annotation in annotations:
                    if annotation is not None:
                        outer |= _loaded_names(annotation)
        else:
            for base in [*node.bases, *(k.value for k in node.keywords)]:
                outer |= _loaded_names(base)
        inner = set().union(*(_loaded_names(s) for s in node.body)) - _bound_names(
            ast.Module(body=node.body, type_ignores=[])
        )
        if not isinstance(node, ast.ClassDef):
            inner -= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        return (outer | inner) - BUILTIN_NAMES
    return _loaded_names(node) - _bound_names(node) - BUILTIN_NAMES


def _module_defines(statement: ast.stmt) -> set[str]:
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {statement.name}
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return _import_names(statement)
    return _bound_names(statement)


class ModuleIndex:
    """One parsed module: its top-level statements, what each defines and needs, its source lines."""

    def __init__(self, source: str):
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.tree = ast.parse(source)
        self.statements = self.tree.body
        self.defines = [_module_defines(s) for s in self.statements]
        self.star_import = any(
            isinstance(s, ast.ImportFrom) and any(a.name == "*" for a in s.names) for s in self.statements
        )
        self.future_annotations = any(
            isinstance(s, ast.ImportFrom)
            and s.module == "__future__"
            and any(a.name == "annotations" for a in s.names)
            for s in self.statements
        )
        self.functions = {s.name: i for i, s in enumerate(self.statements) if isinstance(s, ast.FunctionDef)}
        self.classes = {s.name: i for i, s in enumerate(self.statements) if isinstance(s, ast.ClassDef)}

    def segment(self, statement: ast.stmt) -> str:
        return "".join(self.lines[_first_line(statement) - 1 : statement.end_lineno]).rstrip() + "\n"

    def context(self, target: int, extra_names: set[str], node: ast.stmt | None = None) -> str:
        """The module-level statements `statements[target]` (or `node` in its place) and `extra_names` need,
        in file order.

        Raises Rejected for what the sandbox could not run: relative, star or non-standard-library
        imports, and names the module does not define.
        """
        needed: set[int] = set()
        lazy = self.future_annotations
        pending = list(_free_names(node or self.statements[target], lazy) | extra_names)
        seen: set[str] = set()
        while pending:
            name = pending.pop()
            if name in seen or name in BUILTIN_NAMES:
                continue
            seen.add(name)
            owners = [i for i, names in enumerate(self.defines) if name in names and i != target]
            if not owners:
                if name == self.statements[target].name:
                    continue
                raise Rejected("star_import" if self.star_import else "unresolved_name")
            for i in owners:
                if i not in needed:
                    needed.add(i)
                    pending.extend(_free_names(self.statements[i], lazy))
        parts = []
        if self.future_annotations:
            parts.append("from __future__ import annotations\n")
        for i in sorted(needed):
            statement = self.statements[i]
            for node in ast.walk(statement):
                if isinstance(node, ast.ImportFrom) and (node.level or 0) > 0:
                    raise Rejected("relative_import")
                if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                    continue
                modules = (
                    [a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                )  # fmt: skip
                if any(m.split(".")[0] not in ALLOWED_MODULES for m in modules):
                    raise Rejected("non_stdlib_import")
            if isinstance(statement, ast.ImportFrom) and statement.module == "__future__":
                continue
            parts.append(self.segment(statement))
        return "".join(parts)


def strip_doctest_answers(docstring_source: str) -> str:
    """The docstring's source lines without the expected output of its examples (the `>>>` lines stay).

    As doctest reads them: an example's source is its `>>>` line and the `...` lines right after it; its
    answer is every following line up to a blank line or the next `>>>` (a traceback's own `...` line
    included).
    """
    out, state, prompt_indent = [], None, 0
    for line in docstring_source.splitlines(keepends=True):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if stripped.startswith(">>>"):
            state, prompt_indent = "source", indent
        elif state == "source" and stripped.startswith("...") and indent == prompt_indent:
            pass  # continuation of the example's source
        elif not stripped.strip() or stripped.startswith(('"""', "'''")):
            state = None
        elif state is not None:
            state = "answer"
            continue
        out.append(line)
    return "".join(out)


def _indent(code: str, prefix: str = "    ") -> str:
    return textwrap.indent(code.rstrip("\n") + "\n", prefix)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL


_NOT_LITERAL = object()


def value_check(expression: str, expected_text: str) -> str:
    """Assert code comparing the value of `expression` with a literal, by value and exact type.

    `True` is not `1` and `1.0` is not `1`; set and dict answers do not depend on iteration order.
    """
    return (
        f"_result = ({expression})\n_expected = ({expected_text})\n"
        "assert type(_result) is type(_expected) and _result == _expected, repr(_result)\n"
    )


def _ownership_check(function: str) -> str:
    return f"assert {function}.__module__ == __name__, 'the function must be defined by the program'\n"


def doctest_tests(function: str, docstring: str, max_tests: int) -> tuple[list[str], set[str], Counter]:
    """Assert tests from a docstring's examples, the names the examples read, and skipped examples by reason."""
    skipped: Counter = Counter()
    try:
        examples = doctest.DocTestParser().get_examples(docstring)
    except ValueError:
        skipped["doctest_unparsable"] += 1
        return [], set(), skipped
    tests, setup, names, bound = [], [], set(), set()
    for example in examples:
        source = example.source
        try:
            tree = ast.parse(source)
        except SyntaxError:
            skipped["example_syntax_error"] += 1
            return tests, names, skipped  # later examples may depend on it
        names |= _loaded_names(tree) - _bound_names(tree) - bound
        bound |= _bound_names(tree)
        if any(example.options.get(o) for o in _SKIP_DIRECTIVES):
            skipped["example_skip_directive"] += 1
            continue
        want = example.want
        check = None
        if example.exc_msg is not None:
            exception = example.exc_msg.split(":", 1)[0].strip().rsplit(".", 1)[-1]
            if exception.isidentifier():
                check = (
                    f"try:\n{_indent(source)}except Exception as _error:\n"
                    f"    assert type(_error).__name__ == {exception!r}, type(_error).__name__\n"
                    f"else:\n    raise AssertionError('expected {exception}')\n"
                )
            setup.append(f"try:\n{_indent(source)}except Exception:\n    pass\n")
        elif want and any(example.options.get(o) for o in _INEXACT_DIRECTIVES):
            skipped["example_inexact_answer"] += 1
            setup.append(source)
        elif want:
            expression = tree.body[0].value if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) else None
            is_print = (
                isinstance(expression, ast.Call)
                and isinstance(expression.func, ast.Name)
                and expression.func.id == "print"
            )
            if expression is not None and not is_print and _literal(want) is not _NOT_LITERAL:
                check = value_check(ast.unparse(expression), want.rstrip("\n"))
            elif expression is not None and not is_print:
                # what doctest shows of a value: its repr. The assert harness keeps the program's printed
                # output away from the checks, so an answer that was printed fails the reference and is dropped.
                check = (
                    f"_result = ({ast.unparse(expression)})\n"
                    "_shown = '' if _result is None else repr(_result) + '\\n'\n"
                    f"assert _shown == {want.replace('<BLANKLINE>', '')!r}, _shown\n"
                )
            else:
                skipped["example_prints_output"] += 1
            setup.append(source)
        else:
            setup.append(source)
        if check is not None and len(tests) < max_tests:
            tests.append("".join(setup[:-1]) + _ownership_check(function) + check)
    return tests, names, skipped


@dataclass
class Candidate:
    id: str
    repo: str
    path: str
    function: str
    kind: str
    prompt: str
    reference: str
    stub: str
    tests: list[str]
    function_source: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _first_line(node: ast.stmt) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _class_level_loads(statement: ast.stmt) -> set[str]:
    """Names a class-body statement reads when the class is created (not inside its functions' bodies)."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
        return _free_names(statement) - _free_names(ast.Module(body=statement.body, type_ignores=[]))
    return _loaded_names(statement)


def _attribute_names(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


CORE_DUNDERS = frozenset(
    "__init__ __new__ __post_init__ __init_subclass__ __set_name__ __repr__ __str__ __eq__ __hash__ "
    "__getattr__ __getattribute__ __setattr__ __delattr__ __slots__".split()
)


def class_slice(owner: ast.ClassDef, method: ast.FunctionDef, tests: list[str]) -> list[ast.stmt]:
    """The members of `owner` that `method` and its tests may use, in class order (without `method`).

    Kept: every statement that is not a function (docstring, class attributes, nested classes), the
    dunder methods construction, display, equality and attribute access call implicitly (`CORE_DUNDERS`;
    an operator's method is kept only when named, so a reference that needs it fails verification
    and the candidate is dropped), and, transitively, every method or property whose name appears
    as an attribute (`self.name`, `obj.name`) in the method, the tests or a kept member, or that a kept
    statement reads while the class is created (`alias = name`).
    """
    members = [s for s in owner.body if s is not method]

    def member_name(statement: ast.stmt) -> str | None:
        return statement.name if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef) else None

    keep = [member_name(s) is None or member_name(s) in CORE_DUNDERS for s in members]
    needed = _attribute_names(method)
    for code in tests:
        needed |= _attribute_names(ast.parse(code))
    while True:
        for statement, kept in zip(members, keep, strict=True):
            if kept:
                needed |= _attribute_names(statement) | _class_level_loads(statement)
        grown = [kept or member_name(s) in needed for s, kept in zip(members, keep, strict=True)]
        if grown == keep:
            return [s for s, kept in zip(members, keep, strict=True) if kept]
        keep = grown


def build_candidate(
    module: ModuleIndex, repo: str, path: str, name: str, kind: str, tests: list[str], example_names: set[str],
    config: MiningConfig, method: ast.FunctionDef | None = None,
) -> Candidate:  # fmt: skip
    """Prompt, reference and stub of a top-level function `name`, or of `method` of the top-level class `name`.

    For a method, the members of the class it may use (`class_slice`) come first and the method last, so
    that the prompt, like a function's, ends with the docstring the body follows. Raises Rejected with
    the reason.
    """
    index = module.functions[name] if method is None else module.classes[name]
    owner = module.statements[index]
    node = owner if method is None else method
    if node.end_lineno - node.lineno + 1 > config.max_function_lines:
        raise Rejected("function_too_long")
    docstring = ast.get_docstring(node, clean=False)
    if not docstring or not isinstance(node.body[0], ast.Expr):
        raise Rejected("no_docstring")
    if len(node.body) < 2:
        raise Rejected("no_body")
    others: list[ast.stmt] = []
    sliced = None
    if method is not None:
        others = class_slice(owner, method, tests)
        sliced = copy.copy(owner)
        sliced.body = [*others, method]
    context = module.context(index, example_names - {name}, sliced)
    doc_node = node.body[0]
    if module.lines[doc_node.end_lineno - 1][doc_node.end_col_offset :].strip():
        raise Rejected("docstring_shares_line")
    lines = module.lines
    function_source = module.segment(node)
    header = "".join(lines[_first_line(node) - 1 : doc_node.lineno - 1])
    prefix = ""
    if method is not None:
        if any(method.name in _class_level_loads(s) for s in others):
            raise Rejected("method_used_in_class_body")
        if owner.body[0].lineno == owner.lineno:
            raise Rejected("class_on_one_line")
        prefix = "".join(lines[_first_line(owner) - 1 : _first_line(owner.body[0]) - 1])
        prefix += "\n".join("".join(lines[_first_line(s) - 1 : s.end_lineno]).rstrip("\n") + "\n" for s in others)
        prefix += "\n" if others else ""
    if (context + prefix).count("\n") > config.max_context_lines:
        raise Rejected("context_too_large")
    doc_lines = "".join(lines[doc_node.lineno - 1 : doc_node.end_lineno])
    separator = "\n\n" if context else ""
    prompt = context + separator + prefix + header + strip_doctest_answers(doc_lines).rstrip("\n") + "\n"
    qualified = name if method is None else f"{name}.{method.name}"
    return Candidate(
        id=f"mined/{repo}/{path}::{qualified}",
        repo=repo,
        path=path,
        function=qualified,
        kind=kind,
        prompt=prompt,
        reference=context + separator + prefix + function_source,
        stub=prompt + f"{' ' * doc_node.col_offset}pass\n",
        tests=tests,
        function_source=function_source,
    )


def _module_names(path: str) -> list[str]:
    """Dotted names a file may be imported as: `a/b/c.py` -> `a.b.c`, `b.c`, `c`; packages drop `__init__`."""
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return [".".join(parts[i:]) for i in range(len(parts)) if parts[i:]]


def _is_literal_node(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def unit_test_asserts(test_module: ast.Module, resolve) -> list[tuple[str, str, str]]:
    """(module path, function, assert code) for each simple assert in the file's test functions.

    `resolve(local_name)` maps a name the test file uses (`f`, `mod.f`) to (module path, function)
    or None. Test functions are top-level `test_*` functions without parameters and `test_*`
    methods of `Test*` classes taking only `self`.
    """
    functions = []
    for statement in test_module.body:
        if isinstance(statement, ast.FunctionDef) and statement.name.startswith("test"):
            if not statement.args.args and not statement.args.vararg and not statement.args.kwonlyargs:
                functions.append(statement)
        elif isinstance(statement, ast.ClassDef) and statement.name.startswith("Test"):
            for method in statement.body:
                if (
                    isinstance(method, ast.FunctionDef)
                    and method.name.startswith("test")
                    and len(method.args.args) == 1
                ):
                    functions.append(method)
    found = []
    for function in functions:
        for node in ast.walk(function):
            if not isinstance(node, ast.Assert):
                continue
            test, negate = node.test, False
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                test, negate = test.operand, True
            call, expected, operator = None, None, None
            if isinstance(test, ast.Call):
                call = test
            elif (
                isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq | ast.Is)
                and not negate
            ):  # fmt: skip
                left, right = test.left, test.comparators[0]
                call, expected = (left, right) if isinstance(left, ast.Call) else (right, left)
                operator = test.ops[0]
                if not isinstance(call, ast.Call) or not _is_literal_node(expected):
                    continue
            if call is None:
                continue
            target = resolve(ast.unparse(call.func))
            if target is None:
                continue
            arguments = [*call.args, *(k.value for k in call.keywords)]
            if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
                continue
            if not all(_is_literal_node(a) for a in arguments):
                continue
            module_path, name = target
            plain = ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=call.args, keywords=call.keywords)
            expression = ast.unparse(plain)
            if expected is None:
                code = f"assert {'not ' if negate else ''}({expression})\n"
            elif isinstance(operator, ast.Is):
                code = f"assert ({expression}) is {ast.unparse(expected)}\n"
            else:
                code = value_check(expression, ast.unparse(expected))
            found.append((module_path, name, _ownership_check(name) + code))
    return found


def _import_resolver(test_module: ast.Module, modules: dict[str, str]):
    """Maps names bound by the test file's imports to (module path, function) in `modules` (dotted name -> path)."""
    direct: dict[str, tuple[str, str]] = {}
    aliases: dict[str, str] = {}
    for node in ast.walk(test_module):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if node.module in modules:
                    direct[alias.asname or alias.name] = (modules[node.module], alias.name)
                if f"{node.module}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = modules[f"{node.module}.{alias.name}"]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    aliases[alias.asname or alias.name] = modules[alias.name]

    def resolve(name: str) -> tuple[str, str] | None:
        if name in direct:
            return direct[name]
        head, _, attribute = name.rpartition(".")
        if head in aliases and attribute:
            return aliases[head], attribute
        return None

    return resolve


def mine_group(group: pa.Table, config: dict[str, Any]) -> pa.Table:
    """Ray Data `map_groups` function: the candidates of one repository's Python files, and rejections by reason."""
    candidates, rejections = mine_repository(group.to_pylist(), MiningConfig(**config))
    rows = [{"kind": "candidate", "payload": json.dumps(c.to_dict())} for c in candidates]
    rows.append({"kind": "rejections", "payload": json.dumps(rejections)})
    return pa.Table.from_pylist(rows, schema=pa.schema([("kind", pa.string()), ("payload", pa.large_string())]))


def mine_repository(files: list[dict[str, Any]], config: MiningConfig) -> tuple[list[Candidate], dict[str, int]]:
    """Candidates of one repository (`files`: dicts with repo, path, content); rejections by `kind:reason`."""
    rejections: Counter = Counter()
    parsed: dict[str, ModuleIndex] = {}
    for file in sorted(files, key=lambda f: f["path"]):
        try:
            parsed[file["path"]] = ModuleIndex(file["content"])
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            rejections["file:syntax_error"] += 1
    repo = files[0]["repo"] if files else ""
    candidates = []
    if DOCTEST in config.kinds:
        for path, module in parsed.items():
            if _TEST_FILE.search(path):
                continue
            targets = [(name, None) for name in module.functions]
            if config.methods:
                targets += [
                    (name, member)
                    for name, index in module.classes.items()
                    for member in module.statements[index].body
                    if isinstance(member, ast.FunctionDef)
                ]
            for name, method in targets:
                node = module.statements[module.functions[name]] if method is None else method
                docstring = ast.get_docstring(node, clean=True)
                if not docstring or ">>>" not in docstring:
                    continue
                tests, names, skipped = doctest_tests(name, docstring, config.max_tests)
                rejections.update({f"doctest_example:{k}": v for k, v in skipped.items()})
                if not tests:
                    rejections["doctest:no_checkable_example"] += 1
                    continue
                try:
                    candidates.append(build_candidate(module, repo, path, name, DOCTEST, tests, names, config, method))
                except Rejected as rejection:
                    rejections[f"doctest:{rejection}"] += 1
    if UNIT_TEST in config.kinds:
        modules = {}
        for path in parsed:
            if not _TEST_FILE.search(path):
                for dotted in _module_names(path):
                    modules.setdefault(dotted, path)
        by_function: dict[tuple[str, str], list[str]] = {}
        for path, module in parsed.items():
            if _TEST_FILE.search(path):
                for module_path, name, code in unit_test_asserts(module.tree, _import_resolver(module.tree, modules)):
                    by_function.setdefault((module_path, name), []).append(code)
        for (module_path, name), tests in sorted(by_function.items()):
            module = parsed[module_path]
            if name not in module.functions:
                rejections["unit_test:not_a_top_level_function"] += 1
                continue
            tests = list(dict.fromkeys(tests))[: config.max_tests]
            try:
                candidates.append(build_candidate(module, repo, module_path, name, UNIT_TEST, tests, set(), config))
            except Rejected as rejection:
                rejections[f"unit_test:{rejection}"] += 1
    return candidates, dict(rejections)


class CandidateVerifier:
    """Ray Data actor: runs each candidate's reference (`reference_runs` times) and stub in a sandbox pool."""

    def __init__(self, config: dict[str, Any]):
        from loopcoder.postrain.sandbox import Limits, SandboxConfig, get_pool

        self.config = MiningConfig(**config)
        self.pool = get_pool(
            workers=self.config.sandbox_workers, config=SandboxConfig(isolation=self.config.isolation)
        )
        self.limits = Limits(cpu_seconds=self.config.time_limit_seconds, memory_mb=self.config.memory_limit_mb)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        candidates = [json.loads(p) for p in batch["payload"]]
        results = verify_candidates(candidates, self.pool, self.limits, self.config)
        return {"payload": np.array([json.dumps(r) for r in results], dtype=object)}


def verify_candidates(candidates: list[dict], pool, limits, config: MiningConfig) -> list[dict]:
    """Each candidate with `verdict` (`kept` or the rejection reason) and the tests left after verification.

    Every run of a candidate is queued on the pool at once. The reference's repeated runs differ by a
    trailing comment, so the pool's verdict cache cannot answer them from the first run.
    """
    from loopcoder.postrain.sandbox import TestCase

    requests, spans = [], []
    for candidate in candidates:
        tests = [TestCase(assert_code=code) for code in candidate["tests"]]
        start = len(requests)
        for run in range(config.reference_runs):
            requests.append((candidate["reference"] + (f"\n# run {run}\n" if run else ""), "python", tests, limits))
        requests.append((candidate["stub"], "python", tests, limits))
        spans.append((start, len(requests)))
    verdicts = pool.run_programs(requests)
    results = []
    for candidate, (start, end) in zip(candidates, spans, strict=True):
        runs = verdicts[start:end]
        reference_runs, stub = runs[:-1], runs[-1]
        infra = any(v.infrastructure_error for run in runs for v in run)
        reference_ok = [all(run[i].passed for run in reference_runs) for i in range(len(candidate["tests"]))]
        stub_failed = [not v.passed for v in stub]
        kept_tests = [
            t for t, ok, bad in zip(candidate["tests"], reference_ok, stub_failed, strict=True) if ok and bad
        ]
        first_reference = reference_runs[0]
        if infra:
            verdict = "sandbox_error"
        elif not any(v.passed for v in first_reference):
            verdict = "reference_fails_" + Counter(v.verdict for v in first_reference).most_common(1)[0][0]
        elif not any(stub_failed):
            verdict = "stub_passes"
        elif len(kept_tests) < config.min_tests:
            verdict = "too_few_tests"
        else:
            verdict = "kept"
        results.append(
            candidate
            | {
                "verdict": verdict,
                "tests": kept_tests if verdict == "kept" else candidate["tests"],
                "dropped_tests": {
                    "reference_fails": sum(not ok for ok in reference_ok),
                    "flaky": sum(first_reference[i].passed and not ok for i, ok in enumerate(reference_ok)),
                    "stub_passes": sum(ok and not bad for ok, bad in zip(reference_ok, stub_failed, strict=True)),
                },
            }
        )
    return results


def _normalised_source(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def near_duplicates(problems: list[dict], config: MinhashConfig) -> dict[str, str]:
    """id -> id of the problem it duplicates (exact or MinHash near duplicate of the function source).

    Problems are visited by id; the first of each duplicate group is kept.
    """
    signer = MinhashSignatures(config)
    kept_by_hash: dict[str, str] = {}
    buckets: dict[tuple[int, int], list[int]] = {}
    kept: list[dict] = []
    shingle_sets: list[np.ndarray] = []
    duplicates: dict[str, str] = {}
    for problem in sorted(problems, key=lambda p: p["id"]):
        source = problem["function_source"]
        digest = _normalised_source(source)
        if digest in kept_by_hash:
            duplicates[problem["id"]] = kept_by_hash[digest]
            continue
        token_list = tokens(source)
        bands: list[tuple[int, int]] = []
        if len(token_list) >= config.min_tokens:
            bands = list(enumerate(signer.band_hashes(signer.signature_from_tokens(token_list)).tolist()))
            shingles = shingle_set(source, config.ngram)
            match = None
            for band in bands:
                for index in buckets.get(band, []):
                    if not config.verify or jaccard(shingles, shingle_sets[index]) >= config.threshold:
                        match = kept[index]["id"]
                        break
                if match:
                    break
            if match:
                duplicates[problem["id"]] = match
                continue
        else:
            shingles = np.empty(0, dtype=np.uint32)
        kept_by_hash[digest] = problem["id"]
        for band in bands:
            buckets.setdefault(band, []).append(len(kept))
        kept.append(problem)
        shingle_sets.append(shingles)
    return duplicates


def to_rl_problem(candidate: dict, config: MiningConfig) -> dict[str, Any]:
    return {
        "id": candidate["id"],
        "prompt": candidate["prompt"],
        "language": "python",
        "tests": [{"stdin": None, "expected_stdout": None, "assert_code": code} for code in candidate["tests"]],
        "time_limit_seconds": float(config.time_limit_seconds),
        "memory_limit_mb": int(config.memory_limit_mb),
        "source": f"mined:{candidate['kind']}",
    }


def _python_rows_of_shard(item: dict[str, Any]) -> list[dict[str, Any]]:
    table = pq.read_table(item["path"])
    if "kept" in table.column_names:
        table = table.filter(table.column("kept"))
    rows = table.select(["repo", "path", "language", "content"]).to_pylist()
    return [r for r in rows if r["language"] == "Python" or r["path"].endswith(".py")]


def plot_counts(by_repo_kind: dict[str, dict[str, int]], path: Path) -> None:
    """A horizontal stacked bar chart of kept problems per repository and kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    repos = sorted(by_repo_kind, key=lambda r: sum(by_repo_kind[r].values()))
    figure, axis = plt.subplots(figsize=(7, 1 + 0.4 * max(1, len(repos))))
    left = np.zeros(len(repos))
    for kind in KINDS:
        counts = np.array([by_repo_kind[r].get(kind, 0) for r in repos])
        axis.barh(repos, counts, left=left, label=kind)
        left += counts
    axis.set_xlabel("problems kept")
    axis.set_title("mined rl_problem records by repository and kind")
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def decontaminate_candidates(candidates: list[dict], benchmarks: list[Any]) -> tuple[list[dict], list[dict]]:
    """(clean, contaminated): a candidate whose prompt and reference hold a benchmark problem is removed.

    Each removal names its reason, benchmark and problem (`contaminated.jsonl`).
    """
    decontaminator = Decontaminator(DecontaminationConfig(benchmarks=list(benchmarks)))
    clean, contaminated = [], []
    for candidate in candidates:
        hit = decontaminator.match(candidate["prompt"] + "\n" + candidate["reference"])
        if hit is None:
            clean.append(candidate)
        else:
            contaminated.append(
                {"id": candidate["id"], "kind": candidate["kind"], "reason": hit.reason,
                 "benchmark": hit.benchmark, "problem": hit.problem}
            )  # fmt: skip
    return clean, contaminated


def run_mining(config: MiningConfig, output: Path | None = None) -> dict[str, Any]:
    """Runs the mining job into `output` (default: the config's); returns the statistics written to `stats.json`."""
    import ray
    import ray.data

    from loopcoder.pipelines.clean.job import RayConfig
    from loopcoder.pipelines.executor.tasks import configure_ray_data, ray_session
    from loopcoder.pipelines.io.filesystem import discover_shards

    output = Path(output or config.output)
    output.mkdir(parents=True, exist_ok=True)
    previous = output / "config.json"
    if previous.exists() and json.loads(previous.read_text()).get("fingerprint") != config.fingerprint():
        raise ValueError(f"{output} holds the output of a different config; choose another output or delete it")
    atomic_write_json(previous, config.to_dict() | {"output": str(output), "fingerprint": config.fingerprint()})
    if (output / "_SUCCESS").exists():
        return json.loads((output / "stats.json").read_text())
    shards = [str(p) for p in discover_shards(config.input)]
    if not shards:
        raise FileNotFoundError(f"no .parquet shards under {config.input} (run the clean job first)")
    timings: dict[str, float] = {}
    settings = RayConfig(num_cpus=config.num_cpus)
    with ray_session(settings):
        configure_ray_data(settings)
        start = time.perf_counter()
        files = ray.data.from_items([{"path": s} for s in shards], override_num_blocks=len(shards))
        files = files.flat_map(_python_rows_of_shard)
        mined = files.groupby("repo").map_groups(mine_group, fn_args=(config.to_dict(),), batch_format="pyarrow")
        rejections: Counter = Counter()
        candidates = []
        for row in mined.take_all():
            if row["kind"] == "candidate":
                candidates.append(json.loads(row["payload"]))
            else:
                rejections.update(json.loads(row["payload"]))
        candidates.sort(key=lambda c: c["id"])
        timings["extract"] = time.perf_counter() - start

        start = time.perf_counter()
        clean, contaminated = decontaminate_candidates(candidates, config.benchmarks)
        timings["decontaminate"] = time.perf_counter() - start

        start = time.perf_counter()
        verified: list[dict] = []
        if clean:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            actors = config.verify_actors or max(1, cpus // max(1, config.sandbox_workers))
            batches = ray.data.from_items(
                [{"payload": json.dumps(c)} for c in clean], override_num_blocks=min(len(clean), 4 * actors)
            )
            checked = batches.map_batches(
                CandidateVerifier, fn_constructor_args=(config.to_dict(),), batch_size=16,
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=min(cpus, config.sandbox_workers),
            )  # fmt: skip
            verified = [json.loads(row["payload"]) for row in checked.take_all()]
        timings["verify"] = time.perf_counter() - start

    start = time.perf_counter()
    verdicts = Counter(f"{c['kind']}:{c['verdict']}" for c in verified if c["verdict"] != "kept")
    rejections.update(verdicts)
    passed = [c for c in verified if c["verdict"] == "kept"]
    duplicates = near_duplicates(passed, config.minhash_config())
    kept = sorted((c for c in passed if c["id"] not in duplicates), key=lambda c: c["id"])
    for candidate in passed:
        if candidate["id"] in duplicates:
            rejections[f"{candidate['kind']}:near_duplicate"] += 1
    timings["dedup"] = time.perf_counter() - start

    for folder in ("problems", "references"):
        for stale in (output / folder).glob("part-*.parquet"):
            stale.unlink()
    with ShardWriter(output / "problems", RL_PROBLEM, config.rows_per_shard) as writer:
        writer.write_all(to_rl_problem(c, config) for c in kept)
    references = [
        {k: c[k] for k in ("id", "repo", "path", "function", "kind", "reference", "stub")}
        | {"num_tests": len(c["tests"])}
        for c in kept
    ]
    atomic_write_parquet(
        pa.Table.from_pylist(references, schema=REFERENCE_SCHEMA), output / "references" / "part-00000.parquet"
    )
    atomic_write_bytes(output / "contaminated.jsonl", "".join(json.dumps(c) + "\n" for c in contaminated).encode())
    by_repo_kind: dict[str, dict[str, int]] = {}
    for candidate in kept:
        counts = by_repo_kind.setdefault(candidate["repo"], {})
        counts[candidate["kind"]] = counts.get(candidate["kind"], 0) + 1
    dropped_tests: Counter = Counter()
    for candidate in verified:
        dropped_tests.update(candidate["dropped_tests"])
    stats = {
        "job": config.name,
        "fingerprint": config.fingerprint(),
        "input_shards": len(shards),
        "candidates": dict(Counter(c["kind"] for c in candidates)),
        "contaminated": {
            "count": len(contaminated),
            "by_reason": dict(Counter(c["reason"] for c in contaminated)),
            "by_benchmark": dict(Counter(c["benchmark"] for c in contaminated)),
        },
        "verified": dict(Counter(c["kind"] for c in verified)),
        "kept": len(kept),
        "kept_by_kind": dict(Counter(c["kind"] for c in kept)),
        "kept_by_repo": dict(sorted(by_repo_kind.items())),
        "tests": sum(len(c["tests"]) for c in kept),
        "dropped_tests": dict(dropped_tests),
        "rejections": dict(sorted(rejections.items())),
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    if kept:
        plot_counts(by_repo_kind, output / "problems_by_repo.png")
    atomic_write_json(output / "stats.json", stats)
    atomic_write_json(output / "_SUCCESS", {"job": config.name, "fingerprint": config.fingerprint()})
    return stats


def read_references(output: str | Path) -> list[dict[str, Any]]:
    """The reference and stub programs of a mining job's kept problems."""
    return pq.read_table(Path(output) / "references" / "part-00000.parquet").to_pylist()
