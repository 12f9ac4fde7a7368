"""Tests for coreset_sampler.hessian: Hessian-vector products and Hutchinson's estimator against
dense torch.func Hessians in float64, convergence, errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.func import hessian

from coreset_sampler.hessian import hessian_vector_product, hutchinson_diagonal

DT = torch.float64


def _two_param_function() -> tuple[Any, tuple[Tensor, Tensor], Any]:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 7, generator=g, dtype=DT)
    x = torch.randn(7, 3, generator=g, dtype=DT)

    def f(p: Sequence[Tensor]) -> Tensor:
        w, b = p
        h = torch.tanh(w @ x + b[:, None])
        return (h**2).sum() + (m * w).sin().sum() + (b**4).sum()

    params = (torch.randn(5, 7, generator=g, dtype=DT) * 0.5, torch.randn(5, generator=g, dtype=DT))

    def flat(v: Tensor) -> Tensor:
        return f((v[:35].reshape(5, 7), v[35:]))

    return f, params, flat


def _flatten(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


@pytest.mark.parametrize("method", ["jvp", "double_backward"])
def test_hvp_equals_dense_hessian_times_vector(method: str) -> None:
    f, params, flat = _two_param_function()
    dense = hessian(flat)(_flatten(params))
    g = torch.Generator().manual_seed(1)
    v = (torch.randn(5, 7, generator=g, dtype=DT), torch.randn(5, generator=g, dtype=DT))
    if method == "jvp":
        grads, hv = hessian_vector_product(f, params, v)
    else:
        leaves = tuple(p.clone().requires_grad_(True) for p in params)
        loss = f(leaves)
        gr = torch.autograd.grad(loss, leaves, create_graph=True)
        hv = torch.autograd.grad(gr, leaves, grad_outputs=v)
        grads = tuple(t.detach() for t in gr)
    torch.testing.assert_close(_flatten(hv), dense @ _flatten(v), rtol=1e-10, atol=1e-10)
    want_grad = torch.func.grad(flat)(_flatten(params))
    torch.testing.assert_close(_flatten(grads), want_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["jvp", "double_backward"])
def test_hutchinson_converges_like_one_over_sqrt_probes(method: str) -> None:
    f, params, flat = _two_param_function()
    h = hessian(flat)(_flatten(params))
    true = torch.diag(h)
    off = h - torch.diag(true)
    # E‖D̂_k − diag H‖² = Σ_i Σ_{j≠i} H_ij² / k for Rademacher probes
    variance_one = float((off**2).sum())
    if method == "double_backward":
        params = tuple(p.clone().requires_grad_(True) for p in params)
    gen = torch.Generator().manual_seed(2)
    reps = 30
    mse = {}
    for k in (1, 4, 16, 64):
        errs = []
        for _ in range(reps):
            grads, diag = hutchinson_diagonal(
                f,
                params,
                generator=gen,
                num_probes=k,
                method=method,  # type: ignore[arg-type]
            )
            errs.append(float(((_flatten(diag) - true) ** 2).sum()))
        mse[k] = sum(errs) / reps
        assert 0.6 < mse[k] / (variance_one / k) < 1.6, (k, mse[k], variance_one / k)
    # RMS error shrinks like 1/sqrt(k): 64× the probes, about 8× smaller
    assert 5.0 < math.sqrt(mse[1] / mse[64]) < 12.0
    torch.testing.assert_close(_flatten(grads), torch.func.grad(flat)(_flatten(params)))


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    a = torch.tensor([1.0, -2.0, 3.0], dtype=DT)

    def f(p: Sequence[Tensor]) -> Tensor:
        return 0.5 * (a * p[0] ** 2).sum()

    gen = torch.Generator().manual_seed(0)
    grads, diag = hutchinson_diagonal(f, (torch.ones(3, dtype=DT),), generator=gen)
    assert torch.equal(diag[0], a)
    assert torch.equal(grads[0], a)


def test_errors() -> None:
    f = lambda p: (p[0] ** 2).sum()  # noqa: E731
    x = (torch.ones(3, dtype=DT),)
    with pytest.raises(ValueError, match=r"tangents should match params in number and shapes"):
        hessian_vector_product(f, x, (torch.ones(2, dtype=DT),))
    gen = torch.Generator()
    with pytest.raises(ValueError, match=r"method should be 'jvp' or 'double_backward'"):
        hutchinson_diagonal(f, x, generator=gen, method="exact")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"generator should be a torch.Generator, but got int"):
        hutchinson_diagonal(f, x, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_probes should be a positive integer value"):
        hutchinson_diagonal(f, x, generator=gen, num_probes=0)
