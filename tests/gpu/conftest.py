"""GPU tests: run when CUDA is present, skipped with the reason otherwise (`make test-gpu` runs this folder).

Every test here that needs CUDA is marked `gpu`; this conftest adds the skip to them, so that a CPU machine
reports why instead of failing, and offers `two_gpus` for the tests that need a second device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def cuda_missing_reason() -> str | None:
    if torch.version.cuda is None:
        return (
            f"CUDA is not available: torch {torch.__version__} is built without CUDA "
            "(install the CUDA build of torch, docs/install.md)"
        )
    if not torch.cuda.is_available():
        return "CUDA is not available: no GPU is visible to torch (driver, CUDA_VISIBLE_DEVICES)"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    reason = cuda_missing_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("gpu") and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def two_gpus():
    count = torch.cuda.device_count()
    if count < 2:
        pytest.skip(f"needs two GPUs, {count} visible")


def relative_rms_error(reference: torch.Tensor, value: torch.Tensor) -> float:
    """rms(value - reference) / rms(reference), in float64."""
    reference, value = reference.double(), value.double()
    return ((value - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt().clamp_min(1e-30)).item()


@pytest.fixture
def rms_error():
    return relative_rms_error


@pytest.fixture
def assert_close():
    def check(label: str, reference: torch.Tensor, value: torch.Tensor, tolerance: float) -> None:
        assert value.shape == reference.shape, f"{label}: shape {tuple(value.shape)} != {tuple(reference.shape)}"
        assert torch.isfinite(value).all(), f"{label}: non-finite values"
        error = relative_rms_error(reference, value)
        print(f"{label:>48} rel_rms={error:.2e} tol={tolerance:.0e}")
        assert error <= tolerance, f"{label}: relative RMS error {error:.3e} > {tolerance:.0e}"

    return check
