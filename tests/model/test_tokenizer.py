import sysconfig
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loopcoder.jobs.commands import tokenizer as tokenizer_commands
from loopcoder.schemas.tokens import BUNDLED_TOKENIZER_DIR, SPECIAL_TOKEN_IDS, SPECIAL_TOKENS, load_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Real files with non-ASCII text, tabs, long lines and docstrings.
REAL_FILES = ["json/decoder.py", "difflib.py", "textwrap.py", "encodings/cp1252.py", "tabnanny.py", "html/entities.py"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER_DIR))


@pytest.mark.parametrize("relative", REAL_FILES)
def test_real_source_files_round_trip(tokenizer, relative):
    path = STDLIB / relative
    if not path.exists():
        pytest.skip(f"{relative} not in this Python's standard library")
    text = path.read_text(encoding="utf-8")
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    # merges were learnt: far fewer tokens than bytes, even for the entity table (mostly non-ASCII)
    assert len(text.encode()) / len(ids) > 1.8


@pytest.mark.parametrize(
    "text",
    [
        "x = 'héllo wörld' # 日本語のコメント 🚀\n",
        "\tif a:\r\n\t\treturn b\r\n",
        "   \u00a0\u2003trailing   \n\n\n\x0c\x0b end",
        "",
        " leading space",
        "emoji 👩‍👩‍👧 and combining e\u0301 and zero\u200bwidth",
        "\x00\x01 control bytes \x7f",
        "<|im_start|> inside <|fim_middle|> text",
    ],
)
def test_odd_text_round_trips_losslessly(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_each_special_token_is_one_id(tokenizer, token):
    ids = tokenizer.encode(token, add_special_tokens=False)
    assert len(ids) == 1
    assert tokenizer.convert_ids_to_tokens(ids[0]) == token
    # and stays one id in context, not merged with neighbours
    context_ids = tokenizer.encode(f"a{token}b", add_special_tokens=False)
    assert ids[0] in context_ids


def test_special_token_roles(tokenizer):
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS} == SPECIAL_TOKEN_IDS
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert len(set(tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS))) == len(SPECIAL_TOKENS)
    # no BOS/EOS is added implicitly: FIM and packing place every special token themselves
    assert tokenizer.encode("x") == tokenizer.encode("x", add_special_tokens=False)


def test_chat_template_renders_chatml_with_generation_prompt(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSort a list.<|im_end|>\n<|im_start|>assistant\n"
    )
    without_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not without_prompt.endswith("<|im_start|>assistant\n")


def test_chat_template_marks_assistant_tokens_for_the_loss(tokenizer):
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    supervised = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert supervised == "4<|im_end|>"


def test_load_tokenizer_accepts_other_directories_and_fails_clearly(tmp_path):
    copy = tmp_path / "tok"
    load_tokenizer().save_pretrained(str(copy))
    assert load_tokenizer(copy).encode("def f(): pass") == load_tokenizer().encode("def f(): pass")
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        load_tokenizer(tmp_path / "missing")


def test_a_model_directory_without_a_tokenizer_falls_back_to_the_bundled_one_only_when_asked(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        load_tokenizer(model_dir)
    bundled = load_tokenizer(model_dir, fallback="bundled", vocab_size=8192)
    assert bundled.encode("def f(): pass") == load_tokenizer().encode("def f(): pass")
    with pytest.raises(ValueError, match=r"vocabulary \(256\) is smaller than the bundled"):
        load_tokenizer(model_dir, fallback="bundled", vocab_size=256)
    with pytest.raises(ValueError, match="fallback must be one of"):
        load_tokenizer(model_dir, fallback="released")


def test_retrain_command_builds_a_loadable_tokenizer(tmp_path):
    import argparse

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for relative in REAL_FILES[:3]:
        if (STDLIB / relative).exists():
            (corpus / Path(relative).name).write_text(
                (STDLIB / relative).read_text(encoding="utf-8"), encoding="utf-8"
            )
    parser = argparse.ArgumentParser()
    tokenizer_commands.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--out", str(tmp_path / "out"), "--vocab-size", "400", "--source", str(corpus)])
    assert args.handler(args) == 0
    retrained = load_tokenizer(tmp_path / "out")
    assert len(retrained) == 400
    assert retrained.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    text = (corpus / "decoder.py").read_text(encoding="utf-8")
    assert retrained.decode(retrained.encode(text)) == text
