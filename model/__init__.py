"""The looped model (LoopCoder-V2 / IQuest-Coder-V1-Loop) and the bundled code tokenizer."""

# Imported from a checkout as `model` (the repository root on sys.path), this folder would be a second copy
# of `loopcoder.model`, with its own module state: refuse, and say how to import it.
if __name__ != "loopcoder.model":
    raise ImportError(f"import this package as `loopcoder.model`, not `{__name__}` (pip install -e . first)")
