"""The reported gradient norm and the clipping are right at every ZeRO stage and precision (2 CPU processes).

Each rank builds the same tiny looped model and computes, unsharded in fp32, the gradient of the mean loss over
the micro-batches of both ranks (2 per rank, accumulated). The runtime's `Trainer` then takes one DeepSpeed step
on the same data: the norm it reports must equal the unsharded one, and the update must be the clipped one.
With AdamW's first step and an epsilon far above the gradients, the update is lr * g_c / (|g_c| + eps), nearly
linear in the clipped gradient g_c, so a missing or wrong clip changes its size (here by a factor of about 12).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CASES = [(stage, precision) for stage in (0, 1, 2, 3) for precision in ("fp32", "bf16")]

DRIVER = textwrap.dedent(
    """
    import copy, json, os, socket, sys
    import torch
    import torch.multiprocessing as mp

    TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, num_loops=2, loop_window=16, max_position_embeddings=64)
    LR, EPS, MAX_NORM, WORLD, ACCUMULATION = 10.0, 1.0, 0.05, 2, 2

    def unsharded(model, batches):
        model = copy.deepcopy(model).float()
        loss = sum(model(input_ids=ids, labels=ids).loss for ids in batches) / len(batches)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        return grads, float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])))

    def full_parameters(trainer):
        import deepspeed
        params = dict(trainer.engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values()), enabled=trainer.zero_stage == 3):
            return {n: p.detach().float().clone() for n, p in params.items()}

    def worker(rank, port, out, cases):
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        from loopcoder.postrain.runtime.config import TrainerConfig
        from loopcoder.postrain.runtime.model import build_model
        from loopcoder.postrain.runtime.trainer import Trainer

        generator = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, 256, (2, 24), generator=generator) for _ in range(WORLD * ACCUMULATION)]
        results = []
        for stage, precision in cases:
            config = TrainerConfig(model_config=TINY, max_steps=1, zero_stage=stage, precision=precision,
                                   learning_rate=LR, adam_epsilon=EPS, max_grad_norm=MAX_NORM, cpu_threads=1,
                                   output_dir=out + ".run")
            trainer = Trainer(config)
            model = build_model(config)
            grads, norm = unsharded(model, batches)
            trainer.setup_engine(model, ACCUMULATION)
            before = full_parameters(trainer)
            reported = None
            for micro, ids in enumerate(batches[rank * ACCUMULATION : (rank + 1) * ACCUMULATION]):
                trainer.engine.backward(trainer.engine(input_ids=ids, labels=ids).loss)
                reported = trainer.engine_step(boundary=micro == ACCUMULATION - 1) or reported
            after = full_parameters(trainer)
            clip = min(1.0, MAX_NORM / (norm + 1e-6))
            update = torch.cat([(after[n] - before[n]).flatten() for n in sorted(before)])
            expected = torch.cat([(-LR * clip * grads[n] / (clip * grads[n].abs() + EPS)).flatten() for n in sorted(before)])
            results.append(dict(stage=stage, precision=precision, reported=reported, unsharded=norm,
                                update_norm=float(update.norm()), expected_norm=float(expected.norm()),
                                cosine=float(torch.nn.functional.cosine_similarity(update, expected, dim=0))))
        if rank == 0:
            with open(out, "w") as handle:
                json.dump(results, handle)

    if __name__ == "__main__":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.spawn(worker, args=(port, sys.argv[1], json.loads(sys.argv[2])), nprocs=WORLD)
    """
)


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    work = tmp_path_factory.mktemp("grad_norm")
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    out = work / "results.json"
    done = subprocess.run(
        [sys.executable, str(driver), str(out), json.dumps(CASES)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {(r["stage"], r["precision"]): r for r in json.loads(out.read_text())}


@pytest.mark.parametrize(("stage", "precision"), CASES, ids=[f"zero{s}-{p}" for s, p in CASES])
def test_reported_norm_is_the_unsharded_norm(steps, stage, precision):
    result = steps[(stage, precision)]
    # bf16 forwards and backwards differ from the fp32 reference by bf16 rounding, not by a factor
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    assert result["reported"] == pytest.approx(result["unsharded"], rel=tolerance)


DEEPSPEED_ZERO0_BF16 = pytest.mark.xfail(
    strict=True,
    reason="DeepSpeed's ZeRO-0 bf16 optimizer (FP16_UnfusedOptimizer) applies about half the update, with or "
    "without clipping and accumulation",
)


@pytest.mark.parametrize(
    ("stage", "precision"),
    [pytest.param(*case, marks=DEEPSPEED_ZERO0_BF16) if case == (0, "bf16") else case for case in CASES],
    ids=[f"zero{s}-{p}" for s, p in CASES],
)
def test_update_is_the_clipped_one(steps, stage, precision):
    result = steps[(stage, precision)]
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    assert result["update_norm"] == pytest.approx(result["expected_norm"], rel=tolerance)
    assert result["cosine"] > (0.9999 if precision == "fp32" else 0.999)
