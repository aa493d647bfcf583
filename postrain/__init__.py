"""Post-training: the DeepSpeed SFT trainer, the GRPO trainer and sandboxed test-case rewards."""

# Imported from a checkout as `postrain` (the repository root on sys.path), this folder would be a second copy
# of `loopcoder.postrain`, with its own module state: refuse, and say how to import it.
if __name__ != "loopcoder.postrain":
    raise ImportError(f"import this package as `loopcoder.postrain`, not `{__name__}` (pip install -e . first)")
