"""Tests of greedy_facility_location against plain references."""

from __future__ import annotations

import decimal
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coreset_sampler import FacilityLocationResult, _lazy, greedy_facility_location

HAS_NUMBA = _lazy.available()
LAZY = pytest.param("lazy", marks=pytest.mark.skipif(not HAS_NUMBA, reason="needs numba"))
TORCH_METHODS = ["naive", "incremental"]
EXACT_METHODS = [*TORCH_METHODS, LAZY]
SIMILARITIES = ["neg_distance", "exp", "cosine", "dot"]


# ----------------------------------------------------------------------------------------------
# Plain references (NumPy, float64)
# ----------------------------------------------------------------------------------------------


def similarity_matrix(x: np.ndarray, kind: str) -> np.ndarray:
    """s(i, j) of the documented similarities, from differences, in float64."""
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    if kind == "neg_distance":
        return dist.max() - dist
    if kind == "exp":
        return np.exp(-dist / x.shape[1])
    # products summed per pair in one order (a BLAS product may round equal columns differently)
    if kind == "cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return (unit[:, None, :] * unit[None, :, :]).sum(-1)
    if kind == "dot":
        return (x[:, None, :] * x[None, :, :]).sum(-1)
    raise AssertionError(kind)


def naive_greedy(sim: np.ndarray, k: int) -> tuple[list[int], list[float], float]:
    """Textbook greedy on F(S) = Σ_i max(0, max_{j∈S} s(i, j)).

    Ties are the lowest index among gains within 16·eps·first/sqrt(n) of the best: mathematically
    equal gains can differ in their last bits depending on summation order, in any
    implementation; this is the rule the library documents.
    """
    n = sim.shape[0]
    cur = np.zeros(n)
    selected: list[int] = []
    gains: list[float] = []
    tol = None
    for _ in range(k):
        gain = np.maximum(sim - cur[:, None], 0.0).sum(0)
        gain[selected] = -np.inf
        if tol is None:
            tol = 16 * np.finfo(np.float64).eps * abs(gain.max()) / math.sqrt(n)
        j = int(np.flatnonzero(gain >= gain.max() - tol)[0])
        selected.append(j)
        gains.append(float(gain[j]))
        cur = np.maximum(cur, sim[:, j])
    return selected, gains, float(cur.sum())


def had_ties(sim: np.ndarray, k: int) -> bool:
    """Whether some greedy step had two candidates with (nearly) equal best gains."""
    n = sim.shape[0]
    cur = np.zeros(n)
    selected: list[int] = []
    for _ in range(k):
        gain = np.maximum(sim - cur[:, None], 0.0).sum(0)
        gain[selected] = -np.inf
        top = np.sort(gain)[::-1]
        if n - len(selected) > 1 and top[0] - top[1] <= 1e-9 * max(1.0, abs(top[0])):
            return True
        j = int(np.argmax(gain))
        selected.append(j)
        cur = np.maximum(cur, sim[:, j])
    return False


def objective(sim: np.ndarray, selected: list[int]) -> float:
    return float(np.maximum(sim[:, selected].max(1), 0.0).sum())


def cluster_sizes(sim: np.ndarray, selected: list[int]) -> list[float]:
    """Points whose most similar selected point is j; ties to the lowest point index."""
    order = sorted(selected)
    owner = [order[int(np.argmax(sim[i, order]))] for i in range(sim.shape[0])]
    return [float(owner.count(j)) for j in selected]


def rng_features(seed: int, *shape: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))


# ----------------------------------------------------------------------------------------------
# Exactness
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize(("n", "d", "k"), [(40, 3, 7), (150, 10, 30), (90, 40, 12)])
def test_equals_naive_reference(method: str, similarity: str, n: int, d: int, k: int) -> None:
    x = rng_features(n * d + k, 3, n, d)
    out = greedy_facility_location(x, k, similarity=similarity, method=method)  # type: ignore[arg-type]
    for b in range(3):
        sim = similarity_matrix(x[b].numpy(), similarity)
        selected, gains, obj = naive_greedy(sim, k)
        assert out.indices[b].tolist() == selected
        np.testing.assert_allclose(out.gains[b].numpy(), gains, rtol=1e-10, atol=1e-10)
        assert out.objective[b].item() == pytest.approx(obj, rel=1e-12)
        assert out.weights[b].tolist() == cluster_sizes(sim, selected)


def test_auto_with_chunk_size_on_a_small_problem() -> None:
    """chunk_size forbids the dense matrix, so "auto" must not pick the naive path."""
    x = rng_features(8, 3, 40, 5)
    chunked = greedy_facility_location(x, 6, chunk_size=16)
    dense = greedy_facility_location(x, 6)
    assert torch.equal(chunked.indices, dense.indices)
    torch.testing.assert_close(chunked.objective, dense.objective, rtol=1e-12, atol=0)


@pytest.mark.parametrize("similarity", ["neg_distance", "exp", "dot"])
def test_chunked_feature_path_equals_dense(similarity: str) -> None:
    """chunk_size forces rows to be recomputed from features (no n×n matrix)."""
    x = rng_features(7, 2, 300, 6)
    dense = greedy_facility_location(x, 40, similarity=similarity, method="naive")  # type: ignore[arg-type]
    for chunk in (1, 17, 1000):
        chunked = greedy_facility_location(
            x,
            40,
            similarity=similarity,  # type: ignore[arg-type]
            method="incremental",
            chunk_size=chunk,
        )
        assert torch.equal(chunked.indices, dense.indices)
        torch.testing.assert_close(chunked.objective, dense.objective, rtol=1e-12, atol=0)
        torch.testing.assert_close(chunked.weights, dense.weights)


def test_clustered_data_uses_pruning_and_stays_exact() -> None:
    """Well-separated clusters: the triangle-inequality pruning skips most columns."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((25, 4)) * 20
    x = centres[rng.integers(0, 25, 1500)] + rng.standard_normal((1500, 4))
    out = greedy_facility_location(torch.from_numpy(x), 60, method="incremental", chunk_size=64)
    selected, _, obj = naive_greedy(similarity_matrix(x, "neg_distance"), 60)
    assert out.indices.tolist() == selected
    assert out.objective.item() == pytest.approx(obj, rel=1e-12)


@pytest.mark.parametrize("method", TORCH_METHODS)
def test_precomputed_asymmetric_similarity(method: str) -> None:
    sim = torch.rand(4, 30, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sim[1] -= 0.5  # some negative similarities: they count as 0
    out = greedy_facility_location(None, 6, similarity=sim, method=method)  # type: ignore[arg-type]
    for b in range(4):
        selected, _, obj = naive_greedy(sim[b].numpy(), 6)
        assert out.indices[b].tolist() == selected
        assert out.objective[b].item() == pytest.approx(obj, rel=1e-12)


@pytest.mark.parametrize("method", [*EXACT_METHODS, "stochastic"])
def test_ragged_problems_with_mask_and_per_problem_k(method: str) -> None:
    x = rng_features(11, 4, 60, 5)
    mask = torch.ones(4, 60, dtype=torch.bool)
    mask[1, 45:] = False
    mask[2, ::2] = False
    x[1, 45:] = float("nan")  # padding may hold anything
    k = torch.tensor([10, 3, 30, 1])
    out = greedy_facility_location(x, k, mask=mask, method=method)  # type: ignore[arg-type]
    assert out.indices.shape == (4, 30)
    for b in range(4):
        kb = int(k[b])
        keep = mask[b].nonzero().squeeze(1)
        assert (out.indices[b, kb:] == -1).all()
        assert (out.gains[b, kb:] == 0).all() and (out.weights[b, kb:] == 0).all()
        picked = out.indices[b, :kb]
        assert bool(mask[b, picked].all())
        assert out.weights[b].sum().item() == keep.numel()
        if method != "stochastic":
            sim = similarity_matrix(x[b, keep].numpy(), "neg_distance")
            selected, _, obj = naive_greedy(sim, kb)
            assert picked.tolist() == keep[selected].tolist()
            assert out.objective[b].item() == pytest.approx(obj, rel=1e-12)


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_padding_never_counts_for_any_similarity(method: str, similarity: str) -> None:
    """Padding rows must not add to gains, whatever s(padding, j) would be."""
    x = rng_features(13, 3, 70, 4)
    mask = torch.ones(3, 70, dtype=torch.bool)
    mask[0, 50:] = False
    mask[2, 1::3] = False
    out = greedy_facility_location(
        x,
        8,
        mask=mask,
        similarity=similarity,  # type: ignore[arg-type]
        method=method,  # type: ignore[arg-type]
    )
    for b in range(3):
        keep = mask[b].nonzero().squeeze(1)
        selected, _, obj = naive_greedy(similarity_matrix(x[b, keep].numpy(), similarity), 8)
        assert out.indices[b].tolist() == keep[selected].tolist()
        assert out.objective[b].item() == pytest.approx(obj, rel=1e-12)


def test_leading_dimensions_are_problems() -> None:
    x = rng_features(5, 2, 3, 20, 4)
    out = greedy_facility_location(x, 5)
    assert out.indices.shape == (2, 3, 5) and out.objective.shape == (2, 3)
    flat = greedy_facility_location(x.reshape(6, 20, 4), 5)
    assert torch.equal(out.indices.reshape(6, 5), flat.indices)


def test_result_is_a_named_tuple_with_documented_dtypes() -> None:
    out = greedy_facility_location(torch.randn(2, 10, 3), 4)
    assert isinstance(out, FacilityLocationResult)
    indices, weights, gains, obj = out
    assert indices.dtype == torch.long
    assert weights.dtype == gains.dtype == obj.dtype == torch.float32
    half = greedy_facility_location(torch.randn(10, 3).half(), 4)
    assert half.gains.dtype == torch.float32


def test_weights_ties_go_to_lowest_index() -> None:
    # point 2 is as similar to point 0 as to point 1, and both are picked: it counts for 0
    sim = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.2]], dtype=torch.float64)
    out = greedy_facility_location(None, 2, similarity=sim)
    assert out.indices.tolist() == [0, 1]  # equal first gains (1.5): lowest index first
    assert out.weights.tolist() == [2.0, 1.0]
    dup = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])  # exact duplicates
    res = greedy_facility_location(dup, 3)
    assert sorted(res.indices.tolist()) == [0, 1, 2]
    weight_of = dict(zip(res.indices.tolist(), res.weights.tolist(), strict=True))
    assert weight_of[0] == 2.0 and weight_of[1] == 0.0 and weight_of[2] == 1.0


def test_exact_tie_broken_to_lowest_index_in_every_method() -> None:
    # two identical, isolated pairs: after the first pick the others tie exactly
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [50.0, 0.0], [50.0, 1.0]], dtype=torch.float64)
    for method in [*TORCH_METHODS, *(["lazy"] if HAS_NUMBA else [])]:
        out = greedy_facility_location(x, 2, method=method)  # type: ignore[arg-type]
        assert out.indices.tolist() == [0, 2], method


# ----------------------------------------------------------------------------------------------
# Approximation guarantees
# ----------------------------------------------------------------------------------------------


def brute_force_optimum(sim: np.ndarray, k: int) -> float:
    return max(objective(sim, list(s)) for s in itertools.combinations(range(sim.shape[0]), k))


@pytest.mark.parametrize("seed", range(8))
def test_greedy_within_one_minus_one_over_e_of_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 9))
    k = int(rng.integers(1, n))
    x = rng.standard_normal((n, 2))
    sim = similarity_matrix(x, "neg_distance")
    out = greedy_facility_location(torch.from_numpy(x), k)
    best = brute_force_optimum(sim, k)
    assert out.objective.item() >= (1 - 1 / math.e) * best - 1e-12
    assert out.objective.item() <= best + 1e-9


def test_stochastic_greedy_expected_guarantee_and_determinism() -> None:
    x = rng_features(2, 1, 8, 2)
    sim = similarity_matrix(x[0].numpy(), "neg_distance")
    best = brute_force_optimum(sim, 3)
    eps = 0.2
    values = [
        greedy_facility_location(
            x, 3, method="stochastic", epsilon=eps, generator=torch.Generator().manual_seed(s)
        ).objective.item()
        for s in range(30)
    ]
    assert np.mean(values) >= (1 - 1 / math.e - eps) * best
    again = greedy_facility_location(
        x, 3, method="stochastic", epsilon=eps, generator=torch.Generator().manual_seed(5)
    )
    assert again.objective.item() == values[5]


def test_stochastic_greedy_close_to_greedy_on_large_problem() -> None:
    x = rng_features(4, 1, 2000, 8).float()
    exact = greedy_facility_location(x, 100).objective.item()
    approx = greedy_facility_location(x, 100, method="stochastic", epsilon=0.01).objective.item()
    assert approx >= (1 - 1 / math.e - 0.01) * exact
    assert approx >= 0.97 * exact  # far better than the bound in practice


def test_stochastic_greedy_does_not_touch_global_rng() -> None:
    x = torch.randn(1, 50, 3)
    state = torch.random.get_rng_state()
    greedy_facility_location(x, 5, method="stochastic")
    assert torch.equal(state, torch.random.get_rng_state())


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    n=st.integers(1, 40),
    d=st.integers(1, 6),
    frac=st.floats(0.05, 1.0),
    method=st.sampled_from(["naive", "incremental", "stochastic"]),
    similarity=st.sampled_from(SIMILARITIES),
)
def test_properties(
    seed: int, batch: int, n: int, d: int, frac: float, method: str, similarity: str
) -> None:
    x = rng_features(seed, batch, n, d)
    k = max(1, int(frac * n))
    out = greedy_facility_location(
        x,
        k,
        similarity=similarity,  # type: ignore[arg-type]
        method=method,  # type: ignore[arg-type]
    )
    for b in range(batch):
        picked = out.indices[b].tolist()
        assert len(set(picked)) == k and min(picked) >= 0 and max(picked) < n
        assert out.weights[b].sum().item() == n
        gains = out.gains[b]
        if method != "stochastic":
            scale = max(1.0, abs(gains[0].item()))
            assert bool((gains[1:] <= gains[:-1] + 1e-9 * scale).all())
        assert gains.sum().item() == pytest.approx(out.objective[b].item(), rel=1e-9, abs=1e-9)
        single = greedy_facility_location(
            x[b : b + 1],
            k,
            similarity=similarity,  # type: ignore[arg-type]
            method=method,  # type: ignore[arg-type]
            generator=torch.Generator().manual_seed(0) if method == "stochastic" else None,
        )
        if method != "stochastic":
            assert single.indices[0].tolist() == picked


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 60),
    method=st.sampled_from([*TORCH_METHODS, *(["lazy"] if HAS_NUMBA else [])]),
)
def test_permuting_points_permutes_the_selection(seed: int, n: int, method: str) -> None:
    x = rng_features(seed, n, 3)
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(n))
    k = max(1, n // 3)
    out = greedy_facility_location(x, k, method=method)  # type: ignore[arg-type]
    moved = greedy_facility_location(x[perm], k, method=method)  # type: ignore[arg-type]
    if had_ties(similarity_matrix(x.numpy(), "neg_distance"), k):
        # "lowest index" depends on the order, and the greedy may go another way after a tie
        return
    assert perm[moved.indices].tolist() == out.indices.tolist()
    torch.testing.assert_close(moved.weights, out.weights)
    torch.testing.assert_close(moved.objective, out.objective, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------
# Other libraries (optional extras)
# ----------------------------------------------------------------------------------------------


def test_objective_matches_apricot() -> None:
    apricot = pytest.importorskip("apricot")
    x = rng_features(21, 300, 10)
    sim = similarity_matrix(x.numpy(), "neg_distance")
    ours = greedy_facility_location(x, 40)
    for optimizer in ("naive", "lazy"):
        sel = apricot.FacilityLocationSelection(
            40, metric="precomputed", optimizer=optimizer, verbose=False
        ).fit(sim)
        theirs = objective(sim, [int(i) for i in sel.ranking])
        assert ours.objective.item() == pytest.approx(theirs, rel=1e-4)


def test_objective_matches_submodlib() -> None:
    submodlib = pytest.importorskip("submodlib")
    x = rng_features(22, 300, 10)
    sim = similarity_matrix(x.numpy(), "neg_distance")
    ours = greedy_facility_location(x, 40)
    fl = submodlib.FacilityLocationFunction(
        n=300, mode="dense", sijs=sim.astype(np.float32), separate_rep=False
    )
    picks = fl.maximize(
        budget=40,
        optimizer="LazyGreedy",
        stopIfZeroGain=False,
        stopIfNegativeGain=False,
        verbose=False,
        show_progress=False,
    )
    theirs = objective(sim, [int(i) for i, _ in picks])
    assert ours.objective.item() == pytest.approx(theirs, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# Devices and compilation
# ----------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", TORCH_METHODS)
def test_cuda_equals_cpu(method: str) -> None:
    x = rng_features(9, 5, 200, 10)
    mask = torch.rand(5, 200, generator=torch.Generator().manual_seed(0)) > 0.2
    cpu = greedy_facility_location(x, 20, mask=mask, method=method)  # type: ignore[arg-type]
    gpu = greedy_facility_location(x.cuda(), 20, mask=mask.cuda(), method=method)  # type: ignore[arg-type]
    assert torch.equal(gpu.indices.cpu(), cpu.indices)
    torch.testing.assert_close(gpu.objective.cpu(), cpu.objective)
    torch.testing.assert_close(gpu.weights.cpu(), cpu.weights)


@pytest.mark.slow
def test_torch_compile_smoke() -> None:
    """The kernel runs under torch.compile (with graph breaks) and gives the same answer."""
    compiled = torch.compile(greedy_facility_location)
    x = rng_features(1, 5, 50, 10).float()
    eager = greedy_facility_location(x, 13)
    out = compiled(x, 13)
    assert torch.equal(out.indices, eager.indices)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, r"k must be positive, but got k=0 for problem 0"),
        ({"k": -2}, ValueError, r"k must be positive, but got k=-2"),
        ({"k": 11}, ValueError, r"k=11 exceeds the 10 valid points of problem 0"),
        ({"k": True}, TypeError, r"k must be an int or an integer tensor, but got k=True"),
        ({"k": 2.5}, TypeError, r"k must be an int or an integer tensor, but got float"),
        ({"k": torch.tensor([1.0, 2.0])}, TypeError, r"k must be an integer tensor"),
        ({"k": torch.tensor([1, 2, 3])}, ValueError, r"k must be an int or a tensor of the"),
        ({"k": torch.tensor([3, 0])}, ValueError, r"k=0 for problem 1"),
        ({"similarity": "euclid"}, ValueError, r"similarity must be one of .* similarity='euclid'"),
        ({"method": "greedy"}, ValueError, r"method must be one of .* method='greedy'"),
        ({"epsilon": 1.5}, ValueError, r"epsilon must be in \(0, 1\), but got epsilon=1.5"),
        ({"epsilon": True}, TypeError, r"epsilon must be a float"),
        ({"chunk_size": 0}, ValueError, r"chunk_size should be a positive integer value"),
        ({"mask": torch.ones(2, 9, dtype=torch.bool)}, ValueError, r"mask must have shape"),
        ({"mask": torch.ones(2, 10)}, TypeError, r"mask must be a boolean tensor"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    args: dict[str, object] = {"k": 3}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        greedy_facility_location(torch.randn(2, 10, 3), **args)  # type: ignore[arg-type]


def test_bad_features() -> None:
    with pytest.raises(ValueError, match=r"features must have shape \[..., n, d\], but got"):
        greedy_facility_location(torch.randn(5), 1)
    with pytest.raises(TypeError, match=r"features must be a floating-point tensor"):
        greedy_facility_location(torch.ones(4, 2, dtype=torch.long), 1)
    with pytest.raises(TypeError, match=r"features must be a torch.Tensor"):
        greedy_facility_location(np.ones((4, 2)), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"features must be a tensor unless similarity"):
        greedy_facility_location(None, 1)
    bad = torch.randn(3, 6, 2)
    bad[2, 4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"features of problem 2 contain non-finite .* row 4"):
        greedy_facility_location(bad, 2)
    bad = torch.randn(2, 2, 6, 2)
    bad[1, 0, 3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"features of problem \(1, 0\) contain non-finite"):
        greedy_facility_location(bad, 2)
    with pytest.raises(ValueError, match=r"every problem needs at least one point"):
        greedy_facility_location(torch.randn(2, 0, 3), 1)


def test_bad_mask_and_similarity_tensor() -> None:
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match=r"mask selects no points in problem 1"):
        greedy_facility_location(torch.randn(3, 5, 2), 1, mask=mask)
    with pytest.raises(ValueError, match=r"similarity must have shape \[..., n, n\]"):
        greedy_facility_location(None, 1, similarity=torch.rand(4, 5))
    with pytest.raises(ValueError, match=r"pass either features or a precomputed similarity"):
        greedy_facility_location(torch.randn(4, 2), 1, similarity=torch.rand(4, 4))
    sim = torch.rand(4, 4)
    sim[0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"similarity of problem 0 contain non-finite"):
        greedy_facility_location(None, 1, similarity=sim)


# ----------------------------------------------------------------------------------------------
# The compiled lazy greedy
# ----------------------------------------------------------------------------------------------


def lazy_kernel_inputs(
    similarity: str,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Three problems, one of them ragged, one with k = n; features as the kernel gets them."""
    x = rng_features(7, 3, 25, 4)
    mask = np.ones((3, 25), dtype=bool)
    mask[1, 20:] = False
    k = np.array([6, 4, 25])
    feats = x.numpy().astype(np.float64)
    if similarity == "cosine":
        feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    return x, feats, mask, k


def check_lazy_kernel_output(
    similarity: str,
    x: torch.Tensor,
    mask: np.ndarray,
    k: np.ndarray,
    out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    indices, gains, weights, cover = out
    for b in range(len(k)):
        keep = np.flatnonzero(mask[b])
        sim = similarity_matrix(x[b].numpy()[keep], similarity)
        selected, ref_gains, obj = naive_greedy(sim, int(k[b]))
        assert indices[b, : k[b]].tolist() == keep[selected].tolist()
        assert (indices[b, k[b] :] == -1).all()
        np.testing.assert_allclose(gains[b, : k[b]], ref_gains, rtol=1e-12, atol=1e-12)
        assert cover[b].sum() == pytest.approx(obj, rel=1e-12)
        assert weights[b, : k[b]].tolist() == cluster_sizes(sim, selected)


@pytest.mark.parametrize("matrix_max", [25, 0], ids=["matrix", "rows"])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_lazy_kernel_uncompiled_equals_reference(similarity: str, matrix_max: int) -> None:
    """The kernel's source (what numba compiles) is the textbook greedy, also without numba,
    with a stored similarity matrix and with rows recomputed from the features."""
    x, feats, mask, k = lazy_kernel_inputs(similarity)
    indices = np.full((3, 25), -1, dtype=np.int64)
    gains, weights, cover = np.zeros((3, 25)), np.zeros((3, 25)), np.zeros((3, 25))
    # called as Python (its helpers are compiled once numba has been used in this process)
    code = _lazy._KINDS[similarity]
    args = (indices, gains, weights, cover)
    later = np.zeros(3, dtype=bool)
    assert _lazy._solve_all(feats, mask, k, code, 2.0**-52, matrix_max, later, *args) == -1
    check_lazy_kernel_output(similarity, x, mask, k, args)


@pytest.mark.parametrize("similarity", ["neg_distance", "exp"])
def test_lazy_greedy_tightened_bounds_stay_above_the_gains(
    similarity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each pick, _tighten lowers the lazy greedy's bounds; every bound of a candidate
    must stay at or above its exact gain (summed with math.fsum), and the picks and gains must
    be those of the greedy without tightening, with fewer gain evaluations (plain Python)."""
    code = _lazy._KINDS[similarity]
    tighten = getattr(_lazy._tighten, "py_func", _lazy._tighten)
    gain_at = getattr(_lazy._gain_at, "py_func", _lazy._gain_at)
    greedy = getattr(_lazy._greedy, "py_func", _lazy._greedy)
    checked = [0]
    evaluations = [0]

    def checking_tighten(sim, pick, cur, bound, slack):  # type: ignore[no-untyped-def]
        tighten(sim, pick, cur, bound, slack)
        after = np.maximum(cur, sim[pick])
        for j in np.flatnonzero(np.isfinite(bound)):
            exact = math.fsum(np.maximum(sim[j] - after, 0.0))
            assert bound[j] >= exact, (pick, j, bound[j], exact)
            checked[0] += 1

    def counting_gain_at(sim, j, cur):  # type: ignore[no-untyped-def]
        evaluations[0] += 1
        return gain_at(sim, j, cur)

    monkeypatch.setattr(_lazy, "_tighten", checking_tighten)
    monkeypatch.setattr(_lazy, "_gain_at", counting_gain_at)
    clustered = rng_features(3, 6, 1, 10) + 0.2 * rng_features(4, 6, 10, 10)
    problems = [*rng_features(2, 3, 50, 10).double(), *clustered.reshape(3, 20, 10).double()]
    counts, results = {}, {}
    for tightened in (False, True):
        evaluations[0] = 0
        results[tightened] = []
        for x in problems:
            sim, first = _lazy._similarity(np.ascontiguousarray(x.numpy().T), code, 2.0**-52)
            m = len(x)
            indices, gains, weights, cover = np.zeros(13, np.int64), *np.zeros((2, 13)), np.zeros(m)
            rows = np.arange(m)
            greedy(sim, first, 13, 2.0**-52, tightened, rows, indices, gains, weights, cover)
            results[tightened].append((indices.tolist(), gains.tolist(), weights.tolist()))
        counts[tightened] = evaluations[0]
    assert results[True] == results[False]
    assert checked[0] > 500
    assert counts[True] < counts[False]


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_lazy_kernel_without_a_matrix_equals_reference(similarity: str) -> None:
    """Compiled, incremental with rows recomputed from the features (problems above
    _MATRIX_MAX)."""
    x, feats, mask, k = lazy_kernel_inputs(similarity)
    *out, bad = _lazy.solve(feats, mask, k, 25, similarity, 2.0**-52, matrix_max=0)
    assert bad == -1
    check_lazy_kernel_output(similarity, x, mask, k, tuple(out))  # type: ignore[arg-type]


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("matrix_max", [_lazy._MATRIX_MAX, 0], ids=["matrix", "rows"])
def test_lazy_kernel_finds_the_largest_distance_wherever_the_pair_lies(matrix_max: int) -> None:
    """C, the largest distance, is kept in several running maxima over the rows of the distance
    triangle, which are computed in blocks of four rows with the last rows apart: the farthest
    pair at the start, across the blocks, or among the last rows (every n mod 4) gives the
    reference's gains and objective."""
    for n in (9, 10, 11, 12, 50):
        placements = [(0, 1), (1, n - 1), (n - 2, n - 1), (n - 3, n - 1), (n - 4, n - 2)]
        batch = len(placements)
        x = rng_features(n, batch, n, 3) * 0.1
        for b, (i, j) in enumerate(placements):
            x[b, i, 0], x[b, j, 0] = -5.0, 5.0  # the farthest pair, by far
        k = np.full(batch, 4)
        mask = np.ones((batch, n), dtype=bool)
        *out, bad = _lazy.solve(x.numpy(), mask, k, 4, "neg_distance", 2.0**-52, matrix_max)
        assert bad == -1
        check_lazy_kernel_output("neg_distance", x, mask, k, tuple(out))  # type: ignore[arg-type]


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("matrix_max", [_lazy._MATRIX_MAX, 0], ids=["matrix", "rows"])
@pytest.mark.parametrize("similarity", ["neg_distance", "exp"])
def test_lazy_kernel_on_ties_and_duplicates(similarity: str, matrix_max: int) -> None:
    """Duplicated points give equal gains (up to the last bits of exp): the lowest index wins,
    in both modes."""
    base = rng_features(11, 1, 30, 3)[0].numpy().astype(np.float64)
    feats = np.concatenate([base, base[::-1], base[:5]])[None]  # every point at least twice
    mask = np.ones(feats.shape[:2], dtype=bool)
    k = np.array([12])
    indices, gains, weights, _, bad = _lazy.solve(
        feats, mask, k, 12, similarity, 2.0**-52, matrix_max=matrix_max
    )
    assert bad == -1
    sim = similarity_matrix(feats[0], similarity)
    selected, ref_gains, _ = naive_greedy(sim, 12)
    assert indices[0].tolist() == selected
    np.testing.assert_allclose(gains[0], ref_gains, rtol=1e-12)
    assert weights[0].tolist() == cluster_sizes(sim, selected)


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_incremental_kernel_over_several_column_blocks_equals_reference(similarity: str) -> None:
    """The incremental greedy on more points than one column block (_BLOCK), an odd number of
    features (the distance loops take them two at a time), padding, and many picks."""
    assert _lazy._BLOCK < 700
    x = rng_features(13, 1, 700, 5)
    feats = x.numpy().copy()
    if similarity == "cosine":
        feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    mask = np.ones((1, 700), dtype=bool)
    mask[0, ::9] = False
    k = np.array([90])
    *out, bad = _lazy.solve(feats, mask, k, 90, similarity, 2.0**-52, matrix_max=0)
    assert bad == -1
    check_lazy_kernel_output(similarity, x, mask, k, tuple(out))  # type: ignore[arg-type]


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("matrix_max", [_lazy._MATRIX_MAX, 0], ids=["matrix", "rows"])
def test_lazy_kernel_separates_near_ties_like_the_reference(matrix_max: int) -> None:
    """Pairs of points 1e-13 apart: their gains differ far below the kept gains' rounding
    (the incremental greedy's) but above the tie tolerance, so only exact evaluation picks the
    reference's point of each pair."""
    base = rng_features(17, 150, 3).numpy()
    shift = 1e-13 * np.random.default_rng(18).standard_normal(base.shape)
    feats = np.concatenate([base, base + shift])[None]
    mask = np.ones(feats.shape[:2], dtype=bool)
    sim = similarity_matrix(feats[0], "neg_distance")
    selected, ref_gains, _ = naive_greedy(sim, 60)
    indices, gains, *_ = _lazy.solve(
        feats, mask, np.array([60]), 60, "neg_distance", 2.0**-52, matrix_max=matrix_max
    )
    assert indices[0].tolist() == selected
    np.testing.assert_allclose(gains[0], ref_gains, rtol=1e-12)


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_lazy_kernel_with_threads_gives_the_same_result(similarity: str) -> None:
    """Problems above matrix_max split over threads: the same picks, gains, cluster sizes and
    coverage as with one thread, problems below it untouched by the split."""
    feats = rng_features(19, 4, 600, 3).numpy().copy()
    if similarity == "cosine":
        feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    mask = np.ones((4, 600), dtype=bool)
    mask[1, 250:] = False  # below matrix_max: solved in the single kernel call
    mask[2, ::5] = False
    k = np.array([40, 25, 70, 1])
    one = _lazy.solve(feats, mask, k, 70, similarity, 2.0**-52, matrix_max=300)
    for threads in (2, 3):
        split = _lazy.solve(feats, mask, k, 70, similarity, 2.0**-52, 300, threads)
        assert split[4] == one[4] == -1
        for a, b in zip(one[:4], split[:4], strict=True):
            np.testing.assert_array_equal(a, b)
    for b in (0, 2):  # and the reference's picks
        keep = np.flatnonzero(mask[b])
        selected, _, _ = naive_greedy(similarity_matrix(feats[b][keep], similarity), int(k[b]))
        assert one[0][b, : k[b]].tolist() == keep[selected].tolist()


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_lazy_kernel_splits_a_batch_over_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch cut into runs of problems, one per thread: the same outputs as one call, and
    the first non-finite row of the whole batch reported, whichever part it is in."""
    feats = rng_features(23, 7, 40, 3).numpy().copy()
    mask = np.ones((7, 40), dtype=bool)
    mask[2, 30:] = False
    mask[5, ::3] = False
    k = np.array([5, 9, 3, 13, 1, 8, 6])
    one = _lazy.solve(feats, mask, k, 13, "neg_distance", 2.0**-52)
    monkeypatch.setattr(_lazy, "_SPLIT_MIN_WORK", 0)
    for threads in (2, 3, 8):
        split = _lazy.solve(feats, mask, k, 13, "neg_distance", 2.0**-52, threads=threads)
        assert split[4] == -1
        for a, b in zip(one[:4], split[:4], strict=True):
            np.testing.assert_array_equal(a, b)
    feats[6, 0, 1] = np.nan
    feats[4, 39, 0] = np.inf
    *_, bad = _lazy.solve(feats, mask, k, 13, "neg_distance", 2.0**-52, threads=3)
    assert bad == 4 * 40 + 39


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_lazy_kernel_with_threads_reports_the_first_non_finite_row() -> None:
    feats = np.ones((3, 8, 2))
    mask = np.ones((3, 8), dtype=bool)
    mask[0, 3:] = False  # problem 0 below matrix_max, problems 1 and 2 above
    feats[2, 1, 0] = np.nan
    feats[1, 6, 1] = -np.inf
    *_, bad = _lazy.solve(feats, mask, np.array([2, 2, 2]), 2, "neg_distance", 0.1, 4, 2)
    assert bad == 1 * 8 + 6


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("matrix_max", [_lazy._MATRIX_MAX, 0], ids=["matrix", "rows"])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_lazy_kernel_past_the_last_positive_gain(similarity: str, matrix_max: int) -> None:
    """300 points at 10 places, 40 picks: after the tenth every gain is 0 and the picks go to
    the lowest indices left (the incremental greedy then reuses exact gains: nothing moves)."""
    places = rng_features(29, 10, 4).numpy()
    feats = places[np.random.default_rng(30).integers(0, 10, 300)][None]
    if similarity == "cosine":
        feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    mask = np.ones((1, 300), dtype=bool)
    *out, bad = _lazy.solve(feats, mask, np.array([40]), 40, similarity, 2.0**-52, matrix_max)
    assert bad == -1
    check_lazy_kernel_output(
        similarity,
        torch.from_numpy(feats),
        mask,
        np.array([40]),
        tuple(out),  # type: ignore[arg-type]
    )


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("similarity", ["neg_distance", "dot"])
def test_lazy_kernel_rejects_features_too_large_for_float64(similarity: str) -> None:
    """Squared distances or dot products of such points overflow: an error naming the
    problem, never a pick read from garbage (both paths, one and two threads)."""
    feats = rng_features(31, 3, 40, 2).numpy().copy()
    feats[1] *= 1e200
    mask = np.ones((3, 40), dtype=bool)
    k = np.array([5, 5, 5])
    for matrix_max, threads in ((_lazy._MATRIX_MAX, 1), (0, 1), (0, 2)):
        *_, bad = _lazy.solve(feats, mask, k, 5, similarity, 2.0**-52, matrix_max, threads)
        assert bad == -2 - 1
    x = torch.from_numpy(feats)
    with pytest.raises(ValueError, match=r"features of problem 1 are too large for float64"):
        greedy_facility_location(x, 5, similarity=similarity)
    feats[2, 3, 0] = np.nan  # a non-finite value in a later problem does not hide it
    *_, bad = _lazy.solve(feats, mask, k, 5, similarity, 2.0**-52)
    assert bad == -2 - 1


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_lazy_kernel_takes_float32_features_whose_squares_overflow_float32() -> None:
    """float32 values near 1e20 square past float32's range but not float64's: the kernel
    computes in float64, so they are not "too large". Scaled by a power of two (exact in float32
    and in every float64 step), the picks and weights are the same and the gains scale with
    it (``neg_distance``; ``dot``'s gains would scale by 2^132, past the float32 output)."""
    x = rng_features(32, 4, 30, 3).float()
    scale = 2.0**66  # (2^66)² = 2^132 > float32's largest value
    big = x * scale
    assert torch.isinf(big * big).any() and torch.isfinite(big).all()
    for kwargs in ({}, {"mask": torch.ones(4, 30, dtype=torch.bool)}):  # quick and general path
        small_out = greedy_facility_location(x, 6, method="lazy", **kwargs)
        big_out = greedy_facility_location(big, 6, method="lazy", **kwargs)
        torch.testing.assert_close(big_out.indices, small_out.indices, rtol=0, atol=0)
        torch.testing.assert_close(big_out.weights, small_out.weights, rtol=0, atol=0)
        torch.testing.assert_close(big_out.gains, small_out.gains * scale, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["naive", "incremental", "stochastic"])
def test_torch_paths_reject_float32_features_whose_similarities_overflow(method: str) -> None:
    """The PyTorch paths compute in float32 for float32 features: a point with a squared norm
    above float32's largest value / 4 gets an error naming its problem instead of overflowing
    distances; padding may hold such points, and float64 features of the same values work."""
    x = rng_features(33, 3, 20, 4).float()
    big = x.clone()
    big[1, 7] *= 2.0**64  # squared norm about 2^128·|x|²: over the limit
    with pytest.raises(ValueError, match=r"problem 1 are too large for float32 similarities"):
        greedy_facility_location(big, 5, method=method)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 7] = False  # the same point as padding: never read
    padded = greedy_facility_location(big, 5, mask=mask, method="naive")
    reference = greedy_facility_location(x, 5, mask=mask, method="naive")
    torch.testing.assert_close(padded.indices, reference.indices, rtol=0, atol=0)
    near = x.clone()
    near[1, 7] *= 2.0**61  # squared norm about 2^122·|x|²: under the limit, same picks in float64
    torch.testing.assert_close(
        greedy_facility_location(near, 5, method="naive").indices,
        greedy_facility_location(near.double(), 5, method="naive").indices,
        rtol=0,
        atol=0,
    )


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("route", ["matrix", "rows", "stored"])
def test_lazy_kernel_with_a_zero_budget_leaves_that_problem_empty(route: str) -> None:
    """The public function rejects k ≤ 0, but the kernel's own entry points take per-problem
    budgets: a problem with budget 0 gets no picks, no cluster sizes and no coverage (it once
    wrote through an unset index), and the other problems are solved as alone."""
    feats = rng_features(34, 2, 12, 3).numpy()
    mask = np.ones((2, 12), dtype=bool)
    eps = 2.0**-52
    if route == "stored":
        dist = np.sqrt(((feats[:, :, None] - feats[:, None]) ** 2).sum(-1))
        both = _lazy.solve_matrix(dist.copy(), mask, np.array([0, 4]), 4, "neg_distance", 3, eps)
        alone = _lazy.solve_matrix(
            dist[1:].copy(), mask[1:], np.array([4]), 4, "neg_distance", 3, eps
        )
    else:
        matrix_max = _lazy._MATRIX_MAX if route == "matrix" else 0
        *both, bad = _lazy.solve(feats, mask, np.array([0, 4]), 4, "neg_distance", eps, matrix_max)
        assert bad == -1
        *alone, _ = _lazy.solve(
            feats[1:], mask[1:], np.array([4]), 4, "neg_distance", eps, matrix_max
        )
    indices, gains, weights, cover = both
    assert (gains[0] == 0).all()
    assert (indices[0] == -1).all() and (weights[0] == 0).all() and (cover[0] == 0).all()
    for got, want in zip(both, alone, strict=True):
        np.testing.assert_array_equal(got[1:], want)


def ulps_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many float64 values lie between ``a`` and ``b`` (both ≥ 0)."""
    return np.abs(a.view(np.int64) - b.view(np.int64))


def exact_exp(x: float) -> float:
    """exp(x) correctly rounded to float64 (40 digits of Decimal, then one rounding)."""
    with decimal.localcontext() as context:
        context.prec = 40
        return float(decimal.Decimal(x).exp())


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=LAZY.marks), False])
def test_kernel_exp_is_within_one_ulp_of_the_exact_value(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's vectorised exp(−d / dim) against exp correctly rounded, from tiny distances
    to those whose exp is subnormal or 0: the nearest float64 or its neighbour, whatever the C
    library's accuracy; values computed one at a time (the loop's scalar rest) are the same,
    and nothing past ``upto`` is touched."""
    if compiled:
        _lazy._compiled()
    else:  # plain Python, also for the reduction it calls
        for name in ("_exp_neg", "_exp_reduce"):
            function = getattr(_lazy, name)
            monkeypatch.setattr(_lazy, name, getattr(function, "py_func", function))
    exp_neg = _lazy._exp_neg
    rng = np.random.default_rng(5)
    size = 4_000 if compiled else 1_000
    for low, high, dim in [(0, 1e-6, 10), (0, 30, 10), (0, 800, 1), (7000, 7700, 10)]:
        d = rng.uniform(low, high, size + 3)
        d[:3] = [low, high, 0.5 * (low + high)]
        values = d.copy()
        upto = size + 1  # not a multiple of any vector width
        exp_neg(values, upto, dim, np.empty((2, upto)))
        exact = np.array([exact_exp(-v / dim) for v in d[:upto]])
        assert ulps_apart(values[:upto], exact).max() <= 1
        assert (values[upto:] == d[upto:]).all()
        for c in range(0, 200 if compiled else 20):
            one = d[c : c + 1].copy()
            exp_neg(one, 1, dim, np.empty((2, 1)))
            assert one[0] == values[c]
    far = np.array([7460.0, 7000.0])
    exp_neg(far, 2, 10, np.empty((2, 2)))
    assert far[0] == 0.0 and far[1] > 0.0


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_lazy_kernel_reports_the_first_non_finite_valid_row(value: float) -> None:
    feats = np.ones((2, 6, 3))
    mask = np.ones((2, 6), dtype=bool)
    feats[0, 4, 1] = np.nan  # padding: never read
    mask[0, 4] = False
    feats[1, 2, 0] = value
    feats[1, 5, 2] = np.nan
    *_, bad = _lazy.solve(feats, mask, np.array([2, 2]), 2, "neg_distance", 2.0**-52)
    assert bad == 1 * 6 + 2
    with pytest.raises(ValueError, match=r"features of problem 1 contain non-finite .* row 2"):
        greedy_facility_location(
            torch.from_numpy(feats), 2, mask=torch.from_numpy(mask), method="lazy"
        )


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("similarity", ["neg_distance", "exp", "dot"])
def test_quick_lazy_call_equals_the_general_path(
    similarity: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a mask and with an int budget, "auto" and "lazy" skip the PyTorch problem
    description (_prepare): the same result as with an all-True mask (the general path), the
    same dtypes and shapes, and the same errors from the kernel's checks."""
    from coreset_sampler import facility_location

    x = rng_features(21, 2, 3, 40, 6).to(dtype)
    everything = torch.ones(2, 3, 40, dtype=torch.bool)
    general = greedy_facility_location(x, 7, mask=everything, similarity=similarity)  # type: ignore[arg-type]
    prepared: list[object] = []
    prepare = facility_location._prepare

    def spy(*args: object) -> object:
        prepared.append(args)
        return prepare(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(facility_location, "_prepare", spy)
    for method in ("auto", "lazy"):
        quick = greedy_facility_location(x, 7, similarity=similarity, method=method)  # type: ignore[arg-type]
        assert not prepared
        for got, want in zip(quick, general, strict=True):
            assert got.dtype == want.dtype and torch.equal(got, want)
    bad = x.clone()
    bad[1, 2, 9, 4] = math.nan
    with pytest.raises(ValueError, match=r"problem \(1, 2\) contain non-finite .* row 9"):
        greedy_facility_location(bad, 7, similarity=similarity)  # type: ignore[arg-type]
    # anything else takes the general path, with its checks
    for k in (0, 41, True):
        with pytest.raises((ValueError, TypeError), match="k"):
            greedy_facility_location(x, k, similarity=similarity)  # type: ignore[arg-type]
    assert len(prepared) == 3
    greedy_facility_location(x.half(), 7, similarity=similarity)  # type: ignore[arg-type]
    assert len(prepared) == 4


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("matrix_max", [_lazy._MATRIX_MAX, 0], ids=["lazy", "incremental"])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_lazy_kernel_on_a_stored_matrix_equals_reference(similarity: str, matrix_max: int) -> None:
    """solve_matrix (distances or dot products given): the naive greedy's picks, gains, cluster
    sizes and objective on each problem's valid rows, with both greedy strategies; only the
    lower triangle of the valid rows and columns is read (NaN elsewhere changes nothing)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 40, 70))
    if similarity == "cosine":
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
    mask = np.ones((3, 40), dtype=bool)
    mask[1, 30:] = False
    mask[2, ::7] = False
    k = np.array([7, 5, 34])
    if similarity in ("neg_distance", "exp"):
        raw = np.sqrt(((x[:, :, None] - x[:, None]) ** 2).sum(-1))
    else:
        raw = x @ x.transpose(0, 2, 1)
    given = raw.copy()
    given[:, ~np.tri(40, dtype=bool)] = np.nan  # the upper triangle is never read ...
    given[~mask] = np.nan  # ... nor are padding rows and columns
    given.transpose(0, 2, 1)[~mask] = np.nan
    indices, gains, weights, cover = _lazy.solve_matrix(
        given, mask, k, 34, similarity, 70, 2.0**-52, matrix_max
    )
    for b in range(3):
        keep = np.flatnonzero(mask[b])
        r = raw[b][np.ix_(keep, keep)]
        sim = {"neg_distance": r.max() - r, "exp": np.exp(-r / 70)}.get(similarity, r)
        selected, ref_gains, obj = naive_greedy(sim, int(k[b]))
        assert indices[b, : k[b]].tolist() == keep[selected].tolist()
        assert (indices[b, k[b] :] == -1).all()
        np.testing.assert_allclose(gains[b, : k[b]], ref_gains, rtol=1e-12, atol=1e-12)
        assert weights[b, : k[b]].tolist() == cluster_sizes(sim, selected)
        assert cover[b].sum() == pytest.approx(obj, rel=1e-12)
        assert (cover[b, ~mask[b]] == 0).all()


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_auto_with_many_features_runs_the_kernel_on_matrix_products(
    similarity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above 64 features (float32) "auto" computes the distances with one float64 matrix
    product and runs the compiled greedy on them: the naive method's picks on ragged problems
    (NaN in padding rows allowed), and the kernel's error for non-finite valid rows. float64
    features keep their distances from differences (the kernel's own), whose precision does not
    depend on the points' norms."""
    calls: list[tuple[int, ...]] = []
    solve_matrix = _lazy.solve_matrix

    def spy(raw: np.ndarray, *args: object) -> object:
        calls.append(raw.shape)
        return solve_matrix(raw, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_lazy, "solve_matrix", spy)
    x = rng_features(12, 4, 60, 80).float()
    if similarity in ("neg_distance", "exp"):
        x += 30.0  # (distances are computed from the centred points)
    mask = torch.ones(4, 60, dtype=torch.bool)
    mask[1, 45:] = False
    x[1, 50] = math.nan
    k = torch.tensor([9, 4, 60, 1])
    auto = greedy_facility_location(x, k, mask=mask, similarity=similarity)  # type: ignore[arg-type]
    assert calls == [(4, 60, 60)]
    naive = greedy_facility_location(x, k, mask=mask, similarity=similarity, method="naive")  # type: ignore[arg-type]
    assert torch.equal(auto.indices, naive.indices) and torch.equal(auto.weights, naive.weights)
    torch.testing.assert_close(auto.objective, naive.objective)
    bad = x.clone()
    bad[2, 7, 3] = math.inf
    with pytest.raises(ValueError, match=r"features of problem 2 contain non-finite .* row 7"):
        greedy_facility_location(bad, 3, mask=mask, similarity=similarity)  # type: ignore[arg-type]
    if similarity in ("neg_distance", "exp"):
        # float64 points far from the origin: differences, the same picks as the naive method
        far = rng_features(13, 2, 60, 65) * 0.01 + 1e5
        lazy = greedy_facility_location(far, 10, similarity=similarity, method="lazy")  # type: ignore[arg-type]
        naive = greedy_facility_location(far, 10, similarity=similarity, method="naive")  # type: ignore[arg-type]
        assert torch.equal(lazy.indices, naive.indices)
        assert len(calls) == 1
    # a [B, n, n] matrix above _DENSE_MAX_ELEMENTS keeps "auto" on the PyTorch path
    monkeypatch.setattr("coreset_sampler.facility_location._DENSE_MAX_ELEMENTS", 4 * 60 * 60 - 1)
    greedy_facility_location(x, k, mask=mask, similarity=similarity)  # type: ignore[arg-type]
    assert len(calls) == 1


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_auto_uses_the_lazy_kernel_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    solve = _lazy.solve

    def spy(feats: np.ndarray, *args: object, **kwargs: object) -> object:
        calls.append(feats.shape)
        assert kwargs == {"threads": torch.get_num_threads()}
        return solve(feats, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_lazy, "solve", spy)
    x = rng_features(3, 50, 50, 10).float()
    auto = greedy_facility_location(x, 13)
    assert calls == [(50, 50, 10)]
    naive = greedy_facility_location(x, 13, method="naive")
    assert torch.equal(auto.indices, naive.indices) and torch.equal(auto.weights, naive.weights)
    torch.testing.assert_close(auto.objective, naive.objective)
    assert auto.gains.dtype == torch.float32 and auto.indices.dtype == torch.long
    # a precomputed similarity or a chunk size keeps auto on the PyTorch paths
    greedy_facility_location(x, 13, chunk_size=16)
    greedy_facility_location(None, 3, similarity=torch.rand(2, 9, 9))
    assert len(calls) == 1


def test_lazy_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = torch.rand(2, 9, 9)
    if HAS_NUMBA:
        with pytest.raises(ValueError, match="method='lazy' works from features"):
            greedy_facility_location(None, 3, similarity=sim, method="lazy")
    # without numba: a clear ImportError for "lazy", and "auto" falls back to PyTorch
    monkeypatch.setattr(_lazy, "_kernel", None)
    monkeypatch.setattr(_lazy, "_import_error", ImportError("No module named 'numba'"))
    assert not _lazy.available()
    x = rng_features(1, 4, 30, 5)
    with pytest.raises(ImportError, match=r"method='lazy' needs numba \(pip install numba"):
        greedy_facility_location(x, 3, method="lazy")
    out = greedy_facility_location(x, 3)
    ref = greedy_facility_location(x, 3, method="naive")
    assert torch.equal(out.indices, ref.indices)
