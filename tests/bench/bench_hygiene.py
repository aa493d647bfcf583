"""Hygiene steps: MB/s per core of each, and the clean job's throughput with all of them ÷ without, in one run.

    .venv/bin/python tests/bench/bench_hygiene.py [--mb 3] [--job-mb 3] [--baseline-mb 0.2] [--ray-job-mb 0]

The corpus is the Python source of installed packages (transformers, then sympy, ...). Reported:

* each step alone (`secrets`, `licence`, `language_id`, `classify`, `decontamination` against HumanEval
  and against every built-in benchmark) on every file of the first `--mb` MB, in this process;
* the clean job's documents stage (`runner.TaskRunner.run_documents`: read, every per-document step,
  dedup keys and MinHash bands, Parquet shards) on the first `--job-mb` MB, in this process, once
  with the steps of `jobs/data/clean_dedup.yaml` and once with every hygiene step added (`secrets`,
  `language_id`, `licence`, the four web quality steps, `classify` with the shipped classifier, and
  decontamination against every built-in benchmark): the time in each step of the chain, and the
  ratio of the two runs' throughputs. The dedup and write stages do the same work in both jobs, so
  this ratio is a lower bound for the whole job's;
* detect-secrets as its own scanner uses it (every plugin's `analyze_line` on every line) on the
  first `--baseline-mb` MB, the baseline the `secrets` step is measured against;
* CLD2's accuracy on the machine's gettext catalogs (`/usr/share/locale/<lang>/LC_MESSAGES/*.mo`:
  the translated strings of one catalog, joined up to 1,000 characters, labelled by the catalog's
  folder), for documents over 200 characters, when the catalogs are installed;
* with `--ray-job-mb N`, the whole clean job on local Ray (decode, quality) against the same job with
  the three code hygiene steps added: wall time, with ÷ without (slow and noisy on a loaded machine).

MB/s per core is bytes over CPU time (this process's, plus its children's: the AST helper), so other
load on the machine does not count against it. Correctness first: fake keys planted in a copy of
the corpus must all be redacted, and the HumanEval prompts planted in the job's input must all be
removed, or no speed is reported.
"""

from __future__ import annotations

import argparse
import gettext
import os
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from loopcoder.pipelines.steps.benchmarks import BUILTIN_BENCHMARKS, humaneval_rows, infilling_rows
from loopcoder.pipelines.steps.decontamination import Decontaminator
from loopcoder.pipelines.steps.language_id import LanguageIdentifier
from loopcoder.pipelines.steps.licences import LicenceFilter
from loopcoder.pipelines.steps.quality_classifier import QualityClassify
from loopcoder.pipelines.steps.secrets import KEY_PLUGINS, SecretsRedactor

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER = {"classifiers": [{"path": "builtin:code_rules", "threshold": None}]}
HYGIENE_STEPS = [  # (position: after this step of the baseline, name, knobs), in the order docs/hygiene.md gives
    ("decode", "secrets", {}),
    ("secrets", "language_id", {}),
    ("language_id", "licence", {}),
    ("ast", "gopher_repetition", {}),
    ("gopher_repetition", "gopher_quality", {}),
    ("gopher_quality", "c4_quality", {}),
    ("c4_quality", "fineweb_quality", {}),
    ("fineweb_quality", "classify", CLASSIFIER),
]

PACKAGES = ["transformers", "sympy", "pandas", "scipy", "ray", "numpy", "torch"]
TEST_LANGUAGES = {"en", "fr", "de", "es", "it", "pt", "nl", "sv", "pl", "cs", "tr", "ru", "ja", "zh"}
PLANTED = [
    'AWS_ACCESS_KEY_ID = "AKIAQWERTYUIOPASDFGH"',
    "token = 'ghp_0123456789abcdefABCDEF0123456789abcd'",
    "stripe.api_key = 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'",
    "maps = 'AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY'",
    'db_password = "Tr0ub4dor-and-3"',
]


def corpus(megabytes: float) -> list[tuple[str, str]]:
    site = Path(sysconfig.get_paths()["purelib"])
    files, total = [], 0
    for name in PACKAGES:
        for path in sorted((site / name).rglob("*.py")) if (site / name).is_dir() else []:
            if path.is_symlink() or not path.is_file():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            files.append((str(path.relative_to(site)), text))
            total += len(text.encode("utf-8", "surrogatepass"))
            if total >= megabytes * 1e6:
                return files
    return files


def doc(path: str, content: str, language: str = "Python") -> dict:
    return {"id": path, "repo": "bench/" + path.split("/")[0], "path": path, "language": language,
            "content": content, "size_bytes": len(content.encode("utf-8", "surrogatepass")), "license": "mit",
            "licenses": None, "licence_source": None, "decisions": []}  # fmt: skip


def per_core(step, files, language: str = "Python") -> tuple[float, float]:
    """(MB, MB/s per core) of one step over the files, on copies of the documents, after one untimed file."""
    step.run(doc(*files[0], language))  # libraries some steps import on their first document
    docs = [doc(path, content, language) for path, content in files]
    megabytes = sum(d["size_bytes"] for d in docs) / 1e6
    start = time.process_time()
    for d in docs:
        step.run(d)
    return megabytes, megabytes / max(time.process_time() - start, 1e-9)


def check_planted(files) -> None:
    redactor = SecretsRedactor()
    for (path, content), line in zip(files, PLANTED, strict=False):
        d = doc(path, content + "\n" + line + "\n")
        redactor.run(d)
        secret = line.split("=", 1)[1].strip().strip("'\"")
        if secret in d["content"]:
            raise SystemExit(f"correctness check failed: a planted key was not redacted ({line.split('=')[0]})")


def detect_secrets_baseline(files, megabytes: float) -> float:
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.ip_public import IPPublicDetector
    from detect_secrets.plugins.keyword import KeywordDetector

    plugins = [cls() for cls in KEY_PLUGINS.values()] + [BasicAuthDetector(), KeywordDetector(), IPPublicDetector()]
    done, start = 0, time.process_time()
    for path, content in files:
        for number, line in enumerate(content.splitlines(), 1):
            for plugin in plugins:
                plugin.analyze_line(filename=path, line=line, line_number=number)
        done += len(content.encode("utf-8", "surrogatepass"))
        if done >= megabytes * 1e6:
            break
    return done / 1e6 / max(time.process_time() - start, 1e-9)


def gettext_sample(root: Path = Path("/usr/share/locale"), per_language: int = 20) -> list[tuple[str, str]]:
    """(label, text) from the machine's .mo catalogs: msgstr values joined up to 1,000 characters."""
    sample = []
    for folder in sorted(root.glob("*/LC_MESSAGES")):
        label = folder.parent.name.split("_")[0].split("@")[0]
        for catalog in sorted(folder.glob("*.mo"))[:per_language]:
            try:
                with catalog.open("rb") as handle:
                    entries = gettext.GNUTranslations(handle)._catalog.items()
            except Exception:  # noqa: BLE001 - malformed catalogs raise several types; they are skipped
                continue
            strings = [v for k, v in entries if k != "" and isinstance(v, str) and v.strip()]
            text = " ".join(strings)[:1000]
            if len(text) > 200:
                sample.append((label, text))
    return sample


def cld2_accuracy() -> None:
    import pycld2

    from loopcoder.pipelines.steps.language_id import CLD2_CODES, identify

    sample = gettext_sample()
    if not sample:
        print("no gettext catalogs under /usr/share/locale: accuracy not measured")
        return
    by_label: dict[str, list[int]] = {}
    for label, text in sample:
        hits = by_label.setdefault(label, [0, 0, 0])
        found = identify(text)
        hits[0] += found.split("-")[0] == label
        hits[1] += found == "und"
        hits[2] += 1
    supported = {CLD2_CODES.get(code, code) for _, code in pycld2.LANGUAGES}
    for name, selected in (
        ("languages CLD2 knows", {k: v for k, v in by_label.items() if v[2] >= 10 and k in supported}),
        ("the 14 languages of the unit-test sample", {k: v for k, v in by_label.items() if k in TEST_LANGUAGES}),
    ):
        correct, undetermined, total = (sum(v[i] for v in selected.values()) for i in range(3))
        print(f"CLD2 on gettext catalogs, {name}: {total} documents (200-1,000 chars) in {len(selected)} languages: "
              f"accuracy {correct / total:.3f}, undetermined {undetermined / total:.3f}, "
              f"wrong {(total - correct - undetermined) / total:.3f}")  # fmt: skip
        worst = sorted(selected.items(), key=lambda kv: kv[1][0] / kv[1][2])[:5]
        print("  lowest: " + ", ".join(f"{k} {v[0]}/{v[2]}" for k, v in worst))


def cpu_seconds() -> float:
    """CPU time of this process and of its children, live (the AST helper) or reaped."""
    me = psutil.Process()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
            children += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    reaped = os.times()
    return time.process_time() + children + reaped.children_user + reaped.children_system


def hygiene_job_steps(baseline: list) -> list:
    """The baseline steps with every hygiene step inserted and decontamination against every built-in."""
    steps = [dict(step) for step in baseline]
    for after, name, knobs in HYGIENE_STEPS:
        position = next(i for i, step in enumerate(steps) if after in step)
        steps.insert(position + 1, {name: knobs})
    for step in steps:
        if "decontamination" in step:
            step["decontamination"] = dict(step["decontamination"] or {}, benchmarks=list(BUILTIN_BENCHMARKS))
    return steps


def job_input(megabytes: float, folder: Path) -> tuple[dict, int]:
    """A directory input: installed sources up to `megabytes`, plus planted benchmark copies (their count)."""
    for number, (path, content) in enumerate(corpus(megabytes)):
        target = folder / f"{number:05d}_{Path(path).name}"
        target.write_text(content, encoding="utf-8")
    problems = humaneval_rows()[::20]
    for problem in problems:
        (folder / f"copied_{problem['entry_point']}.py").write_text(problem["prompt"] + problem["canonical_solution"])
    infill = infilling_rows("multi_line")[::700]
    for number, task in enumerate(infill):
        fim = f"<fim_prefix>{task['prompt']}<fim_suffix>{task['suffix']}<fim_middle>{task['canonical_solution']}"
        # a FIM example kept as data in a module, so that it parses and reaches decontamination
        body = fim.replace("\\", "\\\\").replace("'''", "\\'\\'\\'")
        (folder / f"fim_{number}.py").write_text(f"EXAMPLE = '''\n{body}'''\n")
    spec = {"kind": "directory", "path": str(folder), "repo": "bench/hygiene", "include": ["*.py"], "license": "MIT"}
    return spec, len(problems) + len(infill)


def run_documents_stage(label: str, steps: list, spec: dict, output: Path) -> dict:
    """One in-process pass of the documents stage: CPU seconds in total and per step, the task summaries."""
    from loopcoder.pipelines.clean.job import JobConfig
    from loopcoder.pipelines.clean.runner import TaskRunner
    from loopcoder.pipelines.io.readers import plan_tasks

    job = JobConfig.from_dict(
        {"name": f"bench_hygiene_{label}", "output": str(output), "inputs": [spec], "steps": steps}
    )
    tasks, errors = plan_tasks(job.inputs, job.tasks.files_per_task, job.tasks.rows_per_task)
    if errors:
        raise SystemExit(f"input failed: {errors}")
    start = cpu_seconds()
    runner = TaskRunner("documents", job.to_dict(), str(output), len(tasks))
    setup = cpu_seconds() - start
    per_step = {step.name: 0.0 for step in runner.steps}
    for step in runner.steps:
        apply = step.apply

        def timed(doc, apply=apply, name=step.name):
            begin = cpu_seconds() if name == "ast" else time.process_time()
            try:
                return apply(doc)
            finally:
                per_step[name] += (cpu_seconds() if name == "ast" else time.process_time()) - begin

        step.apply = timed
    start = cpu_seconds()
    summaries = [runner.run_documents(task) for task in tasks]
    total = cpu_seconds() - start
    for step in runner.steps:
        if hasattr(step, "close"):
            step.close()
    steps_in = {name: sum(s["steps"][name]["bytes_in"] for s in summaries) for name in per_step}
    extra = {}
    for summary in summaries:
        for name, stats in summary["steps"].items():
            for key, value in stats.get("extra", {}).items():
                extra[f"{name}/{key}"] = extra.get(f"{name}/{key}", 0) + value
    megabytes = steps_in[runner.steps[0].name] / 1e6
    return {
        "setup": setup,
        "total": total,
        "per_step": per_step,
        "bytes_in": steps_in,
        "extra": extra,
        "mb": megabytes,
    }


def job_documents_ratio(megabytes: float) -> None:
    baseline = yaml.safe_load((REPO_ROOT / "jobs" / "data" / "clean_dedup.yaml").read_text())["steps"]
    with tempfile.TemporaryDirectory(prefix="bench_hygiene_") as scratch:
        folder = Path(scratch) / "input"
        folder.mkdir()
        spec, planted = job_input(megabytes, folder)
        runs = {}
        for label, steps in (("without", baseline), ("with", hygiene_job_steps(baseline))):
            runs[label] = run_documents_stage(label, steps, spec, Path(scratch) / label)
    removed = sum(v for k, v in runs["with"]["extra"].items() if k.startswith("decontamination/"))
    if removed < planted:
        raise SystemExit(f"correctness check failed: {removed} of {planted} planted benchmark copies removed")
    without, with_steps = runs["without"], runs["with"]
    mb = without["mb"]
    print(f"\nClean job documents stage in this process on {mb:.1f} MB ({planted} planted benchmark copies, "
          "all removed): steps of jobs/data/clean_dedup.yaml vs every hygiene step added")  # fmt: skip
    print("| step (in the chain) | MB in | CPU s | MB/s per core |")
    print("|---|---:|---:|---:|")
    for name, seconds in with_steps["per_step"].items():
        step_mb = with_steps["bytes_in"][name] / 1e6
        print(f"| {name} | {step_mb:.1f} | {seconds:.2f} | {step_mb / max(seconds, 1e-9):.1f} |")
    print("| job | MB | CPU s (+ setup) | MB/s per core |")
    print("|---|---:|---:|---:|")
    for label, run in runs.items():
        cpu = f"{run['total']:.2f} (+ {run['setup']:.2f})"
        print(f"| {label} hygiene steps | {mb:.1f} | {cpu} | {mb / run['total']:.2f} |")
    print(f"throughput with ÷ without: {without['total'] / with_steps['total']:.2f}")


def job_ratio(megabytes: float) -> None:
    from loopcoder.pipelines.clean.job import JobConfig
    from loopcoder.pipelines.clean.runner import run_job

    site = Path(sysconfig.get_paths()["purelib"])
    inputs = [{"kind": "directory", "path": str(site / "transformers"), "repo": "pypi/transformers",
               "include": ["*.py"], "license": "Apache-2.0"}]  # fmt: skip
    files = sorted((site / "transformers").rglob("*.py"))
    total, include = 0, []
    for path in files:
        total += path.stat().st_size
        include.append(str(path.relative_to(site / "transformers")))
        if total >= megabytes * 1e6:
            break
    inputs[0]["include"] = include
    import ray

    # one local Ray for both runs (run_job reuses it), so both pay the same start-up
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    results: dict[str, list[float]] = {"without": [], "with": []}
    megabytes = 0.0
    # alternated and repeated: the first run also pays for warming the file cache and worker imports
    for repeat in range(2):
        for label, extra in (("without", []), ("with", ["secrets", "language_id", "licence"])):
            output = Path(f"/tmp/bench_hygiene_{label}_{repeat}")
            shutil.rmtree(output, ignore_errors=True)
            job = JobConfig.from_dict(
                {
                    "name": f"bench_hygiene_{label}",
                    "output": str(output),
                    "inputs": inputs,
                    "steps": ["decode", *extra, "quality"],
                    "tasks": {"files_per_task": 200},
                }
            )
            stats = run_job(job, output)
            megabytes = stats["steps"][0]["bytes_in"] / 1e6
            results[label].append(stats["timings_seconds"]["documents"])
            shutil.rmtree(output, ignore_errors=True)
    ray.shutdown()
    without, with_steps = min(results["without"]), min(results["with"])
    print(f"clean job documents stage on {megabytes:.1f} MB, best of 2 alternated runs: {without:.1f} s without, "
          f"{with_steps:.1f} s with the three steps; throughput with / without = {without / with_steps:.2f} "
          f"(runs: without {results['without']}, with {results['with']})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=3)
    parser.add_argument("--job-mb", type=float, default=3)
    parser.add_argument("--baseline-mb", type=float, default=0.2)
    parser.add_argument("--ray-job-mb", type=float, default=0)
    args = parser.parse_args()
    files = corpus(args.mb)
    check_planted(files)
    print(f"{len(files):,} files from installed packages; load average {os.getloadavg()[0]:.1f}")
    print("| step | MB | MB/s per core |")
    print("|---|---:|---:|")
    for name, step, language in (
        ("secrets (defaults)", SecretsRedactor(), "Python"),
        ("secrets, emails and IPs only", SecretsRedactor(keys=False, passwords=False), "Python"),
        ("licence (column + SPDX header)", LicenceFilter(), "Python"),
        ("language_id, code comments", LanguageIdentifier(), "Python"),
        ("language_id, whole file as text", LanguageIdentifier(), "Text"),
        ("classify, the shipped code_rules classifier, score only", QualityClassify(**CLASSIFIER), "Python"),
        ("decontamination, humaneval", Decontaminator(), "Python"),
        (
            f"decontamination, all {len(BUILTIN_BENCHMARKS)} built-ins",
            Decontaminator(benchmarks=list(BUILTIN_BENCHMARKS)),
            "Python",
        ),
    ):
        megabytes, speed = per_core(step, files, language)
        print(f"| {name} | {megabytes:.1f} | {speed:.2f} |")
    baseline = detect_secrets_baseline(files, args.baseline_mb)
    print(f"| detect-secrets line by line, same plugins (first {args.baseline_mb} MB) | {args.baseline_mb} | "
          f"{baseline:.2f} |")  # fmt: skip
    cld2_accuracy()
    if args.job_mb:
        job_documents_ratio(args.job_mb)
    if args.ray_job_mb:
        job_ratio(args.ray_job_mb)


if __name__ == "__main__":
    main()
