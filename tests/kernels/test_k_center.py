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
@pytest.mark.parametrize("method", ["auto", "torch", "triton"])
def test_cuda_equals_cpu(method: str) -> None:
    if method == "triton":
        pytest.importorskip("triton")
    x = features(9, 4, 100, 6).float()
    cpu = greedy_k_center(x, 10)
    gpu = greedy_k_center(x.cuda(), 10, method=method)  # type: ignore[arg-type]
    assert torch.equal(gpu.indices.cpu(), cpu.indices)
    assert torch.equal(gpu.radii.cpu(), cpu.radii)


# Triton's kernel: compiled on a CUDA device, else in its CPU interpreter (TRITON_INTERPRET=1,
# set by tests/conftest.py), against the PyTorch path on the same float32 input.


@pytest.fixture
def triton_device() -> str:
    pytest.importorskip("triton")
    from coreset_sampler.kernels.facility_location import _triton

    if torch.cuda.is_available():
        return "cuda"
    if not _triton.interpreting():
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1 (see tests/conftest.py)")
    return "cpu"


def same_as_torch(x: torch.Tensor, k: int | torch.Tensor, device: str, **kw: torch.Tensor) -> None:
    x = x.float()
    ref = greedy_k_center(x, k, method="torch", **kw)
    moved = {name: v.to(device) for name, v in kw.items()}
    k_dev = k.to(device) if isinstance(k, torch.Tensor) else k
    out = greedy_k_center(x.to(device), k_dev, method="triton", **moved)
    assert out.indices.dtype == torch.int64 and out.radii.dtype == torch.float32
    assert torch.equal(out.indices.cpu(), ref.indices)
    torch.testing.assert_close(out.radii.cpu(), ref.radii, rtol=0, atol=0, equal_nan=True)


def test_triton_equals_torch(triton_device: str) -> None:
    same_as_torch(features(10, 3, 40, 5), 12, triton_device)
    x = features(11, 1, 300, 3)
    x[0, 10] = x[0, 280] = 10.0  # twins, farthest from the rest, in two blocks of points
    same_as_torch(x, 6, triton_device)  # (the one of lower index first)
    initial = torch.zeros(1, 300, dtype=torch.bool)
    initial[0, 0] = True  # the first pick, from the distances to it: again a tie of the twins
    same_as_torch(x, 3, triton_device, initial=initial)
    same_as_torch(features(12, 2, 1, 2), 1, triton_device)  # n = 1
    same_as_torch(features(13, 1, 9, 1), 9, triton_device)  # k = n, d = 1


def test_triton_initial_centres_mask_budgets_and_duplicates(triton_device: str) -> None:
    x = features(14, 3, 30, 4)
    x[2, 15:] = x[2, :15]  # duplicates: ties go to the lowest index
    mask = torch.ones(3, 30, dtype=torch.bool)
    mask[1, 20:] = False
    initial = torch.zeros(3, 30, dtype=torch.bool)
    initial[0, [2, 5]] = True
    initial[2, 7] = True
    k = torch.tensor([4, 20, 29])  # every other valid point in problems 1 and 2
    same_as_torch(x, k, triton_device, mask=mask, initial=initial)


def test_triton_reads_strided_budgets_and_a_transposed_mask(triton_device: str) -> None:
    x = features(16, 3, 20, 3)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 12:] = False
    k = torch.tensor([3, 5, 7])
    same_as_torch(x, torch.stack([k, k], 1).reshape(-1)[::2], triton_device,
                  mask=mask.t().contiguous().t())  # fmt: skip


def test_triton_refuses_what_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    from coreset_sampler.kernels.facility_location import _triton

    x = features(15, 2, 10, 3)
    with pytest.raises(ValueError, match="computes in float32"):
        greedy_k_center(x, 3, method="triton")  # float64
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        greedy_k_center(x.float(), 3, method="triton")
    monkeypatch.setattr(_triton, "_triton", lambda: None)
    with pytest.raises(ImportError, match="pip install triton"):
        greedy_k_center(x.float(), 3, method="triton")
    with pytest.raises(ValueError, match="method should be one of"):
        greedy_k_center(x, 3, method="fast")  # type: ignore[arg-type]


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
