"""Tests of the non-negative OMP kernel (GradMatch's solver) against SciPy and plain references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from coreset_sampler.kernels import OMPResult, nonnegative_omp
from coreset_sampler.kernels.omp import ridge_nnls


def scipy_ridge_nnls(g: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """min_{w ≥ 0} ‖gᵀw − b‖² + lam‖w‖² as SciPy's NNLS on the augmented system."""
    s = g.shape[0]
    m = np.vstack([g.T, np.sqrt(lam) * np.eye(s)])
    w, _ = nnls(m, np.concatenate([b, np.zeros(s)]))
    return w


def reference_omp(g: np.ndarray, b: np.ndarray, k: int, lam: float, tol: float) -> list[int]:
    """The greedy, plainly: largest positive inner product with the residual, refit by SciPy."""
    picks: list[int] = []
    residual = b.copy()
    for _ in range(k):
        if np.linalg.norm(residual) <= tol * np.linalg.norm(b):
            break
        corr = g @ residual
        corr[picks] = -np.inf
        j = int(np.argmax(corr))
        if corr[j] <= 0:
            break
        picks.append(j)
        w = scipy_ridge_nnls(g[picks], b, lam)
        residual = b - w @ g[picks]
    return picks


def objective(g: np.ndarray, b: np.ndarray, lam: float, w: np.ndarray) -> float:
    return float(np.sum((g.T @ w - b) ** 2) + lam * np.sum(w**2))


@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0])
def test_ridge_nnls_equals_scipy(lam: float) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        s, d = int(rng.integers(1, 9)), int(rng.integers(1, 10))
        g, b = rng.standard_normal((s, d)), rng.standard_normal(d)
        ref = scipy_ridge_nnls(g, b, lam)
        got = ridge_nnls(torch.from_numpy(g), torch.from_numpy(b), lam).numpy()
        assert (got >= 0).all()
        assert objective(g, b, lam, got) <= objective(g, b, lam, ref) + 1e-12
        if lam > 0:  # strictly convex: one minimiser
            np.testing.assert_allclose(got, ref, atol=1e-9)


def test_ridge_nnls_warm_start_reaches_the_same_answer() -> None:
    rng = np.random.default_rng(1)
    g, b = rng.standard_normal((6, 8)), rng.standard_normal(8)
    cold = ridge_nnls(torch.from_numpy(g), torch.from_numpy(b), 0.5)
    start = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0, 3.0], dtype=torch.float64)
    warm = ridge_nnls(torch.from_numpy(g), torch.from_numpy(b), 0.5, start=start)
    torch.testing.assert_close(warm, cold, atol=1e-10, rtol=0)


def test_recovers_a_known_sparse_answer_in_a_batch() -> None:
    rng = np.random.default_rng(2)
    g = rng.standard_normal((4, 30, 20))
    support = [sorted(rng.choice(30, 3, replace=False).tolist()) for _ in range(4)]
    coef = rng.uniform(0.5, 2.0, (4, 3))
    b = np.stack([coef[p] @ g[p, support[p]] for p in range(4)])
    out = nonnegative_omp(torch.from_numpy(g), torch.from_numpy(b), 5, lam=0.0, tol=1e-9)
    assert isinstance(out, OMPResult)
    for p in range(4):
        picked = out.indices[p].tolist()
        assert sorted(picked[:3]) == support[p] and picked[3:] == [-1, -1]  # stopped: exact
        w = dict(zip(picked[:3], out.weights[p, :3].tolist(), strict=True))
        np.testing.assert_allclose([w[j] for j in support[p]], coef[p], rtol=1e-9)
    assert float(out.residual.max()) < 1e-12


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_picks_and_weights_equal_the_plain_greedy(lam: float) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        g = rng.standard_normal((25, 6))
        b = g[rng.choice(25, 12)].sum(0)  # a sum of proxies, as GradMatch's target
        # (more picks than dimensions: refits set weights to 0 and free them again)
        out = nonnegative_omp(torch.from_numpy(g), torch.from_numpy(b), 16, lam=lam, tol=1e-6)
        picks = reference_omp(g, b, 16, lam, 1e-6)
        got = [j for j in out.indices.tolist() if j >= 0]
        assert got == picks
        ref_w = scipy_ridge_nnls(g[picks], b, lam)
        np.testing.assert_allclose(out.weights[: len(picks)].numpy(), ref_w, atol=1e-8)
        residual = np.linalg.norm(b - ref_w @ g[picks]) / np.linalg.norm(b)
        assert float(out.residual) == pytest.approx(residual, abs=1e-10)


def test_mask_budgets_dtype_and_early_stops() -> None:
    rng = np.random.default_rng(4)
    g = torch.from_numpy(rng.standard_normal((3, 12, 4))).float()
    b = g.sum(1)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 6:] = False
    b[2] = 0.0  # nothing to match: no picks
    out = nonnegative_omp(g, b, torch.tensor([4, 2, 3]), mask=mask)
    assert out.weights.dtype == torch.float32 and out.indices.shape == (3, 4)
    assert all(0 <= j < 6 for j in out.indices[1].tolist() if j >= 0)
    assert out.indices[1, 2:].tolist() == [-1, -1]
    assert out.indices[2].tolist() == [-1] * 4 and float(out.residual[2]) == 0.0
    assert (out.weights >= 0).all()
    # a target no candidate correlates with positively: nothing is picked
    one_side = torch.tensor([[1.0, 0.0], [2.0, 0.5], [0.5, 0.1]])
    none = nonnegative_omp(one_side, torch.tensor([-1.0, 0.0]), 2)
    assert none.indices.tolist() == [-1, -1] and float(none.residual) == 1.0


def test_errors() -> None:
    g = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"target should have shape \(3,\)"):
        nonnegative_omp(g, torch.randn(4), 2)
    with pytest.raises(ValueError, match="lam should be a number ≥ 0"):
        nonnegative_omp(g, torch.randn(3), 2, lam=-1.0)
    with pytest.raises(ValueError, match="k=6 exceeds"):
        nonnegative_omp(g, torch.randn(3), 6)
    with pytest.raises(ValueError, match="target contains non-finite"):
        nonnegative_omp(g, torch.tensor([1.0, float("nan"), 0.0]), 2)
    bad = g.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        nonnegative_omp(bad, torch.randn(3), 2)


def test_ridge_nnls_with_duplicate_proxies_and_no_ridge() -> None:
    # twins in the passive set make the Gram matrix singular: the least-norm solve still fits
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([2.0, 1.0], dtype=torch.float64)
    w = ridge_nnls(g, b, 0.0, start=torch.ones(3, dtype=torch.float64))
    assert (w >= 0).all()
    torch.testing.assert_close(w @ g, b)


@pytest.mark.parametrize("scale", [1e-4, 1e5])
def test_scaling_the_proxies_and_the_target_scales_the_answer_only(scale: float) -> None:
    rng = np.random.default_rng(5)
    g, b = rng.standard_normal((6, 8)), rng.standard_normal(8)
    ref = scipy_ridge_nnls(g, b, 0.0)
    got = ridge_nnls(torch.from_numpy(g * scale), torch.from_numpy(b * scale), 0.0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-9)
    x = rng.standard_normal((40, 5)) + 0.5
    plain = nonnegative_omp(torch.from_numpy(x), torch.from_numpy(x.sum(0)), 6, lam=0.0)
    big = nonnegative_omp(
        torch.from_numpy(x * scale), torch.from_numpy(x.sum(0) * scale), 6, lam=0.0
    )
    assert big.indices.tolist() == plain.indices.tolist()
    np.testing.assert_allclose(big.weights.numpy(), plain.weights.numpy(), rtol=1e-8)
