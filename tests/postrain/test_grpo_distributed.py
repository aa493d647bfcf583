"""Two CPU processes with ZeRO-2 (torchrun, gloo) run the GRPO task; the `loopcoder train` entry points."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from loopcoder.jobs.cli import build_parser
from loopcoder.postrain.runtime.distributed import free_port

TINY = dict(
    vocab_size=8192,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    num_loops=2,
    loop_window=64,
    max_position_embeddings=256,
)


def write_config(tmp_path: Path, **overrides) -> Path:
    config = dict(
        model_config=TINY,
        problems="synthetic:print_number4",
        prompts_per_step=4,
        num_generations=4,
        max_completion_length=8,
        steps_per_generation=2,
        micro_batch_size=4,
        learning_rate=1e-3,
        max_tests=1,
        max_steps=2,
        output_dir=str(tmp_path / "run"),
        save_interval=1,
        progress_bar=False,
        report_to=[],
        cpu_threads=1,
        sandbox_workers=1,
    )
    config.update(overrides)
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_print_config_of_train_grpo(tmp_path, capsys):
    path = write_config(tmp_path)
    args = build_parser().parse_args(["train", "grpo", "--config", str(path), "epsilon_high=0.3", "--print-config"])
    assert args.handler(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epsilon_high"] == 0.3 and printed["beta"] == 0.0 and printed["loss_type"] == "dapo"
    assert printed["max_steps"] == 2 and printed["learning_rate"] == 1e-3


def test_print_config_of_train_sft_and_the_launcher_rank_flag(capsys):
    # the deepspeed launcher puts --local_rank=N before the group: the top-level parser takes it
    config = Path(__file__).resolve().parents[2] / "jobs" / "sft" / "sample_tiny.yaml"
    argv = ["--local_rank=1", "train", "sft", "--config", str(config), "max_steps=7", "--print-config"]
    args = build_parser().parse_args(argv)
    assert args.local_rank == 1 and args.handler(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["max_steps"] == 7 and printed["mode"] in ("sft", "pretrain")
    for group_command in (["train", "sft"], ["train", "grpo"]):
        try:
            build_parser().parse_args([*group_command, "--local_rank=0"])
        except SystemExit:
            continue
        raise AssertionError(f"{group_command} still takes its own --local_rank")


def test_two_processes_zero2(tmp_path):
    # evaluated on 4 problems split across the 2 ranks, before the first and after the last step
    path = write_config(tmp_path, zero_stage=2, eval_problems="synthetic:print_number4")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "loopcoder.jobs.cli",
        "train",
        "grpo",
        "--config",
        str(path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [0, 1]
    for record in steps:
        assert record["optimizer_steps"] in (2.0, 4.0)
        assert record["loss"] == record["loss"]  # finite, not NaN
        # the verdicts of both ranks: every completion with a code block ran its one test
        assert sum(record[f"sandbox/{v}"] for v in ("passed", "failed", "runtime_error", "timeout")) <= 16
        assert record["sandbox/passed"] == record["reward_mean"] * 16
    assert [r["step"] for r in records if "eval/pass@1" in r] == [0, 2]
    assert all(r["eval/problems"] == 4 and r["eval/unscored"] == 0 for r in records if "eval/pass@1" in r)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["resolved"]["world_size"] == 2 and config["resolved"]["zero_stage"] == 2
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "trainer_state.json").exists()
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert "reward_mean" in done.stdout and "held-out pass@1" in done.stdout
