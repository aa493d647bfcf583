"""A toy code-RL task small enough for a tiny model on CPU, scored by the real sandbox.

`print_number`: "Print the number N." for N = 0..9 (`print_number4`: N = 0..3;
`print_two`: only "Print the number 2.", the quickest to learn); the program must print N (two stdio tests, whose stdin
the program may ignore). The reference answer is a fenced block, so the pass-rate reward extracts it as it
would any completion:

    >>> print_number_problems()[3]["prompt"]
    'Print the number 3.'
    >>> print_number_answer(3)
    '```python\\nprint(3)\\n```'
"""

from __future__ import annotations

from collections.abc import Callable


def print_number_answer(number: int) -> str:
    return f"```python\nprint({number})\n```"


def print_number_problems(count: int = 10) -> list[dict]:
    return [
        {
            "id": f"print_number/{n}",
            "prompt": f"Print the number {n}.",
            "language": "python",
            "tests": [
                {"stdin": "", "expected_stdout": f"{n}\n", "assert_code": None},
                {"stdin": "1\n", "expected_stdout": f"{n}\n", "assert_code": None},
            ],
            "time_limit_seconds": 2.0,
            "memory_limit_mb": 512,
            "source": "synthetic/print_number",
        }
        for n in range(count)
    ]


SYNTHETIC_TASKS: dict[str, Callable[[], list[dict]]] = {
    "print_number": print_number_problems,
    "print_number4": lambda: print_number_problems(4),
    "print_two": lambda: [print_number_problems(4)[2]],
}


def supervised_warm_start(
    model,
    tokenizer,
    steps: int = 60,
    learning_rate: float = 3e-3,
    correct_fraction: float = 0.0,
    seed: int = 0,
    batch_size: int = 20,
    count: int = 10,
) -> list[float]:
    """A few plain-torch supervised steps on `print_number` answers, so that rollouts are well-formed programs.

    With `correct_fraction=0` the printed digit is uniformly random (the model learns the format, not the task:
    its pass rate starts near 1/`count` and only RL can raise it); a larger fraction starts it higher. Returns the
    losses.
    """
    import random

    import torch

    from .data import render_prompt

    rng = random.Random(seed)
    problems = print_number_problems(count)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    losses = []
    for _ in range(steps):
        rows, labels = [], []
        for _ in range(batch_size):
            number = rng.randrange(len(problems))
            shown = number if rng.random() < correct_fraction else rng.randrange(count)
            prompt = render_prompt(tokenizer, problems[number], None, "")
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a_ids = tokenizer(print_number_answer(shown) + "<|im_end|>", add_special_tokens=False)["input_ids"]
            rows.append(p_ids + a_ids)
            labels.append([-100] * len(p_ids) + a_ids)
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        target = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=target, use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


__all__ = ["SYNTHETIC_TASKS", "print_number_answer", "print_number_problems", "supervised_warm_start"]
