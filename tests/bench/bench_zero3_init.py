"""Peak host memory of one rank building the released 7B configuration under ZeRO-3, against the full fp32 model.

    python tests/bench/bench_zero3_init.py                        # released 7B configuration, rank 0 of 8
    python tests/bench/bench_zero3_init.py --ranks 0,1 --hidden 1024 --intermediate 2816 --vocab 32000 --checkpoint
    python tests/bench/bench_zero3_init.py --real --world 2 --hidden 1024 --intermediate 2816 --vocab 32000

Every figure comes from a fresh process: `build_model_for_zero` builds the model partitioned (DeepSpeed's
`zero.Init`), from its configuration (weights initialised, as for a run that starts from scratch) or, with
`--checkpoint`, from a bf16 Hugging Face checkpoint of it written first; the process reports its peak resident
set (`ru_maxrss`) and its resident set just before building (libraries imported and warmed up by building a tiny
model, process group up). The ranks are simulated: each process is one rank (`--ranks`, default rank 0, the one
that initialises or reads the weights) of a world of `--world` (default 8) whose collectives are no-ops (torch's
fake process-group backend), so it allocates what that rank of a real run does (its partition, the gather
buffers, rank 0's initialisation or checkpoint reading) without the other processes, which this machine could
not hold for the 7B configuration. `--real` runs `--world` real gloo processes instead, to check the simulation
on a configuration small enough to fit that many times.

The figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

BIN = Path(sys.executable).parent
GIB = 1024**3

# One rank: builds argv[1] (config fields as JSON, or a checkpoint directory) partitioned for a world of argv[2];
# argv[3] is "real" or the simulated rank. Prints one JSON line.
RANK = textwrap.dedent(
    """
    import json, os, resource, sys, threading, time
    import deepspeed, deepspeed.ops, torch
    from loopcoder.postrain.sharded_model import build_model_for_zero, partition_numel

    def rss_bytes():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def anonymous_bytes():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))

    # the peak RSS counts the pages of a memory-mapped checkpoint that rank 0 copies from; they are page cache
    # the kernel can drop. The anonymous part (what the process itself allocated) is sampled every 5 ms.
    peak_anonymous = [0]

    def sample():
        while True:
            peak_anonymous[0] = max(peak_anonymous[0], anonymous_bytes())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()

    source, world, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if mode != "real":
        from torch.testing._internal.distributed.fake_pg import FakeStore

        torch.distributed.init_process_group("fake", store=FakeStore(), rank=int(mode), world_size=world)
    deepspeed.init_distributed(dist_backend="gloo")
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": False},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 100000},
    }
    # the first build imports the rest of transformers and DeepSpeed (~0.3 GiB); a tiny one does it first so that
    # "before" holds the libraries and what grows is the model
    tiny = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2)
    build_model_for_zero(tiny, ds_config)
    before = rss_bytes()
    start = time.perf_counter()
    model = build_model_for_zero(json.loads(source) if source.startswith("{") else source, ds_config)
    seconds = time.perf_counter() - start
    local, full = partition_numel(model)
    print(json.dumps({
        "rank": torch.distributed.get_rank(), "world": torch.distributed.get_world_size(),
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "before": before,
        "after": rss_bytes(), "local": local, "full": full, "seconds": seconds, "peak_anonymous": peak_anonymous[0],
    }))
    """
)

# Writes a bf16 checkpoint of the configuration argv[1] to argv[2] (built unsharded: small configurations only).
SAVE = textwrap.dedent(
    """
    import json, sys, torch
    from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM

    model = LoopCoderForCausalLM(LoopCoderConfig(**json.loads(sys.argv[1])))
    model.to(torch.bfloat16).save_pretrained(sys.argv[2])
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, argv: list[str], env: dict[str, str], launcher: list[str] | None = None) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(script)
    try:
        command = [*(launcher or [sys.executable]), handle.name, *argv]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    finally:
        os.unlink(handle.name)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-4000:])
    return result.stdout


def run(source: str, world: int, ranks: list[int], real: bool) -> list[dict]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    if real:
        env["OMP_NUM_THREADS"] = "1"
        launcher = [str(BIN / "torchrun"), "--nproc_per_node", str(world), "--master_addr", "127.0.0.1"]
        launcher += ["--master_port", str(free_port())]
        outputs = [run_script(RANK, [source, str(world), "real"], env, launcher)]
    else:
        outputs = []
        for rank in ranks:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            env["MASTER_PORT"] = str(free_port())
            outputs.append(run_script(RANK, [source, str(world), str(rank)], env))
    # torchrun interleaves the ranks' lines: every flat JSON object in the output is one report
    reports = [json.loads(found) for out in outputs for found in re.findall(r'\{"rank"[^{}]*\}', out)]
    return sorted(reports, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--ranks", default="0", help="simulated ranks to measure, e.g. 0,1")
    parser.add_argument("--real", action="store_true", help="--world real gloo processes instead of simulated ranks")
    parser.add_argument("--checkpoint", action="store_true", help="load a bf16 checkpoint instead of initialising")
    parser.add_argument("--hidden", type=int, help="hidden size (default: the released 5120)")
    parser.add_argument("--intermediate", type=int, help="MLP size (default: the released 27648)")
    parser.add_argument("--vocab", type=int, help="vocabulary (default: the released 76800)")
    args = parser.parse_args()

    fields = {}  # empty = LoopCoderConfig's defaults, the released LoopCoder-V2 7B configuration
    for name, value in (
        ("hidden_size", args.hidden),
        ("intermediate_size", args.intermediate),
        ("vocab_size", args.vocab),
    ):
        if value is not None:
            fields[name] = value
    ranks = [int(rank) for rank in args.ranks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        source = json.dumps(fields)
        if args.checkpoint:
            source = str(Path(tmp) / "checkpoint")
            run_script(SAVE, [json.dumps(fields), source], dict(os.environ))
        reports = run(source, args.world, ranks, args.real)
    full_bytes = reports[0]["full"] * 4
    label = "released 7B" if not fields else json.dumps(fields)
    mode = f"{args.world} gloo processes" if args.real else f"simulated ranks of {args.world}"
    built = f"from a bf16 checkpoint ({reports[0]['full'] * 2 / GIB:.2f} GiB)" if args.checkpoint else "initialised"
    print(
        f"configuration: {label}; {reports[0]['full']:,} parameters; full fp32 model {full_bytes / GIB:.2f} GiB; "
        f"{mode}; weights {built}"
    )
    print(
        "| rank | partition GiB | RSS before GiB | peak RSS GiB | peak / full fp32 | (peak - before) / full fp32 "
        "| peak anonymous / full fp32 | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in reports:
        print(
            f"| {r['rank']} | {r['local'] * 4 / GIB:.2f} | {r['before'] / GIB:.2f} | {r['peak'] / GIB:.2f} | "
            f"{r['peak'] / full_bytes:.3f} | {(r['peak'] - r['before']) / full_bytes:.3f} | "
            f"{r['peak_anonymous'] / full_bytes:.3f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
