"""Tests of greedy_facility_location (its entry, dispatch and PyTorch solvers) against plain
references."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from coreset_sampler.kernels import FacilityLocationResult, greedy_facility_location
from coreset_sampler.kernels import facility_location as fl
from coreset_sampler.kernels.facility_location import _incremental, _lazy, _torch

from ._reference import (
    EXACT_METHODS,
    HAS_NUMBA,
    SIMILARITIES,
    TORCH_METHODS,
    brute_force_optimum,
    cluster_sizes,
    had_ties,
    naive_greedy,
    objective,
    rng_features,
    shared_cluster_sizes,
    similarity_matrix,
)

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


def test_auto_with_chunk_size_on_a_small_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    """chunk_size forbids the dense matrix, so "auto" must pick neither the naive path nor the
    compiled one, and the incremental one must build no n×n matrix."""
    x = rng_features(8, 3, 40, 5)
    dense = greedy_facility_location(x, 6)
    used: list[str] = []
    prepare = _torch.prepare

    def spy(problem: fl.Problem, method: str) -> _torch.TorchProblem:
        used.append(method)
        work = prepare(problem, method)
        assert work.dense is None
        return work

    for module in (fl._naive, fl._incremental, fl._stochastic):
        monkeypatch.setattr(module, "prepare", spy)
    monkeypatch.setitem(fl._SOLVERS, ("lazy", "cpu"), None)  # (would fail if chosen)
    chunked = greedy_facility_location(x, 6, chunk_size=16)
    assert used == ["incremental"]
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


def test_clustered_data_uses_pruning_and_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Well-separated clusters: the triangle-inequality pruning computes far fewer similarity
    entries for the gains' corrections than correcting whole rows would (counted), with the
    naive greedy's picks."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((25, 4)) * 20
    x = torch.from_numpy(centres[rng.integers(0, 25, 1500)] + rng.standard_normal((1500, 4)))
    computed = [0]

    def counting(function: Any) -> Any:
        def count(*args: Any) -> torch.Tensor:
            block: torch.Tensor = function(*args)
            computed[0] += block.numel()
            return block

        return count

    for name in ("_rows", "_sub_block"):  # the similarity entries of the corrections
        monkeypatch.setattr(_incremental, name, counting(getattr(_incremental, name)))
    out = greedy_facility_location(x, 60, method="incremental", chunk_size=64)
    pruned = computed[0]
    selected, _, obj = naive_greedy(similarity_matrix(x.numpy(), "neg_distance"), 60)
    assert out.indices.tolist() == selected
    assert out.objective.item() == pytest.approx(obj, rel=1e-12)
    computed[0] = 0
    monkeypatch.setattr(_incremental, "_pruned_update", _incremental._batched_update)
    whole_rows = greedy_facility_location(x, 60, method="incremental", chunk_size=64)
    assert whole_rows.indices.tolist() == selected
    assert pruned < 0.7 * computed[0], (pruned, computed[0])  # 0.56 here


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
        if method == "stochastic":
            continue  # (its random stream runs through the batch: a problem alone differs)
        # a problem solved alone picks what it picks in a batch
        single = greedy_facility_location(
            x[b : b + 1],
            k,
            similarity=similarity,  # type: ignore[arg-type]
            method=method,  # type: ignore[arg-type]
        )
        assert single.indices[0].tolist() == picked
        assert torch.equal(single.weights[0], out.weights[b])
    if method == "stochastic":  # the same generator seed gives the same picks
        again = greedy_facility_location(x, k, similarity=similarity, method="stochastic")  # type: ignore[arg-type]
        assert torch.equal(again.indices, out.indices)


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
    # "lowest index" depends on the order, and the greedy may go another way after a tie
    assume(not had_ties(similarity_matrix(x.numpy(), "neg_distance"), k))
    out = greedy_facility_location(x, k, method=method)  # type: ignore[arg-type]
    moved = greedy_facility_location(x[perm], k, method=method)  # type: ignore[arg-type]
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
        ({"k": 0}, ValueError, r"k should be positive, but got k=0 for problem 0"),
        ({"k": -2}, ValueError, r"k should be positive, but got k=-2"),
        ({"k": 11}, ValueError, r"k=11 exceeds the 10 valid points of problem 0"),
        ({"k": True}, TypeError, r"k should be an int or an integer tensor, but got k=True"),
        ({"k": 2.5}, TypeError, r"k should be an int or an integer tensor, but got float"),
        ({"k": torch.tensor([1.0, 2.0])}, TypeError, r"k should be an integer tensor"),
        ({"k": torch.tensor([1, 2, 3])}, ValueError, r"k should be an int or a tensor of the"),
        ({"k": torch.tensor([3, 0])}, ValueError, r"k=0 for problem 1"),
        (
            {"similarity": "euclid"},
            ValueError,
            r"similarity should be one of .* similarity='euclid'",
        ),
        ({"method": "greedy"}, ValueError, r"method should be one of .* method='greedy'"),
        ({"epsilon": 1.5}, ValueError, r"epsilon should be in \(0, 1\), but got epsilon=1.5"),
        (
            {"epsilon": True},
            TypeError,
            r"epsilon should be a number in \(0, 1\), but got epsilon=True",
        ),
        ({"chunk_size": 0}, ValueError, r"chunk_size should be a positive integer value"),
        ({"mask": torch.ones(2, 9, dtype=torch.bool)}, ValueError, r"mask should have shape"),
        ({"mask": torch.ones(2, 10)}, TypeError, r"mask should be a boolean tensor"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    args: dict[str, object] = {"k": 3}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        greedy_facility_location(torch.randn(2, 10, 3), **args)  # type: ignore[arg-type]


def test_bad_features() -> None:
    with pytest.raises(ValueError, match=r"features should have shape \[..., n, d\], but got"):
        greedy_facility_location(torch.randn(5), 1)
    with pytest.raises(TypeError, match=r"features should be a floating-point tensor"):
        greedy_facility_location(torch.ones(4, 2, dtype=torch.long), 1)
    with pytest.raises(TypeError, match=r"features should be a torch.Tensor"):
        greedy_facility_location(np.ones((4, 2)), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"features should be a tensor unless similarity"):
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
    with pytest.raises(ValueError, match=r"similarity should have shape \[..., n, n\]"):
        greedy_facility_location(None, 1, similarity=torch.rand(4, 5))
    with pytest.raises(ValueError, match=r"pass either features or a precomputed similarity"):
        greedy_facility_location(torch.randn(4, 2), 1, similarity=torch.rand(4, 4))
    sim = torch.rand(4, 4)
    sim[0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"similarity of problem 0 contain non-finite"):
        greedy_facility_location(None, 1, similarity=sim)


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
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("similarity", ["neg_distance", "exp", "dot"])
def test_the_common_call_builds_nothing_and_equals_the_general_path(
    similarity: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a mask and with an int budget (CREST's selection), the call's description holds
    no mask or budget tensor and never reaches the PyTorch preparation: the same result as with
    an all-True mask, the same dtypes and shapes, and the same errors from the kernel's
    checks."""
    x = rng_features(21, 2, 3, 40, 6).to(dtype)
    everything = torch.ones(2, 3, 40, dtype=torch.bool)
    general = greedy_facility_location(x, 7, mask=everything, similarity=similarity)  # type: ignore[arg-type]
    described: list[fl.Problem] = []
    prepared: list[object] = []
    describe, prepare = fl.describe, _torch.prepare

    def spy_describe(*args: object) -> fl.Problem:
        described.append(describe(*args))  # type: ignore[arg-type]
        return described[-1]

    def spy_prepare(*args: object) -> object:
        prepared.append(args)
        return prepare(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(fl, "describe", spy_describe)
    for module in (fl._naive, fl._incremental, fl._stochastic):
        monkeypatch.setattr(module, "prepare", spy_prepare)
    for method in ("auto", "lazy"):
        quick = greedy_facility_location(x, 7, similarity=similarity, method=method)  # type: ignore[arg-type]
        assert described[-1].mask is None and described[-1].k == 7
        for got, want in zip(quick, general, strict=True):
            assert got.dtype == want.dtype and torch.equal(got, want)
    assert not prepared
    bad = x.clone()
    bad[1, 2, 9, 4] = math.nan
    with pytest.raises(ValueError, match=r"problem \(1, 2\) contain non-finite .* row 9"):
        greedy_facility_location(bad, 7, similarity=similarity)  # type: ignore[arg-type]
    # any other budget is checked
    for k in (0, 41, True):
        with pytest.raises((ValueError, TypeError), match="k"):
            greedy_facility_location(x, k, similarity=similarity)  # type: ignore[arg-type]
    half = greedy_facility_location(x.half(), 7, similarity=similarity)  # type: ignore[arg-type]
    assert half.gains.dtype == torch.float32 and not prepared


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
    monkeypatch.setattr(_lazy, "DENSE_MAX_ELEMENTS", 4 * 60 * 60 - 1)
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
    monkeypatch.setattr(_lazy._jit, "ENABLED", False)
    monkeypatch.setattr(_lazy._jit, "IMPORT_ERROR", ImportError("No module named 'numba'"))
    assert not _lazy.available()
    x = rng_features(1, 4, 30, 5)
    with pytest.raises(ImportError, match=r"method='lazy' needs numba \(pip install numba"):
        greedy_facility_location(x, 3, method="lazy")
    out = greedy_facility_location(x, 3)
    ref = greedy_facility_location(x, 3, method="naive")
    assert torch.equal(out.indices, ref.indices)


def test_budgets_as_tensors_and_against_a_mask() -> None:
    x = rng_features(30, 2, 10, 3)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False  # 6 valid points in problem 1
    with pytest.raises(ValueError, match=r"k=7 exceeds the 6 valid points of problem 1"):
        greedy_facility_location(x, 7, mask=mask)
    for k in (torch.tensor(3), torch.tensor([3, 3], dtype=torch.int32)):  # 0-d, int32
        zero_d = fl.describe(x, torch.tensor(3, dtype=torch.int32), mask, "dot", 0.1, None)
        assert isinstance(zero_d.k, torch.Tensor) and zero_d.k.dtype == torch.int64
        out = greedy_facility_location(x, k, mask=mask, method="naive")
        assert out.indices.shape == (2, 3) and out.indices.dtype == torch.int64
        assert torch.equal(out.indices, greedy_facility_location(x, 3, mask=mask).indices)
    problem = fl.describe(x, torch.tensor([2, 3], dtype=torch.int32), mask, "dot", 0.1, None)
    assert isinstance(problem.k, torch.Tensor) and problem.k.dtype == torch.int64
    assert (problem.kmin, problem.kmax) == (2, 3)
    for bad in (torch.tensor([True, False]), torch.tensor([1 + 0j, 2 + 0j])):
        with pytest.raises(TypeError, match="k should be an integer tensor"):
            greedy_facility_location(x, bad)


def test_a_precomputed_similarity_must_be_square_in_every_problem() -> None:
    with pytest.raises(ValueError, match=r"similarity should have shape \[..., n, n\]"):
        greedy_facility_location(None, 1, similarity=torch.rand(3, 4, 5))
    out = greedy_facility_location(None, 2, similarity=torch.rand(3, 5, 5), method="naive")
    assert out.indices.shape == (3, 2)


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_auto_compiles_in_the_background_and_serves_with_pytorch_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the kernel is compiled for a dtype, "auto" starts compiling it in a background
    thread (once) and answers with a PyTorch solver in the kernel's arithmetic: the same
    picks, no stall."""
    import threading

    monkeypatch.setattr(_lazy, "_compiled_for", set())
    monkeypatch.setattr(_lazy, "_compiling", {})
    gate = threading.Event()
    compiled: list[torch.dtype] = []

    def slow_compile(dtype: torch.dtype) -> None:
        gate.wait(5.0)
        compiled.append(dtype)
        _lazy._compiled_for.add(dtype)

    monkeypatch.setattr(_lazy, "compile_now", slow_compile)
    used: list[str] = []
    for key, solver in list(fl._SOLVERS.items()):
        monkeypatch.setitem(
            fl._SOLVERS, key, lambda p, g, name=key[0], f=solver: used.append(name) or f(p, g)
        )
    x = rng_features(40, 4, 30, 5).float()
    first = greedy_facility_location(x, 6)
    second = greedy_facility_location(x, 6)
    assert used == ["naive-like-lazy"] * 2 and len(_lazy._compiling) == 1  # one thread started
    gate.set()
    _lazy._compiling[torch.float32].join(5.0)
    assert compiled == [torch.float32]
    third = greedy_facility_location(x, 6)
    assert used[-1] == "lazy"
    assert torch.equal(first.indices, third.indices) and torch.equal(second.weights, third.weights)
    explicit = greedy_facility_location(x.double(), 6, method="lazy")  # compiles right away
    assert torch.equal(explicit.indices, third.indices)


@pytest.fixture
def unloaded_kernel(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The compiled kernel as in a fresh process (not imported, not compiled, no PyTorch time
    counted), every solve taking 0.1 s on a fake clock, LOAD_AFTER_S = 0.25, compilations held
    until ``gate`` is set; records the solvers used, the imports and the compilations."""
    import itertools
    import threading
    from types import SimpleNamespace

    state: dict[str, object] = {"gate": threading.Event(), "used": [], "imported": [],
                                "compiled": []}  # fmt: skip
    real_import = importlib.import_module

    def import_module(name: str) -> object:
        if name == fl._LAZY:
            state["imported"].append(name)  # type: ignore[attr-defined]
            state["imported_in"] = threading.current_thread()
            if state.get("import_fails"):
                raise ImportError("cannot import the kernel")
        return real_import(name)

    def compile_now(dtype: torch.dtype) -> None:
        state["gate"].wait(5.0)  # type: ignore[attr-defined]
        state["compiled"].append(dtype)  # type: ignore[attr-defined]
        state["compiled_in"] = threading.current_thread()
        _lazy._compiled_for.add(dtype)

    fl._numba_installed()  # (cached before importlib is replaced below)
    clock = itertools.count(step=0.1)
    monkeypatch.setattr(fl, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(fl, "importlib", SimpleNamespace(import_module=import_module))
    monkeypatch.setattr(fl, "LOAD_AFTER_S", 0.25)
    for name, value in (("_pytorch_seconds", 0.0), ("_last_call", (0.0, 1)), ("_module", None),
                        ("_load_failed", False), ("_waited", set())):  # fmt: skip
        monkeypatch.setattr(fl, name, value)
    monkeypatch.setattr(_lazy, "_compiled_for", set())
    monkeypatch.setattr(_lazy, "_compiling", {})
    monkeypatch.setattr(_lazy, "compile_now", compile_now)
    for key, solver in list(fl._SOLVERS.items()):
        monkeypatch.setitem(
            fl._SOLVERS, key,
            lambda p, g, name=key[0], f=solver: state["used"].append(name) or f(p, g),
        )  # fmt: skip
    return state


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_auto_loads_the_compiled_kernel_once_pytorch_has_served_long_enough(
    unloaded_kernel: dict[str, object],
) -> None:
    """Until the PyTorch solvers have spent LOAD_AFTER_S seconds on problems the compiled kernel
    would take, "auto" does not load it (a short run does not pay numba's import); the call
    that crosses it imports it and starts compiling it for its dtype in the background, nothing
    waits for the compilation after a short call, and the PyTorch solver in the kernel's
    arithmetic answers meanwhile; once compiled, the kernel serves, with the same picks."""
    used, imported, compiled = (unloaded_kernel[k] for k in ("used", "imported", "compiled"))
    x = rng_features(41, 4, 30, 5).float()
    first = greedy_facility_location(x, 6)
    greedy_facility_location(x, 6)
    assert imported == [] and fl._pytorch_seconds == pytest.approx(0.2)  # not yet
    greedy_facility_location(x, 6, chunk_size=8)  # (a problem the kernel does not take)
    assert imported == [] and fl._pytorch_seconds == pytest.approx(0.2)
    greedy_facility_location(x, 6)  # crosses LOAD_AFTER_S: imports, starts compiling
    assert imported == [fl._LAZY] and fl._module is _lazy
    import threading

    assert unloaded_kernel["imported_in"] is threading.current_thread()  # (not in a thread)
    thread = _lazy._compiling[torch.float32]
    assert thread.is_alive() and compiled == []
    second = greedy_facility_location(x, 6)  # (would hang 5 s here if it waited)
    assert used == ["naive-like-lazy"] * 2 + ["incremental"] + ["naive-like-lazy"] * 2
    unloaded_kernel["gate"].set()  # type: ignore[attr-defined]
    thread.join(5.0)
    assert compiled == [torch.float32] and imported == [fl._LAZY]  # once
    third = greedy_facility_location(x, 6)
    assert used[-1] == "lazy" and fl._pytorch_seconds == pytest.approx(0.4)
    assert torch.equal(first.indices, third.indices) and torch.equal(second.weights, third.weights)


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_auto_waits_for_the_compilation_once_and_only_for_a_problem_pytorch_would_take_long_on(
    unloaded_kernel: dict[str, object],
) -> None:
    """After a PyTorch call longer than LOAD_AFTER_S (a large problem), the next call of that
    size waits up to as long for the compilation under way rather than run PyTorch again; a
    small problem does not wait, and a compilation that outlasts the wait is waited for once
    per dtype, not before every call."""
    import threading
    import time

    large = rng_features(42, 2, 30, 5).float()
    small = large[:1, :10]
    greedy_facility_location(large, 6)
    problem = fl.describe(large, 6, None, "neg_distance", 0.1, None)
    fl._served_by_pytorch(2.0, problem)  # (as if this problem had taken PyTorch 2 s)
    assert fl._module is _lazy and torch.float32 in _lazy._compiling
    start = time.perf_counter()
    greedy_facility_location(small, 3)  # 1/18 of the work: about 0.1 s, no wait
    assert time.perf_counter() - start < 1.0 and fl._waited == set()
    threading.Timer(0.2, unloaded_kernel["gate"].set).start()  # type: ignore[attr-defined]
    greedy_facility_location(large, 6)  # waits for the compilation
    assert unloaded_kernel["used"] == ["naive-like-lazy"] * 2 + ["lazy"]
    assert fl._waited == {torch.float32}
    # float64: its compilation held; one bounded wait (the estimate), then no more waiting
    unloaded_kernel["gate"].clear()  # type: ignore[attr-defined]
    fl._served_by_pytorch(0.6, fl.describe(large.double(), 6, None, "neg_distance", 0.1, None))
    start = time.perf_counter()
    greedy_facility_location(large.double(), 6)
    assert 0.5 < time.perf_counter() - start < 3.0 and fl._waited == {torch.float32, torch.float64}
    fl._served_by_pytorch(0.6, fl.describe(large.double(), 6, None, "neg_distance", 0.1, None))
    start = time.perf_counter()
    greedy_facility_location(large.double(), 6)  # (as long a problem, but waited for once)
    assert time.perf_counter() - start < 0.5
    assert unloaded_kernel["used"][-2:] == ["naive-like-lazy"] * 2
    unloaded_kernel["gate"].set()  # type: ignore[attr-defined]
    _lazy._compiling[torch.float64].join(5.0)


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_load_compiled_kernel_makes_auto_use_it_from_the_next_call(
    unloaded_kernel: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    unloaded_kernel["gate"].set()  # type: ignore[attr-defined]
    assert fl.load_compiled_kernel(torch.float32) is True
    assert unloaded_kernel["imported"] == [fl._LAZY]
    assert unloaded_kernel["compiled"] == [torch.float32]
    assert unloaded_kernel["compiled_in"] is threading.main_thread()  # (now, here)
    greedy_facility_location(rng_features(44, 2, 30, 5).float(), 6)
    assert unloaded_kernel["used"] == ["lazy"] and fl._pytorch_seconds == 0.0
    with pytest.raises(ValueError, match=r"dtype should be torch\.float32 or torch\.float64"):
        fl.load_compiled_kernel(torch.float16)
    monkeypatch.setattr(_lazy._jit, "ENABLED", False)
    assert fl.load_compiled_kernel(torch.float64) is False
    assert unloaded_kernel["compiled"] == [torch.float32]


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_auto_without_a_usable_numba_never_changes_solver(
    unloaded_kernel: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """numba installed but broken: the kernel's module loads, says it cannot run, and "auto"
    keeps the solver it used before (no timing-dependent switch to the float32 naive greedy).
    numba not installed: nothing is imported."""
    import logging

    monkeypatch.setattr(_lazy._jit, "ENABLED", False)
    monkeypatch.setattr(_lazy._jit, "IMPORT_ERROR", ImportError("numba is broken"))
    x = rng_features(43, 3, 30, 5).float()
    with caplog.at_level(logging.WARNING, logger=fl.__name__):
        for _ in range(4):
            greedy_facility_location(x, 6)
    assert unloaded_kernel["imported"] == [fl._LAZY] and _lazy._compiling == {}
    assert unloaded_kernel["used"] == ["naive-like-lazy"] * 4
    said = [r.getMessage() for r in caplog.records if "does not import" in r.getMessage()]
    assert said == ["numba is installed but does not import (numba is broken): the "
                    "facility-location greedy runs in PyTorch"]  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=fl.__name__):
        assert fl.load_compiled_kernel() is False  # (and says why)
    assert [r.getMessage() for r in caplog.records] == said
    monkeypatch.setattr(fl, "_module", None)
    monkeypatch.setattr(fl, "_numba_installed", lambda: False)
    for _ in range(4):
        greedy_facility_location(x, 6)
    assert unloaded_kernel["imported"] == [fl._LAZY] and fl._module is None
    assert unloaded_kernel["used"][4:] == ["naive"] * 4


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_auto_after_a_failed_import_warns_once_and_stays_on_pytorch(
    unloaded_kernel: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    unloaded_kernel["import_fails"] = True
    x = rng_features(45, 3, 30, 5).float()
    with caplog.at_level(logging.WARNING, logger=fl.__name__):
        for _ in range(5):
            greedy_facility_location(x, 6)
    assert unloaded_kernel["imported"] == [fl._LAZY]  # tried once, not again
    assert fl._load_failed and fl._module is None
    assert unloaded_kernel["used"] == ["naive-like-lazy"] * 5
    assert [r.getMessage() for r in caplog.records] == [
        "loading the compiled facility-location kernel failed"
    ]


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_picks_made_while_the_kernel_loads_are_the_kernels_on_near_ties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run's picks must not depend on when the compiled kernel has loaded. These 45 problems
    (CREST's per-class pools of 30 float32 gradient proxies of a Fashion-MNIST MLP and CNN
    being trained, 12 picks each) are those of 15,442 where the float32 naive greedy broke a
    near-tie between gains otherwise than the compiled kernel; what "auto" runs meanwhile
    picks as the kernel does on all of them."""
    x = torch.from_numpy(np.load(Path(__file__).parents[1] / "data" / "near_tie_proxies.npy"))
    assert x.shape == (45, 30, 10) and x.dtype == torch.float32
    lazy = greedy_facility_location(x, 12, method="lazy", ties="share")
    plain = greedy_facility_location(x, 12, method="naive", ties="share")
    # (the reason for the rule; the kernel's float64 sums may round otherwise on another CPU)
    assert bool((plain.indices != lazy.indices).any(-1).any())
    monkeypatch.setattr(_lazy, "ready", lambda dtype, wait=0.0: False)  # still loading
    meanwhile = greedy_facility_location(x, 12, ties="share")
    assert torch.equal(meanwhile.indices, lazy.indices)
    assert torch.equal(meanwhile.weights, lazy.weights)


# ----------------------------------------------------------------------------------------------
# ties="share"
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [*EXACT_METHODS, "stochastic"])
@pytest.mark.parametrize("kind", SIMILARITIES)
def test_shared_ties_split_each_point_among_its_most_similar_picks(method: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    for trial in range(6):
        # duplicated points (a few distinct rows, repeated): ties everywhere
        distinct = rng.standard_normal((int(rng.integers(1, 5)), 3))
        x = torch.from_numpy(distinct[rng.integers(0, len(distinct), 24)])
        k = int(rng.integers(1, 9))
        lowest = greedy_facility_location(x, k, similarity=kind, method=method)
        shared = greedy_facility_location(x, k, similarity=kind, method=method, ties="share")
        assert torch.equal(shared.indices, lowest.indices), trial
        assert torch.equal(shared.gains, lowest.gains) and torch.equal(
            shared.objective, lowest.objective
        )
        sim = similarity_matrix(x.numpy(), kind)
        expected = shared_cluster_sizes(sim, shared.indices.tolist())
        np.testing.assert_allclose(shared.weights.numpy(), expected, rtol=0, atol=1e-12)
        assert float(shared.weights.sum()) == pytest.approx(24.0)


def test_shared_ties_on_identical_points_and_in_batches_with_masks() -> None:
    same = greedy_facility_location(torch.zeros(30, 4), 10, ties="share")
    assert same.weights.tolist() == [3.0] * 10  # "lowest" gives [30, 0, ..., 0]
    assert greedy_facility_location(torch.zeros(30, 4), 10).weights.tolist() == [30.0] + [0.0] * 9
    pools = rng_features(5, 4, 20, 5).float()
    mask = torch.ones(4, 20, dtype=torch.bool)
    mask[1, 15:] = False
    k = torch.tensor([5, 3, 20, 1])
    a = greedy_facility_location(pools, k, mask=mask)
    b = greedy_facility_location(pools, k, mask=mask, ties="share")
    # no ties in random data: the same weights, padding and unused picks included
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
    with pytest.raises(ValueError, match=r"ties should be one of \('lowest', 'share'\)"):
        greedy_facility_location(pools, 2, ties="even")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", [*EXACT_METHODS, "stochastic"])
def test_numpy_integers_detached_results_and_clear_errors(method: str) -> None:
    x = rng_features(0, 20, 3).float()
    plain = greedy_facility_location(x, 3, method=method)
    numpy_k = greedy_facility_location(x, np.int64(3), method=method)  # as torch accepts them
    assert torch.equal(numpy_k.indices, plain.indices)
    graph = greedy_facility_location(x.clone().requires_grad_(), 3, method=method)
    assert not any(t.requires_grad for t in graph)  # no path returns a graph
    assert torch.equal(graph.indices, plain.indices)
    with pytest.raises(ValueError, match=r"at least one feature per point \(d ≥ 1\)"):
        greedy_facility_location(torch.zeros(5, 0), 2, method=method)
    with pytest.raises(TypeError, match=r"generator should be a torch.Generator, but got numpy"):
        greedy_facility_location(x, 3, method=method, generator=np.random.default_rng(0))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", SIMILARITIES)
def test_exact_methods_pick_alike_on_duplicated_float64_points(kind: str) -> None:
    # many exact ties, broken alike (lowest index) by every exact method; naive once summed
    # Σ max(s, cur), whose rounding ordered tied "dot" gains differently (2 of these 400)
    gen = torch.Generator().manual_seed(0)
    methods = ["incremental", *(["lazy"] if HAS_NUMBA else [])]
    for trial in range(400):
        n = int(torch.randint(6, 40, (1,), generator=gen))
        d = int(torch.randint(1, 6, (1,), generator=gen))
        k = int(torch.randint(1, n + 1, (1,), generator=gen))
        base = torch.randn(max(2, n // 3), d, generator=gen, dtype=torch.float64)
        x = base[torch.randint(0, base.shape[0], (n,), generator=gen)]
        if trial % 2:
            x = torch.round(x * 2) / 2  # grid points: exact ties
        ref = greedy_facility_location(x, k, similarity=kind, method="naive")
        for method in methods:
            out = greedy_facility_location(x, k, similarity=kind, method=method)
            assert out.indices.tolist() == ref.indices.tolist(), (trial, method)
            assert torch.equal(out.weights, ref.weights), (trial, method)


@pytest.mark.parametrize("method", [*EXACT_METHODS, "stochastic"])
@pytest.mark.parametrize(("d", "scale"), [(4, 1e-30), (65, 1e-25), (4, 1e15)])
def test_float32_features_at_extreme_scales_pick_as_unscaled(
    method: str, d: int, scale: float
) -> None:
    # float32 squared differences underflow below about 1e-19 per coordinate: distances are
    # computed in float64 and rounded once (they were all 0: weights [20, 0, 0, 0])
    x = rng_features(4, 20, d)
    ref = greedy_facility_location(x, 4, method=method)
    out = greedy_facility_location((x * scale).float(), 4, method=method)
    assert out.indices.tolist() == ref.indices.tolist()
    assert out.weights.tolist() == ref.weights.tolist()


def test_meta_tensors_are_refused_by_name() -> None:
    x = torch.randn(5, 3)
    meta = torch.device("meta")
    message = r"is on the meta device, which holds no values"
    with pytest.raises(ValueError, match=rf"features {message}"):
        greedy_facility_location(x.to(meta), 2)
    with pytest.raises(ValueError, match=rf"similarity {message}"):
        greedy_facility_location(None, 2, similarity=torch.zeros(5, 5, device=meta))
    with pytest.raises(ValueError, match=rf"mask {message}"):
        greedy_facility_location(x, 2, mask=torch.ones(5, dtype=torch.bool, device=meta))
    with pytest.raises(ValueError, match=rf"k {message}"):
        greedy_facility_location(x[None], torch.tensor([2], device=meta))
