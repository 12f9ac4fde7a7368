"""Test session set-up: the compiled kernel is imported and compiled before the tests that time
or route through it (in the library, ``method="auto"`` loads it in the background once the
PyTorch solvers have served long enough, and uses them until it is ready); without a CUDA
device, Triton's kernels run in its CPU interpreter (``TRITON_INTERPRET=1``, which Triton
reads when it is first imported: here, before any test imports it)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from coreset_sampler.kernels import load_compiled_kernel


@pytest.fixture(autouse=True, scope="session")
def _compiled_kernel() -> None:
    for dtype in (torch.float32, torch.float64):
        load_compiled_kernel(dtype)
