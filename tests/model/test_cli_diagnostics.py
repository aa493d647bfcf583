"""`loopcoder model` commands end to end on tiny models, and the diagnostics they print."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from loopcoder.jobs.cli import main
from loopcoder.model import LoopCoderForCausalLM
from loopcoder.model.diagnostics import diagnose


@pytest.fixture
def tiny_dir(tmp_path):
    out = tmp_path / "tiny"
    assert main(["model", "init", str(out), "--preset", "tiny", "--loops", "3", "--window", "8"]) == 0
    return out


def test_init_writes_a_loadable_model(tiny_dir):
    model = LoopCoderForCausalLM.from_pretrained(tiny_dir)
    assert model.config.num_loops == 3 and model.config.loop_window == 8


@pytest.mark.parametrize("fmt", ["iquestpltcoder", "iquestloopcoder"])
def test_init_in_released_formats(tmp_path, fmt):
    assert main(["model", "init", str(tmp_path), "--preset", "tiny", "--format", fmt]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == fmt
    assert type(LoopCoderForCausalLM.from_pretrained(tmp_path).config).model_type == fmt


def test_diagnose_prints_json_with_every_loop_and_layer(tiny_dir, capsys):
    assert main(["model", "diagnose", str(tiny_dir), "--text", "def add(a, b):\n    return a + b", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [loop["loop"] for loop in report["loops"]] == [0, 1, 2]
    assert len(report["gates"]) == 2 and all(len(g["per_loop"]) == 2 for g in report["gates"])
    assert all(0 < g["mean_gate"] < 1 for g in report["gates"])


def test_diagnose_table_and_file(tiny_dir, tmp_path, capsys):
    text = tmp_path / "snippet.py"
    text.write_text("for i in range(10):\n    print(i)\n")
    assert main(["model", "diagnose", str(tiny_dir), "--file", str(text)]) == 0
    out = capsys.readouterr().out
    assert "cos(prev)" in out and "mean gate" in out


def test_diagnose_statistics_are_the_definitions(lc):
    config = lc.v2_config(num_loops=2)
    model = lc.make_model(config)
    ids = lc.random_ids(1, 12)[0]
    report = diagnose(model, [ids])
    with torch.no_grad():
        out = model.model(ids[None], output_loop_states=True, use_cache=False)
        h0, h1 = out.loop_hidden_states
        cosine = torch.cosine_similarity(h1, h0, dim=-1).mean().item()
        update = (h1 - h0).norm(dim=-1).mean().item()
        # layer 0 of loop 1 reads the loop input a*E + b*norm(H_0) shifted by one token
        embeds = model.model.embed_tokens(ids[None])
        history = torch.cat([torch.zeros_like(h0[:, :1]), model.model.norm(h0)[:, :-1]], dim=1)
        loop_input = config.emb_scale * embeds + config.hidden_scale * history
        gate = model.model.layers[0].self_attn.plt_gate
        expected_gate = gate(loop_input, None).mean().item()
    assert report.loops[1].cosine_to_previous == pytest.approx(cosine, rel=1e-5)
    assert report.loops[1].update_norm == pytest.approx(update, rel=1e-5)
    assert report.gates[0].mean_gate == pytest.approx(expected_gate, rel=1e-5)


def test_generate_prints_tokens(tiny_dir, capsys):
    assert main(["model", "generate", str(tiny_dir), "--prompt", "def f(", "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out.split()) == 4


def test_fold_command(tmp_path, lc, capsys):
    dense_dir = tmp_path / "dense"
    LlamaForCausalLM(LlamaConfig(**dict(lc.TINY, num_hidden_layers=4))).save_pretrained(dense_dir)
    out = tmp_path / "looped"
    assert (
        main(["model", "fold", str(dense_dir), str(out), "--loops", "2", "--method", "select", "--layers", "1,3"]) == 0
    )
    model = LoopCoderForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.num_loops == 2


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["model", "diagnose", str(tmp_path / "missing"), "--text", "x"]) == 1
    assert "has no config.json" in capsys.readouterr().err


def test_convert_between_formats(tmp_path, lc):
    source = tmp_path / "ours"
    lc.make_model(lc.v2_config()).save_pretrained(source)
    released = tmp_path / "released"
    assert main(["model", "convert", str(source), str(released), "--format", "iquestpltcoder"]) == 0
    config = json.loads((released / "config.json").read_text())
    assert config["model_type"] == "iquestpltcoder" and config["plt_window_size"] == [4, 0]
    ids = lc.random_ids(1, 10)
    with torch.no_grad():
        a = LoopCoderForCausalLM.from_pretrained(source)(ids).logits
        b = LoopCoderForCausalLM.from_pretrained(released)(ids).logits
    assert torch.equal(a, b)
    assert main(["model", "convert", str(source), str(tmp_path / "v1"), "--format", "iquestloopcoder"]) == 1
