"""Decoding with LoopCoderCache: both schedules reproduce the full forward; generate() works."""

from __future__ import annotations

import pytest
import torch

from loopcoder.model import LoopCoderCache


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("schedule", ["sequential", "parallel"])
@pytest.mark.parametrize("num_loops", [2, 3])
def test_token_by_token_equals_full_forward(variant, schedule, num_loops, lc):
    config = lc.config(variant, num_loops=num_loops) if variant == "v2" else lc.config(variant, loop_num=num_loops)
    model = lc.make_model(config)
    ids = lc.random_ids(2, 15)  # longer than the window (5 keys V2, 4 keys V1)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = LoopCoderCache(config)
        steps = [model(ids[:, :1], past_key_values=cache).logits]
        for t in range(1, ids.shape[1]):
            steps.append(model(ids[:, t : t + 1], past_key_values=cache, decode_schedule=schedule).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("schedule", ["sequential", "parallel"])
@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_chunked_prefill_equals_full_forward(variant, schedule, chunk, lc):
    config = lc.config(variant, clp_chunk_size=chunk)
    model = lc.make_model(config)
    ids = lc.random_ids(2, 17)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = LoopCoderCache(config)
        pieces = [model(ids[:, :4], past_key_values=cache).logits]
        pieces.append(model(ids[:, 4:12], past_key_values=cache, decode_schedule=schedule).logits)
        pieces.append(model(ids[:, 12:], past_key_values=cache, decode_schedule=schedule).logits)
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() < 1e-5


def test_parallel_and_sequential_schedules_are_identical(lc):
    # float64 so that the only difference left is summation order inside batched matmuls
    config = lc.v2_config(num_loops=3)
    model = lc.make_model(config).double()
    ids = lc.random_ids(2, 12)
    with torch.no_grad():
        logits = {}
        for schedule in ("sequential", "parallel"):
            cache = LoopCoderCache(config)
            steps = [model(ids[:, :3], past_key_values=cache).logits]
            steps += [
                model(ids[:, t : t + 1], past_key_values=cache, decode_schedule=schedule).logits for t in range(3, 12)
            ]
            logits[schedule] = torch.cat(steps, dim=1)
    assert (logits["sequential"] - logits["parallel"]).abs().max().item() < 1e-12


def test_cache_holds_a_dense_cache_plus_constant_buffers(lc):
    config = lc.v2_config(num_loops=3)
    model = lc.make_model(config)
    length = 40
    with torch.no_grad():
        out = model(lc.random_ids(1, length), use_cache=True)
    cache = out.past_key_values
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4  # K and V, fp32
    dense = length * per_position
    buffers = (config.num_loops - 1) * config.local_cache_size * per_position
    carries = (config.num_loops - 1) * config.hidden_size * 4
    assert cache.nbytes() == dense + buffers + carries
    for loop in range(1, config.num_loops):
        for layer in range(config.num_hidden_layers):
            assert cache.local[loop][layer][0].shape[-2] == config.local_cache_size


def test_v1_cache_window_is_loop_window_size(lc):
    config = lc.v1_config()
    with torch.no_grad():
        cache = lc.make_model(config)(lc.random_ids(1, 20), use_cache=True).past_key_values
    assert cache.local[1][0][0].shape[-2] == 4  # loop_window_size keys, incl. the current token
    assert all(carry is None for carry in cache.carry)


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("schedule", ["sequential", "parallel"])
def test_greedy_generate_equals_argmax_over_full_forwards(variant, schedule, lc):
    config = lc.config(variant, decode_schedule=schedule)
    model = lc.make_model(config, noise=0.15)
    prompt = lc.random_ids(1, 6)
    generated = model.generate(prompt, max_new_tokens=10, do_sample=False)
    sequence = prompt
    with torch.no_grad():
        for _ in range(10):
            next_token = model(sequence, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
    assert generated.tolist() == sequence.tolist()


@pytest.mark.parametrize("variant", ["v2", "v1"])
def test_left_padded_batch_generate_equals_rows_alone(variant, lc):
    model = lc.make_model(lc.config(variant), noise=0.15)
    first, second = lc.random_ids(1, 9, seed=5), lc.random_ids(1, 4, seed=6)
    batch = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    batch[0], mask[0] = first[0], 1
    batch[1, 5:], mask[1, 5:] = second[0], 1
    together = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    alone_first = model.generate(first, max_new_tokens=8, do_sample=False)
    alone_second = model.generate(second, max_new_tokens=8, do_sample=False)
    assert together[0, 9:].tolist() == alone_first[0, 9:].tolist()
    assert together[1, 9:].tolist() == alone_second[0, 4:].tolist()


def test_sampling_and_multiple_sequences(lc):
    model = lc.make_model(lc.v2_config())
    torch.manual_seed(0)
    out = model.generate(lc.random_ids(2, 5), max_new_tokens=6, do_sample=True, top_k=20, num_return_sequences=2)
    assert out.shape == (4, 11)
    assert int(out.max()) < lc.TINY["vocab_size"]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_bfloat16_forward_and_decode(impl, lc):
    """The released weights are bf16: forward, cached decode and generate run in bf16 close to float32."""
    config = lc.v2_config()
    model = lc.make_model(config)
    ids = lc.random_ids(1, 12)
    with torch.no_grad():
        reference = model(ids).logits
        model = model.to(torch.bfloat16)
        model.set_attn_implementation(impl)
        logits = model(ids).logits
        cache = LoopCoderCache(config)
        steps = [model(ids[:, :6], past_key_values=cache).logits]
        steps += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(6, 12)]
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max().item() < 0.1
    assert (torch.cat(steps, 1).float() - reference).abs().max().item() < 0.1
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 15)


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("schedule", ["sequential", "parallel"])
def test_beam_search_with_the_cache_equals_beam_search_without(variant, schedule, lc, monkeypatch):
    """Beam search reorders the cache between steps (`reorder_cache`); recomputing every step must agree."""
    from loopcoder.model.cache import LoopCoderCache

    shuffles = []
    reorder = LoopCoderCache.reorder_cache

    def recording_reorder(self, beam_idx):
        shuffles.append(not torch.equal(beam_idx.cpu(), torch.arange(len(beam_idx))))
        return reorder(self, beam_idx)

    monkeypatch.setattr(LoopCoderCache, "reorder_cache", recording_reorder)
    model = lc.make_model(lc.config(variant, decode_schedule=schedule), noise=0.15)
    prompt = lc.random_ids(2, 6, seed=7)
    settings = dict(max_new_tokens=10, do_sample=False, num_beams=3, num_return_sequences=2, early_stopping=False)
    cached = model.generate(prompt, use_cache=True, output_scores=True, return_dict_in_generate=True, **settings)
    assert any(shuffles), "the beams never changed places: the cache reordering was not exercised"
    recomputed = model.generate(prompt, use_cache=False, output_scores=True, return_dict_in_generate=True, **settings)
    assert cached.sequences.tolist() == recomputed.sequences.tolist()
    assert torch.allclose(cached.sequences_scores, recomputed.sequences_scores, atol=1e-5)


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("schedule", ["sequential", "parallel"])
@pytest.mark.parametrize("rejected", [1, 4, 5])
def test_crop_takes_back_a_verification_step(variant, schedule, rejected, lc):
    """The assisted-decoding pattern: a chunk of candidates, `crop` of the rejected ones, then decoding on.

    The prompt is longer than the window so the loop buffers are full; removing all 5 candidates also
    takes back the carry to the one before the chunk."""
    model = lc.make_model(lc.config(variant, decode_schedule=schedule), noise=0.15)
    ids = lc.random_ids(1, 24, seed=9)
    prompt, candidates, continuation = ids[:, :12], ids[:, 12:17], ids[:, 17:]
    kept = candidates[:, : 5 - rejected]
    with torch.no_grad():
        cache = model(prompt, use_cache=True).past_key_values
        cache.activate_past_recording()
        model(candidates, past_key_values=cache, use_cache=True)
        cache.crop(-rejected)
        assert cache.get_seq_length() == 12 + 5 - rejected
        assert cache.local_length(1) <= model.config.local_cache_size  # back to the working size
        logits = model(continuation, past_key_values=cache, use_cache=True).logits
        expected = model(torch.cat([prompt, kept, continuation], dim=1), use_cache=False).logits[
            :, -continuation.shape[1] :
        ]
    assert (logits - expected).abs().max().item() < 1e-5


def test_crop_without_recording_is_refused(lc):
    model = lc.make_model(lc.v2_config())
    with torch.no_grad():
        cache = model(lc.random_ids(1, 12), use_cache=True).past_key_values
    with pytest.raises(RuntimeError, match="activate_past_recording"):
        cache.crop(-2)
    with pytest.raises(ValueError, match="negative"):
        cache.crop(3)
    cache.crop(0)  # nothing to take back: allowed
    assert cache.get_seq_length() == 12


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("schedule", ["sequential", "parallel"])
def test_assisted_and_prompt_lookup_decoding_equal_greedy_decoding(variant, schedule, lc, monkeypatch):
    """Greedy assisted decoding is exact: an assistant that guesses differently changes only the speed."""
    from loopcoder.model.cache import LoopCoderCache

    removed = []
    crop = LoopCoderCache.crop

    def recording_crop(self, tokens_to_remove):
        removed.append(-tokens_to_remove)
        return crop(self, tokens_to_remove)

    monkeypatch.setattr(LoopCoderCache, "crop", recording_crop)
    model = lc.make_model(lc.config(variant, decode_schedule=schedule), noise=0.15)
    assistant = lc.make_model(lc.config(variant, num_loops=1), seed=3, noise=0.15)  # a different model
    prompt = torch.cat([lc.random_ids(1, 8, seed=11)] * 2, dim=1)  # repeats, so prompt lookup finds candidates
    greedy = model.generate(prompt, max_new_tokens=24, do_sample=False)
    assisted = model.generate(prompt, max_new_tokens=24, do_sample=False, assistant_model=assistant)
    lookup = model.generate(
        prompt, max_new_tokens=24, do_sample=False, prompt_lookup_num_tokens=4, return_dict_in_generate=True
    )
    assert assisted.tolist() == greedy.tolist()
    assert lookup.sequences.tolist() == greedy.tolist()
    assert max(removed) > 1  # rejected candidates were taken back
    # the returned cache is back at constant size and stays there when decoding goes on
    cache = lookup.past_key_values
    assert not cache.record_past and cache.local_length(1) <= model.config.local_cache_size
    with torch.no_grad():
        for token in lc.random_ids(1, 6, seed=12)[0]:
            model(token.view(1, 1), past_key_values=cache, use_cache=True)
    assert cache.local_length(1) <= model.config.local_cache_size
    assert all(history is None for history in cache.carry_history)


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("schedule", ["sequential", "parallel"])
def test_generate_writes_loop0_in_place_after_prefill(variant, schedule, lc, monkeypatch):
    """Decode steps write their position into loop 0's preallocated buffers: no step moves or grows them."""
    storage = []  # per update: (layer, new positions, keys ptr, values ptr, keys storage bytes, filled length)
    update = LoopCoderCache.update_loop0

    def recording_update(self, key, value, layer_idx):
        result = update(self, key, value, layer_idx)
        keys, values = self.keys0[layer_idx], self.values0[layer_idx]
        storage.append(
            (
                layer_idx,
                key.shape[-2],
                keys.data_ptr(),
                values.data_ptr(),
                keys.untyped_storage().nbytes(),
                result[0].shape[-2],
            )
        )
        return result

    monkeypatch.setattr(LoopCoderCache, "update_loop0", recording_update)
    model = lc.make_model(lc.config(variant, decode_schedule=schedule), noise=0.15)
    prompt = lc.random_ids(2, 7, seed=13)
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0  # left padding, as in batched rollouts
    new_tokens = 12
    cached = model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
    recomputed = model.generate(
        prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, use_cache=False
    )
    assert cached.tolist() == recomputed.tolist()
    for layer in range(model.config.num_hidden_layers):
        writes = [entry for entry in storage if entry[0] == layer]
        assert [entry[1] for entry in writes] == [prompt.shape[1]] + [1] * (new_tokens - 1)  # prefill, then steps
        assert [entry[5] for entry in writes] == list(range(prompt.shape[1], prompt.shape[1] + new_tokens))
        assert len({entry[2:5] for entry in writes}) == 1, "a decode step moved or grew loop 0's buffers"


def test_cache_without_reservation_grows_by_doubling(lc):
    """A cache filled outside generate starts at the prefill's size and doubles, keeping what it holds."""
    config = lc.v2_config()
    model = lc.make_model(config)
    ids = lc.random_ids(1, 20)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = LoopCoderCache(config)
        steps = [model(ids[:, :6], past_key_values=cache).logits]
        capacities = [cache.keys0[0].shape[-2]]
        for t in range(6, 20):
            steps.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
            capacities.append(cache.keys0[0].shape[-2])
    assert sorted(set(capacities)) == [6, 12, 24]
    assert cache.loop0(0)[0].shape[-2] == 20
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-5
