"""Collectives on the device the process group's backend needs, checked against real gloo groups on CPU.

A group created with `backend="cuda:gloo"` serves only CUDA tensors, so on this CPU machine it rejects a host
tensor exactly as NCCL does ("No backend type associated with device type cpu"): the failure a multi-GPU run
would hit at its first step when a collective is handed a tensor made on the CPU. The module must then move the
tensor to CUDA; here, without CUDA, that move itself fails, which shows that the collective was never handed a
CPU tensor. The reductions run for real under `cpu:gloo` and plain `gloo`.
"""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from loopcoder.postrain.runtime.collectives import backend_devices, device_for

POSTRAIN = Path(__file__).resolve().parents[2] / "postrain"
NCCL_CPU_ERROR = "No backend type associated with device type cpu"

# Two processes per backend: the raw call today's code made, the module's reductions, the silent-error checks.
DRIVER = textwrap.dedent(
    """
    import json, socket, sys, types
    import torch, torch.distributed as dist
    import torch.multiprocessing as mp

    def free_port():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def attempt(fn):
        try:
            return {"ok": fn()}
        except Exception as error:  # the message is the result
            return {"error": f"{type(error).__name__}: {error}".splitlines()[0]}

    def worker(rank, backends, ports, out):
        from loopcoder.postrain.runtime import collectives
        from loopcoder.postrain.sft.silent_errors import SilentErrorDetector

        config = types.SimpleNamespace(recompute_tolerance=None, silent_error_action="warn", deterministic=False)
        detector = SilentErrorDetector(config, rank, 2)
        module = torch.nn.Linear(3, 2)
        with torch.no_grad():
            module.weight.fill_(0.5)
            module.bias.fill_(0.25 if rank == 0 else 0.75)  # rank 1's bias differs
        results = {}
        for backend, port in zip(backends, ports):
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
            results[backend] = {
                "group_device": str(collectives.group_device()),
                "raw_all_reduce": attempt(lambda: dist.all_reduce(torch.ones(2)) or "done"),
                "all_reduce": attempt(lambda: collectives.all_reduce([float(rank), 1.0])),
                "all_reduce_max": attempt(lambda: collectives.all_reduce([float(rank)], collectives.ReduceOp.MAX)),
                "all_gather": attempt(lambda: collectives.all_gather(torch.tensor([rank, 10 + rank])).tolist()),
                "all_gather_objects": attempt(lambda: collectives.all_gather_objects({"rank": rank})),
                "check_recompute": attempt(
                    lambda: detector.check_recompute(torch.tensor(2.0), torch.tensor(2.0 + rank), 0, "s#0")
                ),
                "check_replicas": attempt(
                    lambda: [(m.tensor, m.ranks) for m in detector.check_replicas(module, 0, 0)]
                ),
            }
            dist.destroy_process_group()
        with open(f"{out}.{rank}", "w") as handle:
            json.dump(results, handle)

    if __name__ == "__main__":
        backends = sys.argv[2:]
        mp.spawn(worker, args=(backends, [free_port() for _ in backends], sys.argv[1]), nprocs=2)
    """
)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{backend: [rank 0 result, rank 1 result]}: one run of two processes, one group per backend in turn."""
    work = tmp_path_factory.mktemp("collectives")
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    out = work / "results"
    backends = ["cuda:gloo", "cpu:gloo", "gloo"]
    done = subprocess.run(
        [sys.executable, str(driver), str(out), *backends], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    per_rank = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    return {backend: [per_rank[0][backend], per_rank[1][backend]] for backend in backends}


def test_device_for_each_backend_map():
    assert device_for("cuda:nccl") == torch.device("cuda")
    assert device_for("cuda:gloo") == torch.device("cuda")
    assert device_for("cpu:gloo,cuda:nccl") == torch.device("cpu")
    assert device_for("cpu:gloo") == torch.device("cpu")
    assert device_for("nccl") == torch.device("cuda")
    assert backend_devices("gloo") == {"cpu": "gloo", "cuda": "gloo"}
    with pytest.raises(ValueError, match="names no device"):
        device_for("")


def test_a_cuda_only_group_rejects_host_tensors_as_nccl_does(results):
    for rank in results["cuda:gloo"]:
        assert rank["group_device"] == "cuda"
        # today's pattern: a tensor made on the host, handed straight to the group
        assert NCCL_CPU_ERROR in rank["raw_all_reduce"]["error"]


def test_the_module_never_hands_a_cuda_only_group_a_host_tensor(results):
    # the tensors go to CUDA first; on this CUDA-less machine the move is what fails, never the collective
    for rank in results["cuda:gloo"]:
        for name in ("all_reduce", "all_reduce_max", "all_gather", "check_recompute", "check_replicas"):
            error = rank[name].get("error", "")
            assert error and NCCL_CPU_ERROR not in error, (name, error)
            assert "CUDA" in error or "cuda" in error, (name, error)


@pytest.mark.parametrize("backend", ["cpu:gloo", "gloo"])
def test_reductions_on_groups_that_serve_the_cpu(results, backend):
    for result in results[backend]:
        assert result["group_device"] == "cpu"
        assert result["raw_all_reduce"] == {"ok": "done"}
        assert result["all_reduce"] == {"ok": [1.0, 2.0]}
        assert result["all_reduce_max"] == {"ok": [1.0]}
        assert result["all_gather"] == {"ok": [[0, 10], [1, 11]]}
        assert result["all_gather_objects"] == {"ok": [{"rank": 0}, {"rank": 1}]}
        # rank 1 recomputed a different loss: every rank learns it (action "warn" returns False)
        assert result["check_recompute"] == {"ok": False}
        # the bias differs between the replicas; with two ranks the one differing from rank 0 is named
        assert result["check_replicas"] == {"ok": [["bias", [1]]]}


def collective_calls(source: str) -> list[tuple[int, str]]:
    """(line, name) of every torch.distributed / deepspeed.comm collective called or imported in `source`."""
    collectives = {
        "all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "reduce_scatter",
        "reduce_scatter_tensor", "broadcast", "broadcast_object_list", "reduce", "gather", "gather_object",
        "scatter", "scatter_object_list", "barrier", "monitored_barrier", "all_to_all", "all_to_all_single",
        "send", "recv", "isend", "irecv", "batch_isend_irecv", "inference_all_reduce",
    }  # fmt: skip
    modules = {"torch.distributed", "deepspeed.comm"}
    tree = ast.parse(source)
    aliases = set()  # names bound to one of `modules`
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    aliases.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    aliases.add(alias.asname or alias.name)
                elif node.module in modules and alias.name in collectives:
                    found.append((node.lineno, alias.name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in collectives:
            owner = ast.unparse(node.func.value)
            if owner in aliases or owner in modules:
                found.append((node.lineno, f"{owner}.{node.func.attr}"))
    return found


def test_the_scan_finds_collectives():
    sample = (
        "import torch\nimport torch.distributed as dist\nfrom torch import distributed as d2\n"
        "from torch.distributed import all_gather_object\nimport deepspeed.comm as dcomm\n"
        "dist.all_reduce(t)\ntorch.distributed.barrier()\nd2.broadcast(t, 0)\ndcomm.all_gather(a, b)\n"
        "dist.get_rank()\nother.all_reduce(t)\n"
    )
    assert sorted(name for _, name in collective_calls(sample)) == [
        "all_gather_object", "d2.broadcast", "dcomm.all_gather", "dist.all_reduce", "torch.distributed.barrier",
    ]  # fmt: skip
    module = (POSTRAIN / "runtime" / "collectives.py").read_text()
    assert {name for _, name in collective_calls(module)} >= {"dist.all_reduce", "dist.all_gather", "dist.barrier"}


def test_no_collective_outside_the_collectives_module():
    offenders = []
    for path in sorted(POSTRAIN.rglob("*.py")):
        if path == POSTRAIN / "runtime" / "collectives.py":
            continue
        for line, name in collective_calls(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(POSTRAIN.parent)}:{line} {name}")
    assert not offenders, "collectives must go through postrain/runtime/collectives.py: " + ", ".join(offenders)
