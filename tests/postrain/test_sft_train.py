"""The SFT trainer in one CPU process: learning happens, resume is exact, failures are reported with their data."""

import json
import shutil

import pytest
import torch

from loopcoder.model import LoopCoderForCausalLM
from loopcoder.postrain.runtime.checkpoint import complete_checkpoints
from loopcoder.postrain.sft.data import ShardError
from loopcoder.postrain.sft.sample_data import build_stdlib_shards, tiny_run_config
from loopcoder.postrain.sft.silent_errors import SilentDataError
from loopcoder.postrain.sft.trainer import NonFiniteLossError, SFTTrainer


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return build_stdlib_shards(tmp_path_factory.getbasetemp() / "sft_stdlib", max_files=200, seq_len=128)


def test_train_loss_falls_and_every_parameter_changes(shards, tmp_path):
    config = tiny_run_config(
        shards,
        tmp_path / "run",
        curriculum=[
            {"name": "easy", "steps": 40, "mixture": {"sft_easy": 1.0}},
            {"name": "medium", "steps": 40, "mixture": {"sft_easy": 0.3, "sft_medium": 0.7}},
            {"name": "hard", "steps": 40, "mixture": {"sft_medium": 0.3, "sft_hard": 0.7}},
        ],
        global_batch_size=2,
        warmup_steps=10,
        anneal_steps=30,
        log_interval=10,
        save_interval=50,
        eval_datasets=["eval"],
        eval_interval=60,
        recompute_interval=30,
        tokenizer="bundled",
    )
    trainer = SFTTrainer(config)
    initial = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}
    result = trainer.train()
    assert len(result.losses) == 120 and all(torch.isfinite(torch.tensor(result.losses)))
    start, end = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    print(f"loss start {start:.3f} end {end:.3f}")
    assert end < start - 2.0, (start, end)
    unchanged = [n for n, p in trainer.engine.module.named_parameters() if torch.equal(p, initial[n])]
    assert not unchanged
    assert trainer.detector.checks >= 4  # recomputation ran (no false alarm)

    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert {"lr", "grad_norm", "tokens_per_s", "loss/sft_file", "gate_mean/loop1"} <= set(steps[0])
    assert any("loss/pretrain_file" in r for r in steps)  # replay rows carry their own category
    assert [r["phase"] for r in steps if r["step"] in (0, 40, 80, 119)] == ["easy", "medium", "hard", "hard"]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0] + 1e-9
    assert [p.name for p in complete_checkpoints(tmp_path / "run/checkpoints")] == ["step_00000100", "step_00000120"]
    assert "gradient_accumulation_steps: 2" in (tmp_path / "run/checkpoints/step_00000120/config.yaml").read_text()

    final = LoopCoderForCausalLM.from_pretrained(tmp_path / "run/final")
    ids = torch.randint(0, 8192, (1, 16))
    with torch.no_grad():
        expected = trainer.engine.module(input_ids=ids, use_cache=False).logits
        assert torch.equal(final(input_ids=ids, use_cache=False).logits, expected)
    assert (tmp_path / "run/final/tokenizer.json").exists()


class Stop(Exception):
    pass


def test_resume_continues_bit_for_bit(shards, tmp_path):
    def run(out, callbacks=(), **extra):
        config = tiny_run_config(shards, out, save_interval=4, resume="auto", recompute_interval=0, **extra)
        return SFTTrainer(config, list(callbacks)).train()

    whole = run(tmp_path / "whole")

    def kill_at_step_6(trainer, step):
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "killed", [kill_at_step_6])
    checkpoints = tmp_path / "killed/checkpoints"
    assert [p.name for p in complete_checkpoints(checkpoints)] == ["step_00000004"]
    # a half-written checkpoint (a crash during a save) is never picked up
    shutil.copytree(checkpoints / "step_00000004", checkpoints / ".partial-step_00000008")
    (checkpoints / ".partial-step_00000008/trainer_state.json").write_text('{"step": 8')
    resumed = run(tmp_path / "killed")
    assert resumed.steps == 12 and len(resumed.losses) == 8
    print("resume max |diff|", max(abs(a - b) for a, b in zip(resumed.losses, whole.losses[4:], strict=True)))
    assert resumed.losses == whole.losses[4:]
    assert not (checkpoints / ".partial-step_00000008").exists()


def test_non_finite_loss_stops_with_its_data_position(shards, tmp_path):
    def poison(trainer, step):
        if step == 2:
            with torch.no_grad():
                trainer.engine.module.lm_head.weight[0, 0] = float("nan")

    trainer = SFTTrainer(tiny_run_config(shards, tmp_path / "nan"), [poison])
    with pytest.raises(NonFiniteLossError, match=r"step 2 \(micro-batch 0.*\.parquet#\d+"):
        trainer.train()


def test_recompute_check_catches_a_flaky_worker(shards, tmp_path):
    def flaky(module, inputs, output):
        # the worker's arithmetic goes wrong on the second evaluation only
        if not torch.is_grad_enabled():
            return output * 1.001

    def break_at_step_2(trainer, step):
        if step == 2:
            trainer.engine.module.lm_head.register_forward_hook(flaky)

    trainer = SFTTrainer(
        tiny_run_config(shards, tmp_path / "flaky", recompute_interval=3, max_steps=6), [break_at_step_2]
    )
    with pytest.raises(
        SilentDataError, match=r"step 3: deterministic recomputation .* rank\(s\) \[0\]: tensor 'loss'"
    ):
        trainer.train()
    assert trainer.detector.checks == 2  # step 0 passed


def test_missing_shard_set_fails_before_training(shards, tmp_path):
    config = tiny_run_config(shards, tmp_path / "bad")
    config.datasets["sft_hard"] = str(tmp_path / "nowhere")
    with pytest.raises(ShardError, match="sft_hard.*does not exist"):
        SFTTrainer(config)


def test_gradient_checkpointing_and_bptt_scale(shards, tmp_path):
    base = SFTTrainer(tiny_run_config(shards, tmp_path / "a", max_steps=3, recompute_interval=0)).train()
    checkpointed = SFTTrainer(
        tiny_run_config(shards, tmp_path / "b", max_steps=3, recompute_interval=0, gradient_checkpointing=True)
    ).train()
    assert checkpointed.losses == pytest.approx(base.losses, rel=1e-6)
    scaled = SFTTrainer(
        tiny_run_config(shards, tmp_path / "c", max_steps=3, recompute_interval=0, loop_grad_scale=0.0)
    )
    assert scaled.model_config.loop_grad_scale == 0.0
    losses = scaled.train().losses
    assert losses[0] == base.losses[0] and losses[1:] != base.losses[1:]


def test_final_model_in_the_released_format(shards, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = SFTTrainer(tiny_run_config(shards, tmp_path / "rel", max_steps=1, released_format=True))
    trainer.train()
    config = json.loads((tmp_path / "rel/final/config.json").read_text())
    assert config["model_type"] == "iquestpltcoder" and config["plt_num_loops"] == 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "rel/final")
    assert type(model).__name__ == "IQuestPLTCoderForCausalLM"
    ids = torch.randint(0, 8192, (1, 12))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, trainer.engine.module(input_ids=ids, use_cache=False).logits)
