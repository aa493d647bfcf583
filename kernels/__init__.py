"""Fused kernels of the looped model, each in its own folder beside its PyTorch reference."""
