"""Gated global/local attention of looped layers: the fused Triton kernel and its PyTorch reference.

`gated_attention` (Triton, forward and backward) and `gated_attention_reference` (eager PyTorch)
share one signature. The Triton module is imported on first use of `gated_attention`, so that
importing the reference never defines the kernels; on a machine without a GPU, export
`TRITON_INTERPRET=1` before that first use.
"""

from .reference import gated_attention_reference

__all__ = ["gated_attention", "gated_attention_reference"]


def __getattr__(name: str):
    if name in ("gated_attention", "GatedAttentionFunction"):
        from . import fused

        return getattr(fused, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
