"""pass@1 on held-out problems during RL, through the same sandboxed pass-rate reward as training.

    evaluator = PassAtOneEvaluator(problems, reward_fn, config)
    record = evaluator.evaluate(trainer)       # {"eval/pass@1": ..., "eval/pass_rate": ..., ...}

A completion passes when its pass rate is 1.0 (every selected test of the problem, up to `max_tests`, the same
tests the reward runs). With `eval_temperature: 0` each problem gets one greedy completion, so pass@1 is the share
of problems solved; with a temperature > 0 each gets `eval_samples` sampled completions and pass@1 is the mean
over them (the unbiased estimator of pass@1 from n samples). A completion whose reward is None (sandbox
infrastructure error) is left out and counted in `eval/unscored`.
"""

from __future__ import annotations

from collections.abc import Callable

from loopcoder.postrain.runtime import collectives

from .rollout import sample_problems, score_completions


class PassAtOneEvaluator:
    def __init__(self, problems: list[dict], reward_fn: Callable, config) -> None:
        ordered = sorted(problems, key=lambda p: str(p["id"]))
        if config.eval_max_problems is not None:
            ordered = ordered[: config.eval_max_problems]
        if not ordered:
            raise ValueError("the evaluation problem set is empty (eval_problems / heldout_fraction)")
        self.problems = ordered
        self.reward_fn = reward_fn
        self.config = config

    def evaluate(self, trainer) -> dict[str, float]:
        """Collective: every rank evaluates its share (problems rank, rank + world, ...); returns the totals."""
        config = self.config
        mine = self.problems[trainer.rank :: trainer.world]
        passed = scored = rate_sum = unscored = 0.0
        with trainer.generation_context():
            if mine:
                rollout = sample_problems(
                    trainer.engine.module,
                    trainer.tokenizer,
                    mine,
                    config,
                    config.eval_samples,
                    config.eval_temperature,
                )
        if mine:
            per_completion = [p for p in mine for _ in range(config.eval_samples)]
            rewards, _ = score_completions(
                rollout.texts, per_completion, [self.reward_fn], timeout=config.reward_timeout_seconds
            )
            for value in rewards:
                if value is None:
                    unscored += 1
                    continue
                scored += 1
                rate_sum += value
                passed += float(value == 1.0)
        passed, scored, rate_sum, unscored = collectives.all_reduce([passed, scored, rate_sum, unscored])
        return {
            "eval/pass@1": passed / scored if scored else float("nan"),
            "eval/pass_rate": rate_sum / scored if scored else float("nan"),
            "eval/problems": float(len(self.problems)),
            "eval/unscored": unscored,
        }


__all__ = ["PassAtOneEvaluator"]
