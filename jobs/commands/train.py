"""`loopcoder train` commands: sft (also looped continued pre-training with `mode=pretrain`), prepare-sample.

    loopcoder train prepare-sample --corpus data/sample --out data/sample_packed
    loopcoder train sft --config jobs/sft/sample_tiny.yaml [name=value ...]
    torchrun --nproc_per_node 2 -m loopcoder.jobs.cli train sft --config jobs/sft/sample_tiny.yaml zero_stage=2
    deepspeed --num_gpus 8 --hostfile jobs/launch/hostfile.example $(which loopcoder) train sft --config ...

Overrides are `name=value` pairs of `SFTConfig` fields (values read as YAML). docs/training.md
has the launch commands and every knob.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .train_grpo import register_grpo


def register(commands: argparse._SubParsersAction) -> None:
    """Adds this group's commands; the group prints its help when none is given."""
    sft = commands.add_parser(
        "sft",
        help="SFT or looped continued pre-training on packed shards (DeepSpeed, 1..N processes)",
        description="Train a looped model on packed_sequence shards with DeepSpeed. Launch under torchrun or the "
        "deepspeed launcher for several processes. Overrides: name=value pairs of SFTConfig fields.",
    )
    sft.add_argument("--config", type=Path, help="YAML config, e.g. jobs/sft/sample_tiny.yaml")
    sft.add_argument("overrides", nargs="*", metavar="name=value", help="config overrides, e.g. max_steps=50")
    # the deepspeed launcher appends --local_rank=N (LOCAL_RANK is also in the environment)
    sft.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sft.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    sft.set_defaults(handler=_sft)

    prepare = commands.add_parser(
        "prepare-sample",
        help="tokenise and pack the sample corpus into the shard sets of jobs/sft/sample_tiny.yaml",
        description="Build packed_sequence shard sets (pretrain, sft_easy/medium/hard, eval) from a sample corpus.",
    )
    prepare.add_argument("--corpus", type=Path, default=Path("data/sample"), help="sample corpus directory")
    prepare.add_argument("--out", type=Path, default=Path("data/sample_packed"), help="output directory")
    prepare.add_argument("--seq-len", type=int, default=256, help="tokens per packed row")
    prepare.add_argument("--max-files", type=int, default=600, help="source files read from the corpus")
    prepare.set_defaults(handler=_prepare)

    register_grpo(commands)


def _sft(args: argparse.Namespace) -> int:
    from loopcoder.postrain.sft import SFTConfig

    config = SFTConfig.from_yaml(args.config, args.overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    from loopcoder.postrain.sft.trainer import train

    result = train(config)
    if result.losses:
        print(
            f"trained steps {result.steps - len(result.losses)}..{result.steps - 1}: "
            f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; output in {result.output_dir}"
        )
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from loopcoder.postrain.sft.sample_data import prepare_sample

    manifest = prepare_sample(args.corpus, args.out, seq_len=args.seq_len, max_files=args.max_files)
    for name, info in manifest["sets"].items():
        print(f"{name:<11} {info['rows']:>5} rows {info['documents']:>5} documents {info['tokens']:>8} tokens")
    print(f"wrote {args.out}")
    return 0
