"""Licence filter: SPDX headers and expressions, licence columns, licence files of directory and git inputs."""

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.clean.runner import run_job
from loopcoder.pipelines.io.readers import plan_tasks, read_task
from loopcoder.pipelines.steps.licences import (
    LicenceConfig,
    LicenceFilter,
    classify_licence_text,
    repository_licences,
    spdx_header,
)

MIT_TEXT = """MIT License

Copyright (c) 2024 Example Maintainers

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
"""
GPL_TEXT = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
 Everyone is permitted to copy and distribute verbatim copies
 of this license document, but changing it is not allowed.
"""
APACHE_TEXT = """
                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/
"""
BSD3_TEXT = """Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:
3. Neither the name of the copyright holder nor the names of its contributors may be used to
   endorse or promote products derived from this software without specific prior written permission.
"""


def doc(content="x = 1\n", repo="acme/widgets", license=None, licenses=None, licence_source=None):
    return {"id": "i", "repo": repo, "path": "a.py", "language": "Python", "content": content,
            "size_bytes": len(content.encode()), "license": license, "licenses": licenses,
            "licence_source": licence_source, "decisions": []}  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "reason", "source"),
    [
        ({"content": "# SPDX-License-Identifier: MIT\nx = 1\n"}, None, "header"),
        ({"content": "// SPDX-License-Identifier: GPL-3.0-only\nint x;\n"}, "licence_not_permissive", "header"),
        ({"content": "/* SPDX-License-Identifier: MIT OR GPL-2.0-or-later */\n"}, None, "header"),
        ({"content": "# SPDX-License-Identifier: GPL-2.0 AND MIT\n"}, "licence_not_permissive", "header"),
        ({"content": "# SPDX-License-Identifier: (Apache-2.0 WITH LLVM-exception)\n"}, None, "header"),
        ({"content": "# SPDX-License-Identifier: LicenseRef-Acme-Internal\n"}, "licence_unknown", "header"),
        ({"content": "# SPDX-License-Identifier: MIT\n", "license": "gpl-3.0"}, None, "header"),
        ({"license": "mit"}, None, "column"),
        ({"license": "Apache License 2.0"}, None, "column"),
        ({"license": "agpl-3.0"}, "licence_not_permissive", "column"),
        ({"licenses": ["MIT", "BSD-3-Clause"]}, None, "column"),
        ({"licenses": ["MIT", "GPL-3.0-or-later"]}, "licence_not_permissive", "column"),
        ({"licenses": ["no_license"]}, "licence_unknown", "none"),
        ({}, "licence_unknown", "none"),
        ({"license": "mit", "repo": "Acme/Secret-Project"}, "opted_out", None),
    ],
    ids=["mit-header", "gpl-header", "or", "and", "with", "licenseref", "header-wins", "column", "alias", "agpl",
         "list", "list-mixed", "no_license", "nothing", "opt-out"],
)  # fmt: skip
def test_licence_decisions_and_sources(kwargs, reason, source):
    step = LicenceFilter(LicenceConfig(opt_out=("acme/secret-*",)))
    d = doc(**kwargs)
    assert step.run(d) == reason
    assert d["decisions"] == [{"step": "licence", "kept": reason is None, "reason": reason}]
    stats = step.stats.to_dict()
    assert stats["dropped"] == ({reason: 1} if reason else {})
    assert stats["extra"].get(f"source:{source}", 0) == (1 if source else 0)


def test_knobs_keep_unknown_any_and_allow_list():
    assert LicenceFilter(keep_unknown=True).run(doc()) is None
    assert LicenceFilter(require_all=False).run(doc(licenses=["MIT", "GPL-3.0"])) is None
    assert LicenceFilter(allowed=("gpl-3.0",)).run(doc(license="GPL-3.0-only")) is None
    assert LicenceFilter(allowed=("gpl-3.0",)).run(doc(license="MIT")) == "licence_not_permissive"
    assert LicenceFilter(spdx_headers=False).run(doc("# SPDX-License-Identifier: MIT\n")) == "licence_unknown"


def test_spdx_header_only_near_the_top_and_without_comment_closers():
    assert spdx_header("<!-- SPDX-License-Identifier: BSD-2-Clause -->\n<p/>") == "BSD-2-Clause"
    assert spdx_header("x = 1\n" * 40 + "# SPDX-License-Identifier: MIT\n") is None


@pytest.mark.parametrize(
    ("text", "licence"),
    [(MIT_TEXT, "mit"), (GPL_TEXT, "gpl-3.0"), (APACHE_TEXT, "apache-2.0"), (BSD3_TEXT, "bsd-3-clause"),
     ("SPDX-License-Identifier: ISC\n", "ISC"), ("All rights reserved.\n", None), ("\x00\x01\xff" * 100, None)],
    ids=["mit", "gpl", "apache", "bsd3", "spdx-line", "unknown", "binary"],
)  # fmt: skip
def test_licence_file_texts(text, licence):
    assert classify_licence_text(text) == licence


def _directory_docs(root: Path, **spec):
    spec = {"kind": "directory", "path": str(root)} | spec
    tasks, errors = plan_tasks([spec], files_per_task=100)
    assert not errors
    return [d for t in tasks for d in read_task(t, spec)]


def test_directory_inputs_use_their_licence_files(tmp_path):
    mit, gpl, bare, weird = (tmp_path / name for name in ("mit", "gpl", "bare", "weird"))
    for root in (mit, gpl, bare, weird):
        (root / "src").mkdir(parents=True)
        (root / "src" / "a.py").write_text("x = 1\n")
    (mit / "LICENSE.md").write_text(MIT_TEXT)
    (gpl / "COPYING").write_text(GPL_TEXT)
    (weird / "LICENSE").write_bytes(b"\x00\x9f\x92\x96 not a licence" * 50)
    step = LicenceFilter()
    reasons = {}
    for root in (mit, gpl, bare, weird):
        for d in _directory_docs(root):
            d["decisions"] = []
            d["content"] = d.pop("raw").decode("utf-8", "replace")
            reasons[(root.name, d["path"])] = step.run(d)
    assert reasons == {
        ("mit", "LICENSE.md"): None, ("mit", "src/a.py"): None,
        ("gpl", "COPYING"): "licence_not_permissive", ("gpl", "src/a.py"): "licence_not_permissive",
        ("bare", "src/a.py"): "licence_unknown",
        ("weird", "LICENSE"): "licence_unknown", ("weird", "src/a.py"): "licence_unknown",
    }  # fmt: skip
    extra = step.stats.to_dict()["extra"]
    assert extra["source:licence_file"] == 6 and extra["source:none"] == 1 and extra["licence:mit"] == 2
    # the input's own `license:` key wins over the files
    (d,) = [d for d in _directory_docs(gpl, license="MIT") if d["path"] == "src/a.py"]
    d["decisions"] = []
    assert LicenceFilter().run(d) is None


def test_git_inputs_read_licence_files_at_the_revision(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "LICENSE").write_text(APACHE_TEXT)
    (repo / "main.go").write_text("package main\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "apache"], check=True)
    first = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (repo / "LICENSE").write_text(GPL_TEXT)
    subprocess.run([*git, "commit", "-qam", "gpl"], check=True)
    assert repository_licences("git", str(repo), first) == ("apache-2.0",)
    for revision, reason in ((first, None), ("HEAD", "licence_not_permissive")):
        spec = {"kind": "git", "path": str(repo), "revision": revision}
        tasks, _ = plan_tasks([spec])
        docs = [d for t in tasks for d in read_task(t, spec)]
        (main,) = [d for d in docs if d["path"] == "main.go"]
        main["decisions"], main["content"] = [], main.pop("raw").decode()
        assert LicenceFilter().run(main) == reason


def test_clean_job_filters_by_licence_columns_and_files(ray_local, tmp_path):
    mit, gpl = tmp_path / "mit", tmp_path / "gpl"
    for root, text in ((mit, MIT_TEXT), (gpl, GPL_TEXT)):
        root.mkdir()
        (root / "LICENSE").write_text(text)
        (root / "util.py").write_text(f"def {root.name}_util(value):\n    return value * 2\n")
    table = tmp_path / "stack.jsonl"
    rows = [
        {"content": "def a(x):\n    return x + 1\n", "path": "a.py", "repo": "o/a", "detected_licenses": ["MIT"]},
        {"content": "def b(x):\n    return x - 1\n", "path": "b.py", "repo": "o/b", "detected_licenses": ["GPL-3.0"]},
        {"content": "def c(x):\n    return x * 3\n", "path": "c.py", "repo": "o/c", "detected_licenses": []},
        {"content": "def d(x):\n    return x / 3\n", "path": "d.py", "repo": "optout/d", "detected_licenses": ["MIT"]},
        {"content": "def e(x):\n    return x % 3\n", "path": "e.py", "repo": "o/e", "detected_licenses": [None, 7]},
    ]  # fmt: skip
    table.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    inputs = [{"kind": "directory", "path": str(mit)}, {"kind": "directory", "path": str(gpl)},
              {"kind": "jsonl", "path": str(table)}]  # fmt: skip
    job = JobConfig.from_dict(
        {
            "name": "licences",
            "output": str(tmp_path / "out"),
            "inputs": inputs,
            "steps": ["decode", {"licence": {"opt_out": ["optout/*"]}}],
        }  # fmt: skip
    )
    stats = run_job(job, tmp_path / "out")
    kept = {r["path"] for s in (tmp_path / "out").glob("files/*.parquet") for r in pq.read_table(s).to_pylist()}
    assert kept == {"LICENSE", "util.py", "a.py"}
    (step,) = [s for s in stats["steps"] if s["step"] == "licence"]
    assert step["dropped"] == {"licence_not_permissive": 3, "licence_unknown": 2, "opted_out": 1}
    (decode,) = [s for s in stats["steps"] if s["step"] == "decode"]
    assert decode["dropped"] == {"bad_record": 1}


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("package.json", '{"name": "x", "license": "MIT"}', None),
        ("package.json", '{"license": {"type": "ISC", "url": "..."}}', None),
        ("package.json", '{"license": "SEE LICENSE IN EULA.txt"}', "licence_unknown"),
        ("package.json", '{"license": "MIT"', "licence_unknown"),  # truncated JSON: no licence found
        ("Cargo.toml", '[package]\nname = "x"\nlicense = "MIT OR Apache-2.0"\n', None),
        ("pyproject.toml", '[project]\nname = "x"\nlicense = {text = "GPL-3.0-or-later"}\n', "licence_not_permissive"),
    ],
    ids=["npm", "npm-object", "npm-custom", "npm-broken", "cargo", "pyproject"],
)
def test_package_manifests_declare_the_repository_licence(tmp_path, name, text, reason):
    (tmp_path / name).write_text(text)
    (tmp_path / "lib.rs").write_text("fn main() {}\n")
    (d,) = [d for d in _directory_docs(tmp_path) if d["path"] == "lib.rs"]
    d["decisions"], d["content"] = [], d.pop("raw").decode()
    assert LicenceFilter().run(d) == reason
