"""Every collective of the trainers and the silent-error checks, on the device the process group's backend needs.

    from loopcoder.postrain.runtime import collectives
    total_tokens, total_rows = collectives.all_reduce([tokens, rows])     # floats in, floats out
    fingerprints = collectives.all_gather(local)                          # [world, *local.shape] on local's device

A process group maps device types to backends: `gloo` serves `cpu` (and `cuda`), `nccl` serves `cuda`
only, and `init_process_group(backend="cuda:gloo")` builds a group that, like NCCL, has no backend for
CPU tensors ("No backend type associated with device type cpu"). The map is read from the public
`dist.get_backend_config(group)` ("cpu:gloo,cuda:nccl"). A tensor whose device type has a backend is
used where it is; any other goes to the group's device (CPU when the group serves CPU, which is the cheapest
place for host values; else the first device type of the map, e.g. `cuda`, meaning the current CUDA device that
`init_distributed` set from LOCAL_RANK) and results come back to the caller's device. With one process (or no
process group) nothing is communicated and the values are returned as they are.

Nothing else under `postrain/` calls a `torch.distributed` collective (tests/postrain/test_collectives.py
scans the sources).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

ReduceOp = dist.ReduceOp


def backend_devices(config: str) -> dict[str, str]:
    """`"cpu:gloo,cuda:nccl"` -> {"cpu": "gloo", "cuda": "nccl"}; a bare backend name is mapped as torch maps it."""
    devices: dict[str, str] = {}
    for entry in config.split(","):
        entry = entry.strip()
        if not entry:
            continue
        if ":" in entry:
            device_type, backend = entry.split(":", 1)
            devices[device_type] = backend
        else:
            for device_type in dist.Backend.backend_capability.get(entry.lower(), ["cpu"]):
                devices[device_type] = entry
    return devices


def device_for(config: str) -> torch.device:
    """The device whose tensors a group with backend map `config` accepts: CPU when it serves CPU, else the first
    device type of the map (`torch.device("cuda")` is the current CUDA device)."""
    devices = backend_devices(config)
    if not devices:
        raise ValueError(f"process group backend config {config!r} names no device")
    if "cpu" in devices:
        return torch.device("cpu")
    return torch.device(next(iter(devices)))


def active(group=None) -> bool:
    """True when a collective on `group` communicates (an initialised group of more than one process)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def group_device(group=None) -> torch.device:
    return device_for(dist.get_backend_config(group))


def _placed(tensor: torch.Tensor, group) -> torch.Tensor:
    config = dist.get_backend_config(group)
    if tensor.device.type in backend_devices(config):
        return tensor
    return tensor.to(device_for(config))


def all_reduce_tensor(tensor: torch.Tensor, op=ReduceOp.SUM, group=None) -> torch.Tensor:
    """The reduction of `tensor` over the group, on `tensor`'s device (the input is not modified)."""
    if not active(group):
        return tensor.clone()
    work = _placed(tensor, group)
    work = work.clone() if work is tensor else work
    dist.all_reduce(work, op=op, group=group)
    return work.to(tensor.device)


def all_reduce(values: list[float], op=ReduceOp.SUM, group=None) -> list[float]:
    """Element-wise reduction of a list of numbers over the group (float64)."""
    if not active(group):
        return [float(v) for v in values]
    return all_reduce_tensor(torch.tensor(values, dtype=torch.float64), op, group).tolist()


def all_gather(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """`[world, *tensor.shape]`: every rank's `tensor`, on `tensor`'s device."""
    if not active(group):
        return tensor.unsqueeze(0).clone()
    work = _placed(tensor.contiguous(), group)
    parts = [torch.empty_like(work) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, work, group=group)
    return torch.stack(parts).to(tensor.device)


def all_gather_objects(value: Any, group=None) -> list[Any]:
    """Every rank's picklable `value`, in rank order (torch picks the object device from the same map)."""
    if not active(group):
        return [value]
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, value, group=group)
    return parts


def barrier(group=None) -> None:
    if active(group):
        dist.barrier(group=group)


__all__ = [
    "ReduceOp", "active", "all_gather", "all_gather_objects", "all_reduce", "all_reduce_tensor", "backend_devices",
    "barrier", "device_for", "group_device",
]  # fmt: skip
