"""The generation step behind every generative evaluation: a small `Generator` protocol and its HF implementation.

    generator = HFGenerator.from_pretrained("runs/sft/final", num_loops=3)
    generator.generate(["def add(a, b):\\n"], n=2, temperature=0.8, max_new_tokens=64, stop=["\\ndef "])

`HFGenerator` works with any Hugging Face causal LM directory (the looped model registers itself with the
Auto classes): prompts are left-padded into batches, decoded with the model's `generate` and its cache,
and each completion is cut at the first stop sequence. A batch row stops decoding as soon as its decoded
text holds a stop sequence, so single-line FIM middles cost one line of tokens.

The tokenizer is the model directory's own; a directory without one (random `loopcoder model init`
models, SFT checkpoints saved without it) uses the bundled tokenizer when the model's vocabulary holds
its ids.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from loopcoder.schemas.tokens import load_tokenizer

logger = logging.getLogger(__name__)


class Generator(Protocol):
    """Anything that completes prompts: a model, or a stand-in in tests."""

    def generate(
        self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int, stop: Sequence[str]
    ) -> list[list[str]]:
        """`n` completions per prompt (without the prompt), each cut before its first stop sequence."""
        ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (excluding) the earliest occurrence of any stop sequence."""
    cut = len(text)
    for sequence in stop:
        index = text.find(sequence)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


def load_model(model_dir: str | Path, num_loops: int | None = None, dtype: str | None = None):
    """A causal LM from `model_dir` in eval mode; `num_loops` runs a looped model with another loop count.

    The loop count is a config field (`LoopCoderConfig.num_loops`; the released flavours write it back as
    `plt_num_loops` / `loop_num`), so the same weights run 1 ... R + 1 loops. Loops beyond the trained
    count reuse the shared layers and gates; a model trained with one loop has no gates, which are then
    freshly initialised (transformers logs the missing keys).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    import loopcoder.model  # noqa: F401 - registers the looped model types with the Auto classes

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} has no config.json")
    config = AutoConfig.from_pretrained(model_dir)
    if num_loops is not None:
        if not hasattr(config, "num_loops"):
            raise ValueError(f"{model_dir} is not a looped model ({config.model_type}): it has no loop count")
        config.num_loops = int(num_loops)
        config.validate_architecture()
    options = {"config": config}
    if dtype:
        options["dtype"] = getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(model_dir, **options).eval()


class _StopOnText:
    """Per-row stopping criterion: a row is done once its new tokens decode to text holding a stop sequence."""

    def __init__(self, tokenizer, prompt_length: int, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop = list(stop)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stop:
            return done
        for row, ids in enumerate(input_ids[:, self.prompt_length :].tolist()):
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            done[row] = any(sequence in text for sequence in self.stop)
        return done


class HFGenerator:
    """Batched, cached generation with a Hugging Face causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, batch_size: int = 8, seed: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.eos_ids = self._eos_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, num_loops: int | None = None, batch_size: int = 8, seed: int = 0):
        model = load_model(model_dir, num_loops)
        tokenizer = load_tokenizer(model_dir, fallback="bundled", vocab_size=model.config.vocab_size)
        return cls(model, tokenizer, batch_size, seed)

    def _eos_ids(self) -> list[int]:
        ids = []
        configured = self.model.generation_config.eos_token_id or self.model.config.eos_token_id
        ids += configured if isinstance(configured, list) else [configured] if configured is not None else []
        # the ChatML and document ends of the bundled tokenizer end every answer and every FIM middle
        for token in ("<|im_end|>", "<|endoftext|>", "<|file_sep|>", self.tokenizer.eos_token):
            token_id = self.tokenizer.convert_tokens_to_ids(token) if token else None
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id and token_id not in ids:
                ids.append(token_id)
        return [i for i in ids if i is not None and i < self.model.config.vocab_size]

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
        stop: Sequence[str] = (),
    ) -> list[list[str]]:  # fmt: skip
        """`n` completions per prompt; temperature 0 is greedy (computed once and repeated `n` times)."""
        sample = temperature > 0
        copies = n if sample else 1
        torch.manual_seed(self.seed)
        encoded = [self._encode(p, max_new_tokens) for p in prompts]
        # batches of similar lengths: less left padding to run through every decode step
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        outputs: list[list[str]] = [[] for _ in prompts]
        # each batch holds whole prompts: batch_size rows of generated sequences
        prompts_per_batch = max(1, self.batch_size // copies)
        for start in range(0, len(order), prompts_per_batch):
            chunk = order[start : start + prompts_per_batch]
            length = max(len(encoded[i]) for i in chunk)
            input_ids = torch.full((len(chunk), length), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, index in enumerate(chunk):
                ids = encoded[index]
                input_ids[row, length - len(ids) :] = torch.tensor(ids)
                attention_mask[row, length - len(ids) :] = 1
            options = dict(
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                num_return_sequences=copies,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                stopping_criteria=[_StopOnText(self.tokenizer, length, stop)],
            )
            if sample:
                options.update(temperature=temperature, top_p=1.0, top_k=0)
            else:
                options.update(temperature=None, top_p=None, top_k=None)
            device = self.model.device
            generated = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **options
            )
            texts = self.tokenizer.batch_decode(generated[:, length:].tolist(), skip_special_tokens=False)
            for row, index in enumerate(chunk):
                completions = [self._clean(t, stop) for t in texts[row * copies : (row + 1) * copies]]
                outputs[index] = completions * (n if not sample else 1)
        return outputs

    def _encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        """Prompt ids, cut from the left when prompt and completion would exceed the model's positions."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) or [self.pad_id]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and len(ids) + max_new_tokens > limit:
            keep = max(1, limit - max_new_tokens)
            logger.warning(
                "prompt of %d tokens cut to its last %d (max_position_embeddings %d)", len(ids), keep, limit
            )
            ids = ids[-keep:]
        return ids

    def _clean(self, text: str, stop: Sequence[str]) -> str:
        special = [self.tokenizer.convert_ids_to_tokens(i) for i in self.eos_ids] + [self.tokenizer.pad_token or ""]
        return truncate_at_stop(text, [*stop, *[s for s in special if s]])


__all__ = ["Generator", "HFGenerator", "load_model", "truncate_at_stop"]
