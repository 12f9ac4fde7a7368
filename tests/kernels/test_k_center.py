"""Tests of greedy_k_center against plain references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from coreset_sampler.kernels import KCenterResult, greedy_k_center


def distances(x: np.ndarray) -> np.ndarray:
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def reference(
    x: np.ndarray, k: int, initial: list[int] | None = None
) -> tuple[list[int], list[float]]:
    """Farthest-point greedy with the documented first pick and lowest-index ties."""
    dist = distances(x)
    n = len(x)
    chosen = list(initial or [])
    picks: list[int] = []
    radii: list[float] = []
    dmin = dist[:, chosen].min(1) if chosen else np.full(n, np.inf)
    for step in range(k):
        if step == 0 and not chosen:
            j = int(np.argmin(np.linalg.norm(x - x.mean(0), axis=1)))
        else:
            score = dmin.copy()
            score[chosen + picks] = -np.inf
            j = int(np.argmax(score))
        picks.append(j)
        dmin = np.minimum(dmin, dist[:, j])
        radii.append(float(dmin.max()))
    return picks, radii


def optimal_radius(x: np.ndarray, k: int) -> float:
    dist = distances(x)
    return min(dist[:, list(s)].min(1).max() for s in itertools.combinations(range(len(x)), k))


def features(seed: int, *shape: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))


def test_equals_reference_batched() -> None:
    x = features(0, 4, 80, 5)
    out = greedy_k_center(x, 12)
    assert isinstance(out, KCenterResult)
    for b in range(4):
        picks, radii = reference(x[b].numpy(), 12)
        assert out.indices[b].tolist() == picks
        np.testing.assert_allclose(out.radii[b].numpy(), radii, rtol=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_within_twice_the_optimal_radius(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    x = rng.standard_normal((n, 2))
    out = greedy_k_center(torch.from_numpy(x), n - 1)
    for k in range(1, n):
        assert out.radii[k - 1].item() <= 2 * optimal_radius(x, k) + 1e-12


def test_radius_never_increases_and_picks_are_distinct() -> None:
    x = features(3, 3, 200, 4)
    x[1, 100:] = x[1, :100]  # exact duplicates: radius reaches 0 before the picks run out
    out = greedy_k_center(x, 150)
    for b in range(3):
        radii = out.radii[b]
        assert bool((radii[1:] <= radii[:-1]).all())
        assert len(set(out.indices[b].tolist())) == 150
    assert out.radii[1, -1].item() == 0.0


def test_initial_centres_mask_and_per_problem_k() -> None:
    x = features(5, 2, 30, 3)
    initial = torch.zeros(2, 30, dtype=torch.bool)
    initial[0, [3, 7]] = True
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False
    x[1, 20:] = float("nan")  # padding may hold anything
    out = greedy_k_center(x, torch.tensor([5, 3]), initial=initial, mask=mask)
    picks0, radii0 = reference(x[0].numpy(), 5, initial=[3, 7])
    assert out.indices[0].tolist() == picks0
    np.testing.assert_allclose(out.radii[0].numpy(), radii0, rtol=1e-12)
    picks1, radii1 = reference(x[1, :20].numpy(), 3)
    assert out.indices[1, :3].tolist() == picks1
    assert out.indices[1, 3:].tolist() == [-1, -1]
    assert bool(out.radii[1, 3:].isnan().all())
    np.testing.assert_allclose(out.radii[1, :3].numpy(), radii1, rtol=1e-12)


def test_leading_dimensions_and_dtypes() -> None:
    x = torch.randn(2, 3, 20, 4, generator=torch.Generator().manual_seed(0))
    out = greedy_k_center(x, 4)
    assert out.indices.shape == (2, 3, 4) and out.radii.dtype == torch.float32
    assert greedy_k_center(x.half(), 4).radii.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu() -> None:
    x = features(9, 4, 100, 6)
    cpu = greedy_k_center(x, 10)
    gpu = greedy_k_center(x.cuda(), 10)
    assert torch.equal(gpu.indices.cpu(), cpu.indices)
    torch.testing.assert_close(gpu.radii.cpu(), cpu.radii)


def test_errors() -> None:
    x = torch.randn(2, 6, 3)
    with pytest.raises(ValueError, match=r"k=6 exceeds the 5 valid points of problem 0"):
        greedy_k_center(x, 6, initial=torch.tensor([[True] + [False] * 5, [False] * 6]))
    with pytest.raises(ValueError, match=r"k should be positive, but got k=0"):
        greedy_k_center(x, 0)
    with pytest.raises(TypeError, match=r"initial should be a boolean tensor"):
        greedy_k_center(x, 1, initial=torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"initial should have shape \(2, 6\)"):
        greedy_k_center(x, 1, initial=torch.zeros(6, dtype=torch.bool))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 0] = False
    initial = torch.zeros(2, 6, dtype=torch.bool)
    initial[1, 0] = True
    with pytest.raises(ValueError, match=r"initial centre 0 of problem 1 is a padding row"):
        greedy_k_center(x, 1, initial=initial, mask=mask)
    bad = x.clone()
    bad[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"features of problem 0 contain non-finite .* row 2"):
        greedy_k_center(bad, 1)
    with pytest.raises(ValueError, match=r"features should have shape"):
        greedy_k_center(torch.randn(4), 1)
    with pytest.raises(TypeError, match=r"features should be a floating-point tensor"):
        greedy_k_center(torch.ones(4, 2, dtype=torch.long), 1)
