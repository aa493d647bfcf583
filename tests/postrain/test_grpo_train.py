"""GRPO end to end on CPU: a tiny looped model learns the sandbox-scored print-a-number task.

The model is first warm-started with plain supervised steps on answers that print a random digit 0-3 (it learns
the format, not the task: its pass rate starts near 1/4); GRPO must then raise the pass rate.
"""

import json
import math
import time

import pytest
import torch
from safetensors.torch import load_file

from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
from loopcoder.postrain.grpo import GRPOConfig
from loopcoder.postrain.grpo.data import load_problems, render_prompt
from loopcoder.postrain.grpo.loss import group_advantages
from loopcoder.postrain.grpo.rollout import encode_prompts
from loopcoder.postrain.grpo.synthetic import supervised_warm_start
from loopcoder.postrain.grpo.trainer import GRPOTrainer
from loopcoder.postrain.sft.sample_data import TINY_MODEL
from loopcoder.schemas.tokens import load_tokenizer

TINY = dict(TINY_MODEL, max_position_embeddings=512)


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    model = LoopCoderForCausalLM(LoopCoderConfig(**TINY))
    losses = supervised_warm_start(
        model, tokenizer, steps=100, learning_rate=5e-3, correct_fraction=0.0, count=4, batch_size=16
    )
    assert losses[-1] < losses[0] / 10
    out = tmp_path_factory.mktemp("warm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_config(model_dir, out_dir, **overrides) -> GRPOConfig:
    fields = dict(
        model_name_or_path=str(model_dir),
        problems="synthetic:print_number4",
        prompt_suffix="",
        prompts_per_step=4,
        num_generations=8,
        max_completion_length=14,
        steps_per_generation=2,
        micro_batch_size=16,
        learning_rate=1e-3,
        max_tests=1,
        max_steps=3,
        output_dir=str(out_dir),
        resume="never",
        save_interval=0,
        save_final_model=False,
        progress_bar=False,
        report_to=[],
        cpu_threads=1,
    )
    fields.update(overrides)
    return GRPOConfig(**fields)


def test_reward_rises_and_clip_high_acts(warm_model, tmp_path):
    config = tiny_config(
        warm_model, tmp_path, problems="synthetic:print_two", max_steps=10, steps_per_generation=4, micro_batch_size=8
    )
    result = GRPOTrainer(config).train()
    rewards = result.metric("reward_mean")
    print("reward_mean per step:", [round(r, 3) for r in rewards])
    print("clip_ratio/high per step:", [round(r, 4) for r in result.metric("clip_ratio/high")])
    print("clip_ratio/low per step:", [round(r, 4) for r in result.metric("clip_ratio/low")])
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2, (first, last)
    assert max(result.metric("clip_ratio/high")) > 0
    for key in (
        "entropy",
        "grad_norm",
        "time/generation_s",
        "time/reward_s",
        "time/update_s",
        "frac_reward_zero_std",
        "pass_rate_hist/1",
        "completion_length/mean",
    ):
        assert key in result.history[-1]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 10 and "reward_mean" in json.loads(lines[-1])


def test_one_optimizer_step_per_generation_never_clips(warm_model, tmp_path):
    config = tiny_config(
        warm_model, tmp_path, steps_per_generation=1, micro_batch_size=32, max_steps=2, learning_rate=3e-2
    )
    result = GRPOTrainer(config).train()
    assert result.metric("clip_ratio/total") == [0.0, 0.0]
    assert result.metric("ratio_abs_dev") == [0.0, 0.0]


def test_beta_zero_creates_no_reference_model(warm_model, tmp_path):
    trainer = GRPOTrainer(tiny_config(warm_model, tmp_path / "a", max_steps=1))
    assert trainer.ref_model is None
    with_kl = GRPOTrainer(tiny_config(warm_model, tmp_path / "b", max_steps=1, beta=0.05))
    assert with_kl.ref_model is not None and not any(p.requires_grad for p in with_kl.ref_model.parameters())
    assert "kl" in with_kl.train().history[-1]


def test_hanging_and_crashing_rewards_cost_their_timeout_and_score_zero(warm_model, tmp_path):
    calls = {"n": 0}

    def flaky(completions, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(3600)  # hangs: abandoned after reward_timeout_seconds
        if calls["n"] == 2:
            raise RuntimeError("sandbox worker killed")
        return [1.0 if "print(" in c else 0.0 for c in completions]

    config = tiny_config(warm_model, tmp_path, max_steps=3, reward_timeout_seconds=2.0, infra_error_reward="zero")
    trainer = GRPOTrainer(config, reward_fns=[flaky])
    started = time.monotonic()
    result = trainer.train()
    assert time.monotonic() - started < 60
    infra = result.metric("reward_infra_errors")
    assert infra == [32.0, 32.0, 0.0]
    # the failed calls' completions scored 0, the run went on and the third step was scored normally
    assert result.metric("reward_mean")[:2] == [0.0, 0.0]
    assert result.metric("reward_mean")[2] > 0.5


def test_exact_resume(warm_model, tmp_path):
    straight = tiny_config(warm_model, tmp_path / "straight", max_steps=2, save_final_model=True)
    GRPOTrainer(straight).train()
    first = tiny_config(warm_model, tmp_path / "resumed", max_steps=1, save_final_model=False)
    GRPOTrainer(first).train()
    second = tiny_config(warm_model, tmp_path / "resumed", max_steps=2, save_final_model=True, resume="auto")
    trainer = GRPOTrainer(second)
    trainer.train()
    assert trainer.resumed_from is not None and trainer.resumed_from.name == "step_00000001"
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_dynamic_sampling_and_overlong_handling(warm_model, tmp_path):
    config = tiny_config(
        warm_model,
        tmp_path,
        max_steps=1,
        dynamic_sampling=True,
        max_generation_rounds=3,
        overlong_buffer=4,
        mask_truncated_completions=True,
    )
    trainer = GRPOTrainer(config)
    collected = trainer.collect()
    samples = collected.samples
    assert len(samples) == 32 and 1 <= collected.rounds <= 3
    groups = [samples[i : i + 8] for i in range(0, 32, 8)]
    kept = len(groups) - collected.filled_with_dropped
    # groups kept by dynamic sampling have different rewards; fillers (if any) come last
    for group in groups[:kept]:
        assert len({s.reward for s in group}) > 1
    for s in samples:
        # a well-formed answer is 11 tokens: 1 token into the buffer of 4 (L_max 14) costs 0.25
        base = 1.0 if "print(2)" in s.text and s.problem["id"].endswith("/2") else None
        if base is not None and len(s.completion) == 11:
            assert s.reward == pytest.approx(0.75)
    mask = trainer.loss_mask(samples)
    for row, s in enumerate(samples):
        assert mask[row].sum().item() == (0 if s.truncated else len(s.completion))


def prints_anything(completions, **kwargs):
    return [1.0 if "print(" in c else 0.0 for c in completions]


def test_old_log_probs_are_those_of_the_temperature_scaled_sampler(warm_model, tmp_path):
    config = tiny_config(warm_model, tmp_path, temperature=0.7, max_steps=1, prompts_per_step=2, micro_batch_size=8)
    trainer = GRPOTrainer(config, reward_fns=[prints_anything])
    torch.manual_seed(7)
    collected = trainer.collect()
    samples = collected.samples
    trainer.rollout_log_probs(samples)
    # the sampler itself, from the same seed: its processed scores are the distribution it drew each token from
    from transformers import GenerationConfig

    problems = [samples[g].problem for g in range(0, len(samples), config.num_generations)]
    prompts = [render_prompt(trainer.tokenizer, p, config.system_prompt, config.prompt_suffix) for p in problems]
    ids, mask = encode_prompts(trainer.tokenizer, prompts, config.max_prompt_length)
    ids, mask = ids.repeat_interleave(config.num_generations, 0), mask.repeat_interleave(config.num_generations, 0)
    model = trainer.engine.module.eval()
    generation = GenerationConfig(
        do_sample=True, temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=config.max_completion_length,
        eos_token_id=trainer.tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=trainer.pad, use_cache=True,
    )  # fmt: skip
    torch.manual_seed(7)
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=mask, generation_config=generation, output_scores=True, return_dict_in_generate=True
        )
    compared, farthest = 0, 0.0
    for row, s in enumerate(samples):
        assert out.sequences[row, ids.shape[1] : ids.shape[1] + len(s.completion)].tolist() == s.completion
        steps = torch.stack([out.scores[t][row] for t in range(len(s.completion))])
        token = torch.tensor(s.completion)[:, None]
        sampler = torch.log_softmax(steps.float(), -1).gather(-1, token).squeeze(-1)
        at_temperature_one = torch.log_softmax(steps.float() * 0.7, -1).gather(-1, token).squeeze(-1)
        assert torch.allclose(s.old_logp, sampler, atol=2e-4), (s.old_logp - sampler).abs().max()
        farthest = max(farthest, float((s.old_logp - at_temperature_one).abs().max()))
        compared += len(s.completion)
    # the temperature-1 log-probabilities are far outside the tolerance: the comparison tells the two apart
    assert compared > 50 and farthest > 20 * 2e-4


def test_ratio_is_one_without_an_update_at_temperature_07(warm_model, tmp_path):
    # new and old log-probabilities come from the same temperature-scaled distribution: with learning rate 0 the
    # ratio is 1 on every token of every mini-batch, so nothing is clipped
    config = tiny_config(warm_model, tmp_path, temperature=0.7, max_steps=1, learning_rate=0.0)
    record = GRPOTrainer(config, reward_fns=[prints_anything]).train().history[-1]
    assert record["ratio_abs_dev"] < 1e-4 and record["clip_ratio/total"] == 0.0


def test_infra_errors_are_left_out_of_their_group_by_default(warm_model, tmp_path):
    def first_of_each_group_unscored(completions, id, **kwargs):
        values = prints_anything(completions)
        return [None if i % 8 == 0 else v for i, v in enumerate(values)]

    trainer = GRPOTrainer(tiny_config(warm_model, tmp_path / "a"), reward_fns=[first_of_each_group_unscored])
    assert trainer.config.infra_error_reward == "exclude"
    collected = trainer.collect()
    samples = collected.samples
    trainer.assign_advantages(samples)
    mask = trainer.loss_mask(samples)
    assert collected.infra_errors == 4
    for g in range(4):
        group = samples[g * 8 : (g + 1) * 8]
        assert group[0].infra_error and math.isnan(group[0].reward) and group[0].advantage == 0.0
        assert mask[g * 8].sum() == 0 and all(mask[g * 8 + i].sum() == len(group[i].completion) for i in range(1, 8))
        rest = torch.tensor([s.reward for s in group[1:]])
        expected = group_advantages(rest, 7).tolist()
        assert [s.advantage for s in group[1:]] == pytest.approx(expected, abs=1e-6)

    zero = GRPOTrainer(
        tiny_config(warm_model, tmp_path / "b", infra_error_reward="zero"), reward_fns=[first_of_each_group_unscored]
    )
    samples = zero.collect().samples
    assert all(samples[g * 8].reward == 0.0 and samples[g * 8].infra_error for g in range(4))
    assert all(row.sum() > 0 for row in zero.loss_mask(samples))


def test_held_out_pass_at_1_and_sandbox_verdicts_are_logged(warm_model, tmp_path):
    config = tiny_config(
        warm_model, tmp_path, problems="synthetic:print_number", heldout_fraction=0.3, max_steps=3, eval_interval=2
    )
    trainer = GRPOTrainer(config)
    held_out = {p["id"] for p in trainer.evaluator.problems}
    assert held_out and not held_out & {p["id"] for p in trainer.stream.problems}
    result = trainer.train()
    evaluations = [r for r in result.history if "eval/pass@1" in r]
    # before step 0, before step 2 (eval_interval) and the final policy (logged at step max_steps)
    assert [r["step"] for r in evaluations] == [0, 2, 3]
    for r in evaluations:
        assert 0.0 <= r["eval/pass@1"] <= 1.0 and r["eval/problems"] == len(held_out) and r["eval/unscored"] == 0
    steps = [r for r in result.history if "reward_mean" in r]
    for r in steps:
        # every completion that has a code block runs its test
        runs = sum(r[f"sandbox/{v}"] for v in ("passed", "failed", "runtime_error", "timeout", "sandbox_error"))
        assert runs > 0 and r["sandbox/sandbox_error"] == 0
        assert r["sandbox/passed"] == pytest.approx(r["reward_mean"] * 32)  # one test per problem (max_tests 1)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "eval/pass@1" in line] == [0, 2, 3]


def test_trl_grpo_trainer_trains_the_looped_model_with_the_project_rewards(warm_model, tmp_path):
    """TRL's own GRPOTrainer, two optimizer steps, rewards by TRL's contract: the sandboxed pass rate and the
    format reward get the prompts, the completions and the problem columns as keyword arguments."""
    from loopcoder.postrain.grpo.trl_compat import problems_dataset, trl_grpo_trainer

    config = tiny_config(
        warm_model,
        tmp_path,
        reward_funcs=["pass_rate", "format"],
        max_steps=1,
        prompts_per_step=2,
        steps_per_generation=2,
        micro_batch_size=8,
        max_completion_length=14,
        temperature=1.0,
        beta=0.0,
        learning_rate=1e-3,
    )
    dataset = problems_dataset(load_problems(config.problems), prompt_suffix="")
    assert dataset.column_names == ["prompt", "tests", "language", "time_limit_seconds", "memory_limit_mb", "id"]
    trainer = trl_grpo_trainer(config, use_cpu=True, dataloader_num_workers=0)
    assert trainer.args.max_steps == 2 and trainer.args.gradient_accumulation_steps == 1
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2 and len([r for r in trainer.state.log_history if "loss" in r]) == 2
    # one generation batch for both optimizer steps; the warm model prints a random digit: some completions pass,
    # some fail, so the groups carry a gradient
    (generation,) = [r for r in trainer.state.log_history if "rewards/pass_rate/mean" in r]
    assert 0.0 < generation["rewards/pass_rate/mean"] < 1.0 and generation["frac_reward_zero_std"] < 1.0
    assert generation["rewards/format_reward/mean"] > 0.5
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
