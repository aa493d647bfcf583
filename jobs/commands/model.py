"""`loopcoder model` commands: init, fold, convert, generate, diagnose.

    loopcoder model init OUT_DIR --preset tiny [--loops 2] [--format loopcoder|iquestpltcoder|iquestloopcoder]
    loopcoder model fold DENSE_DIR OUT_DIR --loops 2 --method average|select [--layers 0,5,...]
    loopcoder model convert MODEL_DIR OUT_DIR --format iquestpltcoder
    loopcoder model generate MODEL_DIR --prompt "def add(" [--max-new-tokens 64] [--schedule parallel]
    loopcoder model diagnose MODEL_DIR --text "..." [--file F] [--json]

Models load with `AutoModelForCausalLM`, so every directory in a released format works. Without a
tokenizer in the model directory (random models from `init`), text is encoded as UTF-8 bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
SMALL = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=8192,
)
LOOPCODER_V2_7B = dict(
    vocab_size=76800,
    hidden_size=5120,
    intermediate_size=27648,
    num_hidden_layers=14,
    num_attention_heads=40,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=[2, 75864, 75869],
    # third-party reading of the released config.json (spec §2.1); check the checkpoint's own values
    emb_scale=0.707,
    hidden_scale=0.053,
)
PRESETS = {"tiny": TINY, "small": SMALL, "loopcoder-v2-7b": LOOPCODER_V2_7B}
FORMATS = ("loopcoder", "iquestpltcoder", "iquestloopcoder")


def register(commands: argparse._SubParsersAction) -> None:
    """Adds this group's commands; the group prints its help when none is given."""
    init = commands.add_parser("init", help="write a randomly initialised looped model (weights + config)")
    init.add_argument("out_dir", type=Path)
    init.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    init.add_argument("--loops", type=int, default=2, help="loop count R (1-4 tested)")
    init.add_argument("--window", type=int, default=None, help="local window left extent W (default 64; V1: 63)")
    init.add_argument("--format", choices=FORMATS, default="loopcoder", help="config.json flavour to write")
    init.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--config-only", action="store_true", help="write config.json only (no weights)")
    init.set_defaults(handler=_init)

    fold = commands.add_parser("fold", help="initialise a looped model from a dense Llama/Qwen2 checkpoint")
    fold.add_argument("dense_dir", type=Path)
    fold.add_argument("out_dir", type=Path)
    fold.add_argument("--loops", type=int, default=2)
    fold.add_argument("--method", choices=("average", "select"), default="average")
    fold.add_argument("--grouping", choices=("consecutive", "strided"), default="consecutive")
    fold.add_argument("--num-layers", type=int, default=None, help="physical layers (default: dense layers / loops)")
    fold.add_argument("--layers", default=None, help="with --method select: comma-separated dense layer indices")
    fold.add_argument("--window", type=int, default=64, help="local window left extent W")
    fold.set_defaults(handler=_fold)

    convert = commands.add_parser("convert", help="rewrite a model directory in another config flavour")
    convert.add_argument("model_dir", type=Path)
    convert.add_argument("out_dir", type=Path)
    convert.add_argument("--format", choices=FORMATS, required=True, help="model_type of the written config.json")
    convert.set_defaults(handler=_convert)

    generate = commands.add_parser("generate", help="complete a prompt with a looped model")
    generate.add_argument("model_dir", type=Path)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--do-sample", action="store_true")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--schedule", choices=("parallel", "sequential"), default=None)
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(handler=_generate)

    diagnose = commands.add_parser("diagnose", help="per-loop update norms, cosine similarities and gate values")
    diagnose.add_argument("model_dir", type=Path)
    diagnose.add_argument("--text", action="append", default=[], help="a text to run (repeatable)")
    diagnose.add_argument("--file", type=Path, action="append", default=[], help="a file whose content is one text")
    diagnose.add_argument("--json", action="store_true", help="print JSON instead of tables")
    diagnose.set_defaults(handler=_diagnose)


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM

    import loopcoder.model  # noqa: F401 - registers the model types with the Auto classes

    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} has no config.json")
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def _init(args: argparse.Namespace) -> int:
    import torch

    from loopcoder.model import IQuestLoopCoderConfig, IQuestPLTCoderConfig, LoopCoderConfig, LoopCoderForCausalLM

    settings = dict(PRESETS[args.preset])
    if args.format == "iquestloopcoder":
        for key in ("emb_scale", "hidden_scale"):
            settings.pop(key, None)
        window = 63 if args.window is None else args.window
        config = IQuestLoopCoderConfig(loop_num=args.loops, loop_window_size=window + 1, **settings)
    else:
        window = 64 if args.window is None else args.window
        if args.format == "iquestpltcoder":
            scales = dict(
                plt_emb_scale=settings.pop("emb_scale", None), plt_hidden_scale=settings.pop("hidden_scale", None)
            )
            config = IQuestPLTCoderConfig(
                plt_num_loops=args.loops,
                plt_window_size=[window, 0],
                plt_gate_use_hidden_states=True,
                **scales,
                **settings,
            )
        else:
            config = LoopCoderConfig(num_loops=args.loops, loop_window=window, **settings)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.config_only:
        config.save_pretrained(args.out_dir)
        print(f"wrote {args.out_dir / 'config.json'} ({config.model_type}, {config.num_loops} loops)")
        return 0
    torch.manual_seed(args.seed)
    model = LoopCoderForCausalLM(config).to(getattr(torch, args.dtype))
    model.save_pretrained(args.out_dir)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out_dir} ({config.model_type}, {config.num_loops} loops, {count:,} parameters)")
    return 0


def _fold(args: argparse.Namespace) -> int:
    from loopcoder.model.folding import fold_dense

    layers = None
    if args.layers:
        layers = [int(part) for part in args.layers.split(",") if part.strip()]
    model = fold_dense(
        args.dense_dir,
        num_loops=args.loops,
        method=args.method,
        num_layers=args.num_layers,
        grouping=args.grouping,
        layers=layers,
        loop_window=args.window,
    )
    model.save_pretrained(args.out_dir)
    tokenizer_files = [p for p in args.dense_dir.iterdir() if p.name.startswith(("tokenizer", "special_tokens"))]
    for path in tokenizer_files:
        (args.out_dir / path.name).write_bytes(path.read_bytes())
    config = model.config
    print(
        f"folded {args.dense_dir} -> {args.out_dir}: {config.num_hidden_layers} layers x {config.num_loops} loops "
        f"({args.method}, {args.grouping})"
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from loopcoder.model import LoopCoderForCausalLM
    from loopcoder.model.configuration_loopcoder import convert_config

    model = _load(args.model_dir)
    converted = LoopCoderForCausalLM(convert_config(model.config, args.format))
    converted.load_state_dict(model.state_dict(), strict=True)
    converted.to(model.dtype).save_pretrained(args.out_dir)
    print(f"wrote {args.out_dir} ({args.format})")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from loopcoder.model.diagnostics import encode_texts
    from loopcoder.schemas.tokens import has_tokenizer, load_tokenizer

    model = _load(args.model_dir)
    torch.manual_seed(args.seed)
    (ids,) = encode_texts(args.model_dir, [args.prompt], model.config.vocab_size)
    if ids.numel() == 0:
        raise ValueError("the prompt encodes to no tokens")
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample)
    if args.do_sample:
        options.update(temperature=args.temperature, top_p=args.top_p)
    if args.schedule:
        model.config.decode_schedule = args.schedule
    output = model.generate(ids[None].to(model.device), attention_mask=torch.ones_like(ids[None]), **options)
    new_tokens = output[0, ids.numel() :].tolist()
    if has_tokenizer(args.model_dir):
        print(args.prompt + load_tokenizer(args.model_dir).decode(new_tokens, skip_special_tokens=True))
    else:
        print(" ".join(str(token) for token in new_tokens))
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from loopcoder.model.diagnostics import diagnose, encode_texts

    texts = list(args.text) + [path.read_text(encoding="utf-8") for path in args.file]
    if not texts:
        raise ValueError("give at least one --text or --file")
    model = _load(args.model_dir)
    sequences = [ids for ids in encode_texts(args.model_dir, texts, model.config.vocab_size) if ids.numel()]
    report = diagnose(model, sequences)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    print(f"{args.model_dir}: {model.config.num_loops} loops, {report.num_tokens} tokens")
    print(f"{'loop':>4}  {'|update|':>10}  {'relative':>9}  {'cos(prev)':>9}")
    for stats in report.loops:
        print(
            f"{stats.loop:>4}  {stats.update_norm:>10.4f}  {stats.relative_update:>9.4f}  {stats.cosine_to_previous:>9.4f}"
        )
    if model.config.num_loops > 1:
        print(f"{'layer':>5}  {'mean gate':>9}  per loop >= 1")
        for gate in report.gates:
            per_loop = " ".join(f"{value:.3f}" for value in gate.per_loop)
            print(f"{gate.layer:>5}  {gate.mean_gate:>9.3f}  {per_loop}")
    return 0
