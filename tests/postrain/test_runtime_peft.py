"""LoRA for SFT and GRPO, without ZeRO and under ZeRO-3 (partitioned weights): only the adapters train, the adapter
is exported, loads back into a fresh base model and gives the same logits."""

import contextlib
import json

import pytest
import torch
from peft import PeftModel
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
from loopcoder.postrain.grpo import GRPOConfig
from loopcoder.postrain.grpo.trainer import GRPOTrainer
from loopcoder.postrain.runtime.adapters import DEFAULT_TARGET_MODULES, PeftSettings
from loopcoder.postrain.runtime.logprobs import causal_lm
from loopcoder.postrain.sft import SFTConfig
from loopcoder.postrain.sft.sample_data import TINY_MODEL, build_stdlib_shards, tiny_run_config
from loopcoder.postrain.sft.trainer import SFTTrainer
from loopcoder.schemas.tokens import load_tokenizer


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return build_stdlib_shards(tmp_path_factory.getbasetemp() / "sft_stdlib", max_files=200, seq_len=128)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = LoopCoderForCausalLM(LoopCoderConfig(**dict(TINY_MODEL, max_position_embeddings=512)))
    out = tmp_path_factory.mktemp("base")
    model.save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    return out


def gathered(module):
    """Under ZeRO-3 the whole parameters of `module` for the duration of the block (each rank holds a partition)."""
    params = list(module.parameters())
    if not hasattr(params[0], "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def split_weights(module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base weights, adapter weights) of a PEFT model, as detached whole copies."""
    base, adapter = {}, {}
    with gathered(module):
        for name, param in module.named_parameters():
            (adapter if "lora_" in name else base)[name] = param.detach().clone()
    return base, adapter


def assert_adapters_only_trained(trainer, before):
    base_before, adapter_before = before
    base_after, adapter_after = split_weights(trainer.engine.module)
    assert base_after.keys() == base_before.keys() and adapter_after.keys() == adapter_before.keys()
    assert all(p.numel() > 0 for p in base_before.values())  # whole weights, not ZeRO-3 placeholders
    assert all(torch.equal(base_after[n], base_before[n]) for n in base_before)  # bit for bit
    changed = [n for n in adapter_before if not torch.equal(adapter_after[n], adapter_before[n])]
    # LoRA starts B at zero, A at random: both must move (B first, then A through B)
    assert any(".lora_B." in n for n in changed) and any(".lora_A." in n for n in changed)
    trainable = {n for n, p in trainer.engine.module.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_before)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in adapter_before if ".lora_A." in n}
    assert adapted == set(DEFAULT_TARGET_MODULES)


def logits_of(trainer, ids):
    model = trainer.engine.module.eval()
    with torch.no_grad(), gathered(model):
        return model(input_ids=ids, use_cache=False).logits


def assert_adapter_reloads(base_dir, final, ids, expected):
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(base_dir)
    assert not list(final.glob("model*.safetensors"))  # the adapter alone, not a copy of the base
    loaded = PeftModel.from_pretrained(LoopCoderForCausalLM.from_pretrained(base_dir), final).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, use_cache=False).logits, expected)
        plain = LoopCoderForCausalLM.from_pretrained(base_dir)(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(plain, expected)  # the adapter changes the model


def sft_lora_config(shards, base_dir, output_dir, **overrides):
    return tiny_run_config(
        shards,
        output_dir,
        model_config={},
        model_name_or_path=str(base_dir),
        tokenizer="auto",
        curriculum=[{"name": "all", "steps": 3, "mixture": {"sft_easy": 1.0}}],
        global_batch_size=2,
        peft={"r": 4, "alpha": 8, "dropout": 0.0, "merge_on_export": True},
        learning_rate=1e-2,
        **overrides,
    )


@pytest.mark.parametrize("zero_stage", [None, 3])
def test_sft_lora_trains_adapters_only_and_exports_them(shards, base_dir, tmp_path, zero_stage):
    # under ZeRO-3 the logits in chunks of 32 tokens, each recomputed in backward with the frozen head gathered again
    trainer = SFTTrainer(
        sft_lora_config(shards, base_dir, tmp_path / "run", zero_stage=zero_stage, logprob_chunk_size=32)
    )
    assert trainer.zero_stage == (zero_stage or 0)
    before = split_weights(trainer.engine.module)
    result = trainer.train()
    assert len(result.losses) == 3
    # the run is over: models built from here on are whole, also after a ZeRO-3 run in this process
    assert not is_deepspeed_zero3_enabled()
    assert_adapters_only_trained(trainer, before)
    if zero_stage == 3:  # partitioned, the same training as without ZeRO
        reference = SFTTrainer(sft_lora_config(shards, base_dir, tmp_path / "zero0", save_final_model=False)).train()
        assert result.losses == pytest.approx(reference.losses, rel=1e-6)
        assert result.metric("grad_norm") == pytest.approx(reference.metric("grad_norm"), rel=1e-5)
    ids = torch.randint(0, 8192, (2, 24))
    expected = logits_of(trainer, ids)
    assert_adapter_reloads(base_dir, result.final_model, ids, expected)
    merged = LoopCoderForCausalLM.from_pretrained(tmp_path / "run" / "final_merged").eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids, use_cache=False).logits, expected, atol=1e-5)


def length_reward(completions, **kwargs):  # varied rewards: the advantages, hence the gradients, are not 0
    return [len(c) / 10.0 for c in completions]


def grpo_lora_config(base_dir, output_dir, **overrides):
    return GRPOConfig(
        model_name_or_path=str(base_dir),
        problems="synthetic:print_number4",
        prompt_suffix="",
        prompts_per_step=2,
        num_generations=4,
        max_completion_length=8,
        steps_per_generation=1,  # one update per step: step 0's KL is measured before any update
        micro_batch_size=4,
        learning_rate=1e-2,
        beta=0.1,
        max_steps=2,
        output_dir=str(output_dir),
        resume="never",
        report_to=[],
        progress_bar=False,
        cpu_threads=1,
        peft={"r": 4, "alpha": 8, "dropout": 0.0},
        logprob_chunk_size=5,
        **overrides,
    )


@pytest.mark.parametrize("zero_stage", [None, 3])
def test_grpo_lora_trains_adapters_only_with_the_base_as_reference(base_dir, tmp_path, zero_stage):
    config = grpo_lora_config(base_dir, tmp_path / "run", zero_stage=zero_stage)
    trainer = GRPOTrainer(config, reward_fns=[length_reward])
    assert trainer.zero_stage == (zero_stage or 0)
    assert trainer.ref_model is None  # no copy of the model: the base without adapters is the reference
    before = split_weights(trainer.engine.module)
    trained_logits = []
    head = causal_lm(trainer.engine).lm_head
    hook = head.register_forward_hook(
        lambda m, a, out: trained_logits.append(out.shape) if out.requires_grad else None
    )
    result = trainer.train()
    hook.remove()
    # the update's logits (forward and recomputation in backward) never exceed 5 tokens at a time
    assert trained_logits and max(shape.numel() for shape in trained_logits) <= 5 * 8192
    assert all("kl" in r for r in result.history if "loss" in r)
    kls = [r["kl"] for r in result.history if "kl" in r]
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and kls[-1] > 0  # policy = base until the adapters move
    assert not is_deepspeed_zero3_enabled()
    assert_adapters_only_trained(trainer, before)
    if zero_stage == 3:  # partitioned, the same rollouts and updates as without ZeRO
        reference = GRPOTrainer(
            grpo_lora_config(base_dir, tmp_path / "zero0", save_final_model=False), reward_fns=[length_reward]
        ).train()
        for key in ("loss", "kl", "grad_norm"):
            assert result.metric(key) == pytest.approx(reference.metric(key), rel=1e-4, abs=1e-9)
    ids = torch.randint(0, 8192, (2, 24))
    expected = logits_of(trainer, ids)
    assert_adapter_reloads(base_dir, result.final_model, ids, expected)
    assert not (tmp_path / "run" / "final_merged").exists()


def test_a_reference_model_under_zero3_without_adapters_is_refused_before_loading(base_dir, tmp_path):
    config = grpo_lora_config(base_dir, tmp_path / "run", zero_stage=3)
    config.peft = None
    with pytest.raises(ValueError, match="beta > 0 needs a reference model"):
        GRPOTrainer(config, reward_fns=[length_reward])
    assert not is_deepspeed_zero3_enabled()


def test_peft_settings_are_checked():
    assert PeftSettings.from_value({}).target_modules == list(DEFAULT_TARGET_MODULES)
    with pytest.raises(ValueError, match="unknown peft key"):
        PeftSettings.from_value({"rank": 8})
    with pytest.raises(ValueError, match="set model_name_or_path"):
        SFTConfig(peft={"r": 8})
    config = GRPOConfig(model_name_or_path="some/dir", peft={"r": 8, "target_modules": ["q_proj"]})
    assert config.to_dict()["peft"]["r"] == 8 and GRPOConfig.from_dict(config.to_dict()).peft == config.peft
