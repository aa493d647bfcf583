"""Fused kernels of the looped model, each in its own folder beside its PyTorch reference."""

import sys


def _probed_by_transformers() -> bool:
    # transformers checks for the Hub package called `kernels` by importing it; run from a checkout's root,
    # that finds this folder. Let the probe see a package without a version (which it ignores).
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("transformers."):
            return True
        frame = frame.f_back
    return False


# Imported from a checkout as `kernels` (the repository root on sys.path), this folder would be a second copy
# of `loopcoder.kernels`, with its own module state: refuse, and say how to import it.
if __name__ != "loopcoder.kernels" and not _probed_by_transformers():
    raise ImportError(f"import this package as `loopcoder.kernels`, not `{__name__}` (pip install -e . first)")
