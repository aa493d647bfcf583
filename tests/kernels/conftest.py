"""Kernel tests: Triton's interpreter on machines without a GPU, NaN-poisoned library buffers.

Without CUDA the kernels run in Triton's interpreter, which has to be switched on before the
kernels are defined, that is before `loopcoder.kernels.gated_attention.fused` is first imported.
This conftest sets TRITON_INTERPRET=1 when it is loaded (before the test modules of this folder
are imported) and redefines the kernels if something imported them earlier without it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections import defaultdict

import pytest
import torch
import torch.utils._device

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    _fused = sys.modules.get("loopcoder.kernels.gated_attention.fused")
    if _fused is not None and not _fused.INTERPRET:
        importlib.reload(_fused)

# library modules whose freshly allocated buffers are poisoned
POISONED_PREFIX = "loopcoder.kernels"
# largest relative RMS error seen per (dtype, quantity), printed at the end of the session
ERRORS: dict[tuple[str, str], float] = defaultdict(float)
SUMMARY_QUANTITIES = ("o", "dq", "dk0", "dv0", "dkr", "dvr", "dg")


def relative_rms_error(ref: torch.Tensor, tri: torch.Tensor) -> float:
    """rms(tri - ref) / rms(ref), in float64."""
    ref, tri = ref.double(), tri.double()
    base = ref.pow(2).mean().sqrt().item()
    err = (tri - ref).pow(2).mean().sqrt().item()
    return err / base if base > 0 else err


def _assert_close(
    prefix: str,
    ref: torch.Tensor,
    tri: torch.Tensor,
    ratio: float,
    atol: float = 1e-6,
    dtype: torch.dtype | None = None,
) -> None:
    """Relative RMS error of `tri` against `ref` at most `ratio`; NaN anywhere fails.

    `atol` accepts tensors whose reference is (numerically) zero, such as dq for a sequence of
    one token, where any rounding noise is a huge relative error. `dtype` names the row of the
    session summary (default: `tri`'s dtype).
    """
    assert tri.shape == ref.shape, f"{prefix}: shape {tuple(tri.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(tri).any(), f"{prefix}: NaN in the kernel's result"
    assert not torch.isnan(ref).any(), f"{prefix}: NaN in the reference"
    err = relative_rms_error(ref, tri)
    abs_err = (tri.double() - ref.double()).pow(2).mean().sqrt().item()
    print(f"{prefix:>48} rel_rms={err:.2e} abs_rms={abs_err:.2e} tol={ratio:.0e}")
    key = (str(dtype or tri.dtype).replace("torch.", ""), prefix.split()[-1])
    if err <= ratio and key[1] in SUMMARY_QUANTITIES:
        ERRORS[key] = max(ERRORS[key], err)
    assert err <= ratio or abs_err <= atol, f"{prefix}: relative RMS error {err:.3e} > {ratio:.0e}"


@pytest.fixture
def assert_close():
    """`assert_close(prefix, ref, tri, ratio)`: relative RMS check that prints a table row."""
    return _assert_close


def pytest_terminal_summary(terminalreporter) -> None:
    if not ERRORS:
        return
    terminalreporter.section("gated attention: largest relative RMS error vs the reference")
    quantities = [q for q in SUMMARY_QUANTITIES if any(key[1] == q for key in ERRORS)]
    terminalreporter.write_line(f"{'dtype':>10} " + " ".join(f"{q:>9}" for q in quantities))
    for dtype in sorted({d for d, _ in ERRORS}):
        row = " ".join(f"{ERRORS.get((dtype, q), float('nan')):9.2e}" for q in quantities)
        terminalreporter.write_line(f"{dtype:>10} {row}")


def _called_from_library() -> bool:
    frame = sys._getframe(2)
    return frame.f_globals.get("__name__", "").startswith(POISONED_PREFIX)


def _poison(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point():
        tensor.fill_(float("nan"))
    elif tensor.dtype != torch.bool:
        tensor.fill_(torch.iinfo(tensor.dtype).max)
    return tensor


@pytest.fixture(autouse=True)
def poison_library_allocations(monkeypatch):
    """Fill tensors that the kernel library allocates with torch.empty* with NaN.

    A kernel that leaves part of its output unwritten then fails the comparison. Allocations
    made by tests and by torch itself are untouched.
    """
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def poisoned_empty(*args, **kwargs):
        tensor = empty(*args, **kwargs)
        return _poison(tensor) if _called_from_library() else tensor

    def poisoned_empty_like(*args, **kwargs):
        tensor = empty_like(*args, **kwargs)
        return _poison(tensor) if _called_from_library() else tensor

    def poisoned_new_empty(self, *args, **kwargs):
        tensor = new_empty(self, *args, **kwargs)
        return _poison(tensor) if _called_from_library() else tensor

    # `with torch.device(...)` redirects the factory functions it finds in a cached set: fill that cache
    # with the real functions before patching, and drop it afterwards, or later meta-device models would
    # be allocated for real (a 7B model on the CPU)
    device_constructors = torch.utils._device._device_constructors
    device_constructors()
    monkeypatch.setattr(torch, "empty", poisoned_empty)
    monkeypatch.setattr(torch, "empty_like", poisoned_empty_like)
    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned_new_empty)
    yield
    monkeypatch.undo()
    device_constructors.cache_clear()
