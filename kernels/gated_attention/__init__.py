"""Gated global/local attention of looped layers: PyTorch reference (and the fused Triton kernel)."""

from .reference import gated_attention_reference

__all__ = ["gated_attention_reference"]
