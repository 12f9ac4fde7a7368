"""Tests of the compiled lazy greedy (method="lazy"): the kernel's source against plain
references, compiled and not, every route (stored matrix, rows, threads, matrix products)."""

from __future__ import annotations

import decimal
import math

import numpy as np
import pytest
import torch

from coreset_sampler.kernels import greedy_facility_location
from coreset_sampler.kernels.facility_location import _kernel_greedy as kg
from coreset_sampler.kernels.facility_location import _kernel_similarity as ks
from coreset_sampler.kernels.facility_location import _lazy

from ._reference import (
    HAS_NUMBA,
    LAZY,
    SIMILARITIES,
    cluster_sizes,
    naive_greedy,
    rng_features,
    similarity_matrix,
)

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
    assert kg.solve_all(feats, mask, k, code, 2.0**-52, matrix_max, later, *args) == -1
    check_lazy_kernel_output(similarity, x, mask, k, args)


@pytest.mark.parametrize("similarity", ["neg_distance", "exp"])
def test_lazy_greedy_tightened_bounds_stay_above_the_gains(
    similarity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each pick, _tighten lowers the lazy greedy's bounds; every bound of a candidate
    must stay at or above its exact gain (summed with math.fsum), and the picks and gains must
    be those of the greedy without tightening, with fewer gain evaluations (plain Python)."""
    code = _lazy._KINDS[similarity]
    tighten = getattr(kg.lower_bounds, "py_func", kg.lower_bounds)
    gain_at = getattr(kg.gain_at, "py_func", kg.gain_at)
    greedy = getattr(kg.lazy_greedy, "py_func", kg.lazy_greedy)
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

    monkeypatch.setattr(kg, "lower_bounds", checking_tighten)
    monkeypatch.setattr(kg, "gain_at", counting_gain_at)
    clustered = rng_features(3, 6, 1, 10) + 0.2 * rng_features(4, 6, 10, 10)
    problems = [*rng_features(2, 3, 50, 10).double(), *clustered.reshape(3, 20, 10).double()]
    counts, results = {}, {}
    for tightened in (False, True):
        evaluations[0] = 0
        results[tightened] = []
        for x in problems:
            sim, first = ks.similarity_matrix(np.ascontiguousarray(x.numpy().T), code, 2.0**-52)
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
    assert _lazy.BLOCK < 700
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
    if not compiled:  # plain Python, also for the reduction it calls
        for name in ("exp_neg", "exp_reduce"):
            function = getattr(ks, name)
            monkeypatch.setattr(ks, name, getattr(function, "py_func", function))
    exp_neg = ks.exp_neg
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
