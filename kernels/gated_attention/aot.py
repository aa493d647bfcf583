"""Ahead-of-time compilation of the gated attention kernels for NVIDIA GPUs, without a GPU.

Triton lowers a kernel to PTX and a cubin for a named target through its Python API, so kernel
code that only the interpreter accepts is caught on a machine with no GPU. The kernels are
compiled with the tile sizes, warps and stages the launchers would pick on that GPU class.

    python -m loopcoder.kernels.gated_attention.aot --arch 80 90 --dtype bfloat16 --head-dim 128

prints one JSON line per (kernel, arch): PTX target, whether tensor-core instructions were
emitted, shared memory, size of the cubin that ptxas assembled, registers and spill stack. TRITON_INTERPRET must be unset (the interpreter replaces the kernels).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import fused

TRITON_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# largest dynamic shared memory per block, bytes
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
# the launch setup of each kernel: which tile config it uses, which optional pointers are absent
KERNEL_SETUP = {
    "gated_attn_fwd_kernel": ("fwd", {"IS_VARLEN": False, "STORE_GLOBAL": True}),
    "gated_attn_bwd_kernel_preprocess": ("pre", {"IS_VARLEN": False}),
    "gated_attn_bwd_kernel_dq": ("dq", {"IS_VARLEN": False}),
    "gated_attn_bwd_kernel_dkv": ("dkv", {"IS_VARLEN": False}),
}
SCALARS = {"scale": "fp32", "window": "i32", "T": "i32"}


def compile_kernel(name: str, arch: int, dtype: torch.dtype, head_dim: int, num_heads=(40, 8), varlen: bool = False):
    """Compile one kernel for `sm_{arch}`; returns Triton's compiled kernel (`.asm["ptx"]`, `.metadata`)."""
    if fused.INTERPRET:
        raise RuntimeError("TRITON_INTERPRET is set: the kernels were defined for the interpreter, unset it")
    kernel = fused.KERNELS[name]
    kind, flags = KERNEL_SETUP[name]
    flags = dict(flags, IS_VARLEN=varlen)
    config = fused.block_config(kind, head_dim, dtype, (arch // 10, arch % 10))
    constexprs = {
        "HQ": num_heads[0],
        "HKV": num_heads[1],
        "D": head_dim,
        "BD": max(16, triton.next_power_of_2(head_dim)),
        "BT": config["BT"],
        "BS": config["BS"],
        "UPCAST": False,
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
        **flags,
    }
    if not varlen:
        constexprs.update(cu_seqlens=None, block_indices=None)
    jit_fn = kernel.fn
    signature, attrs = {}, {}
    for index, arg in enumerate(jit_fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in SCALARS:
            signature[arg] = SCALARS[arg]
        elif arg in ("cu_seqlens", "block_indices"):
            signature[arg] = "*i32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "*fp32" if arg.startswith(("lse", "delta")) else f"*{TRITON_DTYPE[dtype]}"
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=jit_fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and stack bytes (register spills) from cuobjdump, when Triton ships it."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cubin or not tool.exists():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        result = subprocess.run([str(tool), "--dump-resource-usage", handle.name], capture_output=True, text=True)
    usage = re.search(r"REG:(\d+) STACK:(\d+)", result.stdout)
    return {"registers": int(usage.group(1)), "stack_bytes": int(usage.group(2))} if usage else {}


def summarize(name: str, arch: int, compiled) -> dict:
    """What the PTX and cubin show: target, tensor-core instructions, shared memory, registers."""
    ptx = compiled.asm["ptx"]
    target = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE)
    cubin = compiled.asm.get("cubin", b"")
    return {
        "kernel": name,
        "arch": arch,
        "target": target.group(1) if target else None,
        "mma": bool(re.search(r"\bmma\.sync|\bwgmma\.", ptx)),
        "wgmma": "wgmma." in ptx,
        "shared_bytes": compiled.metadata.shared,
        "shared_limit": SHARED_MEMORY_LIMIT.get(arch),
        "ptx_lines": ptx.count("\n"),
        # ptxas assembled the PTX into a cubin (register allocation succeeded)
        "cubin_bytes": len(cubin),
        **resource_usage(cubin),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 80 90")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--varlen", action="store_true", help="compile the packed (cu_seqlens) variant")
    parser.add_argument("--kernels", nargs="+", default=list(KERNEL_SETUP), choices=list(KERNEL_SETUP))
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    for arch in args.arch:
        for name in args.kernels:
            compiled = compile_kernel(name, arch, dtype, args.head_dim, varlen=args.varlen)
            print(json.dumps(summarize(name, arch, compiled)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
