"""`loopcoder train grpo`: GRPO (no KL, clip-higher, token-level loss) with sandboxed pass-rate rewards.

    loopcoder train grpo --config jobs/rl/print_number_tiny.yaml [name=value ...]
    torchrun --nproc_per_node 2 -m loopcoder.jobs.cli train grpo --config jobs/rl/print_number_tiny.yaml zero_stage=2
    deepspeed --num_gpus 8 --hostfile jobs/launch/hostfile.example $(which loopcoder) train grpo \
        --config jobs/rl/code_contests.yaml

Overrides are `name=value` pairs of `GRPOConfig` fields (values read as YAML). docs/grpo.md has the objective,
the launch commands and every knob. The group module adds this command with `register_grpo(commands)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register_grpo(commands: argparse._SubParsersAction) -> None:
    """Adds the `grpo` command to a `loopcoder train` sub-parser set."""
    grpo = commands.add_parser(
        "grpo",
        help="GRPO on code problems with sandboxed pass-rate rewards (DeepSpeed, 1..N processes)",
        description="GRPO with DAPO clip-higher and token-level loss, no KL, on the looped model. Launch under "
        "torchrun or the deepspeed launcher for several processes. Overrides: name=value pairs of GRPOConfig fields.",
    )
    grpo.add_argument("--config", type=Path, help="YAML config, e.g. jobs/rl/print_number_tiny.yaml")
    grpo.add_argument("overrides", nargs="*", metavar="name=value", help="config overrides, e.g. max_steps=5")
    # the deepspeed launcher appends --local_rank=N (LOCAL_RANK is also in the environment)
    grpo.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    grpo.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    grpo.set_defaults(handler=_grpo)


def _grpo(args: argparse.Namespace) -> int:
    from loopcoder.postrain.grpo import GRPOConfig

    config = GRPOConfig.from_yaml(args.config, args.overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    from loopcoder.postrain.grpo.trainer import GRPOTrainer

    trainer = GRPOTrainer(config)
    result = trainer.train()
    rewards = result.metric("reward_mean")
    if trainer.rank == 0 and rewards:
        print(
            f"GRPO steps {result.steps - len(rewards)}..{result.steps - 1}: reward_mean {rewards[0]:.3f} -> "
            f"{rewards[-1]:.3f}; output in {result.output_dir}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the `grpo` command (`python -m loopcoder.jobs.commands.train_grpo grpo ...`)."""
    parser = argparse.ArgumentParser(prog="loopcoder train", description="GRPO training")
    register_grpo(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
