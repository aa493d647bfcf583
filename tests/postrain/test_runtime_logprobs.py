"""Chunked log-probabilities: equal to the full-logits computation, and the chunk bounds the largest logits tensor."""

import pytest
import torch

from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
from loopcoder.postrain.runtime.logprobs import token_log_probs

TINY = dict(
    vocab_size=512,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_loops=2,
    loop_window=8,
    max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LoopCoderForCausalLM(LoopCoderConfig(**TINY))


def full_scores(model, ids, temperature):
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def largest_head_output(model, run) -> int:
    sizes = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: sizes.append(out.numel()))
    try:
        run()
    finally:
        handle.remove()
    return max(sizes)


@pytest.mark.parametrize("chunk_size", [0, 1, 7, 16, 1000])
def test_chunked_equals_full_logits_and_gradients(model, chunk_size):
    torch.manual_seed(1)
    ids = torch.randint(0, TINY["vocab_size"], (3, 12))
    expected_logp, expected_entropy = full_scores(model, ids, 0.7)
    model.zero_grad()
    expected_logp.sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    scores = token_log_probs(
        model, ids[:, 1:], chunk_size=chunk_size, temperature=0.7, entropy=True, positions=slice(0, -1), input_ids=ids
    )
    assert scores.log_probs.dtype == torch.float32 and scores.log_probs.shape == (3, 11)
    assert torch.allclose(scores.log_probs, expected_logp, atol=1e-6)
    assert torch.allclose(scores.entropy, expected_entropy, atol=1e-6)
    assert not scores.entropy.requires_grad
    scores.log_probs.sum().backward()
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, expected_grads[name], rtol=1e-4, atol=1e-5), name


def test_chunk_size_bounds_the_largest_logits_tensor(model):
    ids = torch.randint(0, TINY["vocab_size"], (4, 32))
    vocab = TINY["vocab_size"]
    whole = largest_head_output(model, lambda: model(input_ids=ids, use_cache=False))
    assert whole == 4 * 32 * vocab

    def chunked_backward():
        scores = token_log_probs(model, ids[:, 1:], chunk_size=10, positions=slice(0, -1), input_ids=ids)
        scores.log_probs.sum().backward()

    # forward and the recomputation in backward alike: never more than 10 tokens' logits
    assert largest_head_output(model, chunked_backward) == 10 * vocab
    with torch.no_grad():
        assert (
            largest_head_output(model, lambda: token_log_probs(model, ids, chunk_size=0, input_ids=ids))
            == 4 * 32 * vocab
        )
