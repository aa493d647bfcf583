"""`loopcoder train` commands: sft (also looped continued pre-training with `mode=pretrain`), grpo.

    loopcoder train sft --config jobs/sft/sample_tiny.yaml [name=value ...]
    loopcoder train grpo --config jobs/rl/mined_tiny.yaml [name=value ...]
    torchrun --nproc_per_node 2 -m loopcoder.jobs.cli train sft --config jobs/sft/sample_tiny.yaml zero_stage=2
    deepspeed --num_gpus 8 --hostfile jobs/launch/hostfile.example $(which loopcoder) train grpo --config ...

Overrides are `name=value` pairs of the command's config fields (`SFTConfig`, `GRPOConfig`; values read as
YAML). The deepspeed launcher's `--local_rank` is taken by the top-level parser. docs/training.md and
docs/grpo.md have the launch commands and every knob.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Adds this group's commands; the group prints its help when none is given."""
    _trainer_command(
        commands,
        "sft",
        "SFT or looped continued pre-training on packed shards (DeepSpeed, 1..N processes)",
        "Train a looped model on packed_sequence shards with DeepSpeed. Launch under torchrun or the deepspeed "
        "launcher for several processes. Overrides: name=value pairs of SFTConfig fields.",
        "jobs/sft/sample_tiny.yaml",
        _load_sft_config,
        _run_sft,
    )
    _trainer_command(
        commands,
        "grpo",
        "GRPO on code problems with sandboxed pass-rate rewards (DeepSpeed, 1..N processes)",
        "GRPO with DAPO clip-higher and token-level loss, no KL, on the looped model. Launch under torchrun or the "
        "deepspeed launcher for several processes. Overrides: name=value pairs of GRPOConfig fields.",
        "jobs/rl/mined_tiny.yaml",
        _load_grpo_config,
        _run_grpo,
    )


def _trainer_command(
    commands: argparse._SubParsersAction,
    name: str,
    help_text: str,
    description: str,
    example: str,
    load_config: Callable[[Path | None, list[str]], object],
    run: Callable[[object], int],
) -> None:
    """A training command: `--config`, `name=value` overrides and `--print-config`, then `run(config)`."""
    parser = commands.add_parser(name, help=help_text, description=description)
    parser.add_argument("--config", type=Path, help=f"YAML config, e.g. {example}")
    parser.add_argument("overrides", nargs="*", metavar="name=value", help="config overrides, e.g. max_steps=5")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    def handler(args: argparse.Namespace) -> int:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(config.to_yaml(), end="")
            return 0
        return run(config)

    parser.set_defaults(handler=handler)


def _load_sft_config(path: Path | None, overrides: list[str]):
    from loopcoder.postrain.sft import SFTConfig

    return SFTConfig.from_yaml(path, overrides)


def _load_grpo_config(path: Path | None, overrides: list[str]):
    from loopcoder.postrain.grpo import GRPOConfig

    return GRPOConfig.from_yaml(path, overrides)


def _run_sft(config) -> int:
    from loopcoder.postrain.sft.trainer import SFTTrainer

    trainer = SFTTrainer(config)
    result = trainer.train()
    if trainer.rank == 0 and result.losses:
        print(
            f"trained steps {result.steps - len(result.losses)}..{result.steps - 1}: "
            f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; output in {result.output_dir}"
        )
    return 0


def _run_grpo(config) -> int:
    from loopcoder.postrain.grpo.trainer import GRPOTrainer

    trainer = GRPOTrainer(config)
    result = trainer.train()
    rewards = result.metric("reward_mean")
    if trainer.rank == 0 and rewards:
        print(
            f"GRPO steps {result.steps - len(rewards)}..{result.steps - 1}: reward_mean {rewards[0]:.3f} -> "
            f"{rewards[-1]:.3f}; output in {result.output_dir}"
        )
    held_out = result.metric("eval/pass@1")
    if trainer.rank == 0 and held_out:
        print(f"held-out pass@1 {held_out[0]:.3f} (before) -> {held_out[-1]:.3f} (after)")
    return 0
