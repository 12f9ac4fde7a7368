"""Tests of coreset_sampler.samplers.craig: budget and batch semantics, per-class split, weights
against a direct kernel call, the convex gradient check, DataLoader workers, schedule, state,
errors."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler.gradients import cross_entropy_logit_grad, last_layer_grad
from coreset_sampler.kernels import greedy_facility_location
from coreset_sampler.kernels.facility_location import _lazy
from coreset_sampler.samplers import CraigBatchSampler
from coreset_sampler.samplers._selection import largest_remainder as _largest_remainder
from coreset_sampler.samplers._stream import steps_per_epoch as _steps_per_epoch
from coreset_sampler.samplers._wholeset import batch_positions as _batch_positions
from coreset_sampler.samplers._wholeset import coreset_size as _coreset_size
from coreset_sampler.weights import WeightedIndex, WithWeights

from ._helpers import Proxies, stream


def batches_of(sampler: CraigBatchSampler) -> list[list[int]]:
    return [[int(i) for i in b] for b in sampler]


# --------------------------------------------------------------------------- budget, batches


@pytest.mark.parametrize(
    ("n", "m", "budget", "drop_last"),
    [
        (300, 10, 0.1, False),  # K = 30, a multiple of m
        (300, 8, 0.1, False),  # K = 30 → 4 batches = 32 slots: wraps around
        (300, 8, 0.1, True),  # 3 batches = 24 slots: 6 coreset examples left out
        (153, 4, 0.3, False),  # budget·N = 45.9 → K = 46, ceil(45.9/4) = 12 batches
        (60, 7, 1.0, False),  # the whole set
    ],
)
def test_len_is_the_budget_arithmetic_and_batches_cover_the_coreset_evenly(
    n: int, m: int, budget: float, drop_last: bool
) -> None:
    s = CraigBatchSampler(n, m, callback=Proxies(n), budget=budget, drop_last=drop_last, seed=1)
    expected = _steps_per_epoch(budget, n, m, drop_last)
    assert len(s) == expected
    for _ in range(2):
        batches = batches_of(s)
        assert len(batches) == expected
        assert all(len(b) == m and len(set(b)) == m for b in batches)
        assert s.coreset_size == round(budget * n)
        counts = Counter(i for b in batches for i in b)
        assert set(counts) <= set(s.coreset)
        slots = expected * m
        lo, hi = slots // s.coreset_size, -(-slots // s.coreset_size)
        if slots >= s.coreset_size:
            assert set(counts) == set(s.coreset)
        assert all(lo <= counts.get(i, 0) <= hi for i in s.coreset)


def test_coreset_size_rounds_half_up_and_snaps_float_noise() -> None:
    assert _coreset_size(0.3, 10) == 3  # 0.3·10 = 3.0000000000000004
    assert _coreset_size(0.25, 10) == 3  # 2.5 rounds up
    assert _coreset_size(0.1, 503) == 50  # 50.3


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_batch_positions_each_once_per_cycle_never_twice_in_a_batch(
    size: int, m: int, steps: int, seed: int
) -> None:
    m = min(m, size)
    batches = _batch_positions(np.random.default_rng(seed), size, m, steps)
    assert len(batches) == steps
    assert all(len(set(b.tolist())) == m for b in batches)
    stream = np.concatenate(batches)
    full = (stream.shape[0] // size) * size
    for c in range(0, full, size):  # each complete cycle is a permutation
        assert sorted(stream[c : c + size].tolist()) == list(range(size))


# --------------------------------------------------------------------------- selection


def test_per_class_split_is_exact_and_weights_match_direct_greedy_calls() -> None:
    n, m, budget = 603, 16, 0.1
    labels = torch.tensor([0] * 300 + [5] * 200 + [7] * 100 + [9] * 3)
    proxies = Proxies(n, d=3)
    s = CraigBatchSampler(n, m, callback=proxies, budget=budget, labels=labels, seed=0)
    next(iter(s))
    k = round(budget * n)
    coreset, weights = s.coreset, s.coreset_weights
    assert len(coreset) == len(set(coreset)) == s.coreset_size == k
    per_class = Counter(int(labels[i]) for i in coreset)
    quotas = _largest_remainder(k, np.array([300, 200, 100, 3]))
    assert [per_class.get(c, 0) for c in (0, 5, 7, 9)] == quotas.tolist() == [30, 20, 10, 0]
    assert sum(per_class.values()) == k
    assert float(weights.double().mean()) == pytest.approx(1.0, abs=1e-6)

    # each class's picks and cluster sizes are those of a direct kernel call on that class
    expected_idx: list[int] = []
    expected_gamma: list[float] = []
    for c, q in zip((0, 5, 7), (30, 20, 10), strict=True):
        members = torch.nonzero(labels == c).reshape(-1)
        r = greedy_facility_location(proxies.table[members], q)
        expected_idx += members[r.indices].tolist()
        expected_gamma += r.weights.tolist()
    assert coreset == expected_idx
    gamma = torch.tensor(expected_gamma, dtype=torch.float64)
    # class 9 has no pick, so the γ sum to the 600 examples of the other classes
    assert float(gamma.sum()) == 600
    torch.testing.assert_close(weights.double(), k * gamma / 600, rtol=1e-6, atol=1e-6)


def test_callback_is_called_in_chunks_over_all_examples_once_per_selection() -> None:
    n = 250
    proxies = Proxies(n)
    s = CraigBatchSampler(n, 5, callback=proxies, budget=0.1, callback_batch_size=100)
    batches_of(s)
    assert [len(c) for c in proxies.calls] == [100, 100, 50]
    assert [i for c in proxies.calls for i in c] == list(range(n))


def test_reselects_every_reselect_every_epochs_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    n = 200
    proxies = Proxies(n)
    s = CraigBatchSampler(n, 5, callback=proxies, budget=0.1, reselect_every=2, seed=0)
    with caplog.at_level(logging.DEBUG, logger="coreset_sampler.samplers.craig"):
        for _ in range(5):
            batches_of(s)
    assert len(proxies.calls) == 3  # epochs 0, 2, 4
    t = s.telemetry
    assert t.num_selections == 3 and [r.epoch for r in t.selections] == [0, 2, 4]
    assert [r.reason for r in t.selections] == ["initial", "interval", "interval"]
    assert t.num_steps == 5 * len(s) and t.selections[1].step == 2 * len(s)
    assert t.selections[0].num_proxies == n and t.selections[0].num_pools == 1
    assert t.kernel_seconds > 0 and t.callback_seconds > 0
    assert sum("CRAIG selection" in r.getMessage() for r in caplog.records) == 3
    # going back to an earlier epoch is a new selection too
    s.set_epoch(1)
    batches_of(s)
    assert len(proxies.calls) == 4


def test_proxies_that_change_change_the_coreset_only_at_a_selection() -> None:
    n = 300
    state = {"shift": 0.0}
    table = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))

    def callback(indices: list[int]) -> tuple[Tensor, Tensor]:
        t = table[indices].clone()
        t[:, 0] *= 1 + state["shift"] * torch.arange(len(indices), dtype=torch.float32)
        return t, torch.zeros(len(indices))  # losses are accepted and ignored

    s = CraigBatchSampler(n, 10, callback=callback, budget=0.1, reselect_every=2)
    first = (batches_of(s), s.coreset)
    state["shift"] = 1.0
    second = (batches_of(s), s.coreset)
    third = (batches_of(s), s.coreset)
    assert second[1] == first[1] and second[0] != first[0]  # same coreset, new shuffle
    assert third[1] != first[1]


def test_stochastic_method_and_explicit_chunk_size() -> None:
    n = 300
    proxies = Proxies(n, d=2)
    exact = CraigBatchSampler(n, 10, callback=proxies, budget=0.1, chunk_size=7)
    auto = CraigBatchSampler(n, 10, callback=proxies, budget=0.1)
    stoch = [
        CraigBatchSampler(
            n, 10, callback=proxies, budget=0.1, method="stochastic", epsilon=0.5, seed=3
        )
        for _ in range(2)
    ]
    for s in (exact, auto, *stoch):
        next(iter(s))
    assert exact.coreset == auto.coreset  # chunking changes memory, not picks
    assert stoch[0].coreset == stoch[1].coreset  # seeded
    assert len(stoch[0].coreset) == 30
    assert float(stoch[0].coreset_weights.double().mean()) == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- convex check


def test_weighted_coreset_approximates_the_full_gradient_of_logistic_regression() -> None:
    """Relative error ‖g_S − g‖/‖g‖ of the coreset's weighted mean gradient vs the full mean.

    Multinomial logistic regression (N = 2000, 3 features + bias, 3 classes) at a fixed
    non-optimal point; proxies are the exact per-example gradients (p − y) ⊗ [x, 1]. Coresets of
    K = 100 (budget 0.05), per class. Measured (seed 0): CRAIG 0.0441; uniform random subsets of
    the same size (unweighted mean) 0.252 averaged over 20 draws (ratio 0.175). Asserted with
    a factor-2 margin on the ratio.
    """
    n, d, c = 2000, 3, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.randn(d, c, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(torch.softmax(x @ w_true, 1), 1, generator=g).squeeze(1)
    w_now = torch.randn(d, c, generator=g, dtype=torch.float64) * 0.5
    per_example = last_layer_grad(cross_entropy_logit_grad(x @ w_now, y), x, bias=True)
    full = per_example.mean(0)

    s = CraigBatchSampler(
        n, 10, callback=lambda i: per_example[i].float(), budget=0.05, labels=y, seed=0
    )
    next(iter(s))
    w = s.coreset_weights.double()
    craig = float(((w[:, None] * per_example[s.coreset]).mean(0) - full).norm() / full.norm())
    rng = np.random.default_rng(0)
    random = float(
        np.mean(
            [
                float((per_example[rng.choice(n, 100, replace=False)].mean(0) - full).norm())
                / float(full.norm())
                for _ in range(20)
            ]
        )
    )
    assert craig < 0.35 * random, (craig, random)


# --------------------------------------------------------------------------- DataLoader


def test_dataloader_workers_get_each_batch_its_own_weights() -> None:
    n, m = 240, 8
    ds = TensorDataset(torch.arange(n), torch.arange(n) % 3)
    shift = {"epoch": 0}
    table = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))

    def callback(indices: list[int]) -> Tensor:
        return table[indices] * (1 + shift["epoch"] * table[indices, :1].abs())

    s = CraigBatchSampler(ds, m, callback=callback, budget=0.2, labels=ds.tensors[1], seed=0)
    loader = DataLoader(WithWeights(ds), batch_sampler=s, num_workers=2, prefetch_factor=2)
    seen: list[dict[int, float]] = []
    for epoch in range(2):
        shift["epoch"] = epoch
        got = [(xb.tolist(), wb.tolist()) for xb, _, wb in loader]
        assert len(got) == len(s) == 6
        expected = dict(zip(s.coreset, s.coreset_weights.tolist(), strict=True))
        for xs, ws in got:
            assert ws == pytest.approx([expected[i] for i in xs], rel=1e-6)
        seen.append(expected)
    assert seen[0] != seen[1]  # the second epoch's batches carried the second selection's weights


# --------------------------------------------------------------------------- seeds and state


def test_same_seed_same_stream_other_seed_other_and_generator() -> None:
    def run(**kw: object) -> list[list[int]]:
        s = CraigBatchSampler(150, 5, callback=Proxies(150), budget=0.2, **kw)  # type: ignore[arg-type]
        return batches_of(s) + batches_of(s)

    four = run(seed=4)
    assert run(seed=4) == four
    assert run(seed=5) != four
    assert run(generator=torch.Generator().manual_seed(1)) == run(
        generator=torch.Generator().manual_seed(1)
    )
    torch.manual_seed(0)
    a = run(seed=2)
    torch.rand(10)
    np.random.seed(1)  # noqa: NPY002  (the global NumPy RNG must play no part)
    assert run(seed=2) == a  # the global RNGs play no part


@pytest.mark.parametrize("reselect_every", [1, 3])
def test_state_round_trip_mid_epoch_gives_the_identical_tail_without_the_callback(
    reselect_every: int,
) -> None:
    n, m = 200, 6

    def make(p: Proxies) -> CraigBatchSampler:
        return CraigBatchSampler(
            n, m, callback=p, budget=0.25, reselect_every=reselect_every, seed=7
        )

    ref = make(Proxies(n))
    reference = [batches_of(ref) for _ in range(4)]

    first = Proxies(n)
    a = make(first)
    batches_of(a)
    it = iter(a)
    head = [[int(i) for i in next(it)] for _ in range(3)]
    state = json.loads(json.dumps(a.state_dict()))  # plain, JSON-friendly values
    calls_before = len(first.calls)

    second = Proxies(n)
    b = make(second)
    b.load_state_dict(state)
    b.set_epoch(1)  # the usual call at the top of the loop is a no-op mid-epoch
    tail = batches_of(b)
    assert second.calls == []  # the finished selection is not recomputed
    assert head + tail == reference[1]
    later = [batches_of(b) for _ in range(2)]
    assert later == reference[2:]
    assert len(second.calls) == (2 if reselect_every == 1 else 1)  # epochs 2, 3 or epoch 3
    assert len(first.calls) == calls_before


def test_state_errors() -> None:
    s = CraigBatchSampler(100, 5, callback=Proxies(100), budget=0.2)
    with pytest.raises(TypeError, match="state should be a mapping"):
        s.load_state_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not the state of a CraigBatchSampler"):
        s.load_state_dict({"seed": 0})
    other = CraigBatchSampler(100, 5, callback=Proxies(100), budget=0.3).state_dict()
    with pytest.raises(ValueError, match=r"budget=0\.3 but this sampler has budget=0\.2"):
        s.load_state_dict(other)
    other = CraigBatchSampler(100, 4, callback=Proxies(100), budget=0.2).state_dict()
    with pytest.raises(ValueError, match="batch_size=4"):
        s.load_state_dict(other)


# --------------------------------------------------------------------------- errors


def test_errors_in_init() -> None:
    p = Proxies(100)
    with pytest.raises(ValueError, match=r"round\(budget·num_samples\) = 5 .* batch_size=8"):
        CraigBatchSampler(100, 8, callback=p, budget=0.05)
    with pytest.raises(TypeError, match="callback should be callable"):
        CraigBatchSampler(100, 5, callback=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reselect_every=True"):
        CraigBatchSampler(100, 5, callback=p, reselect_every=True)
    with pytest.raises(ValueError, match="reselect_every=0"):
        CraigBatchSampler(100, 5, callback=p, reselect_every=0)
    with pytest.raises(ValueError, match="callback_batch_size=0"):
        CraigBatchSampler(100, 5, callback=p, callback_batch_size=0)
    with pytest.raises(ValueError, match="similarity should be one of"):
        CraigBatchSampler(100, 5, callback=p, similarity="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"method should be one of .* method='greedy'"):
        CraigBatchSampler(100, 5, callback=p, method="greedy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="epsilon=True"):
        CraigBatchSampler(100, 5, callback=p, epsilon=True)
    with pytest.raises(ValueError, match=r"epsilon=1\.5"):
        CraigBatchSampler(100, 5, callback=p, epsilon=1.5)
    with pytest.raises(ValueError, match="chunk_size=0"):
        CraigBatchSampler(100, 5, callback=p, chunk_size=0)
    with pytest.raises(TypeError, match=r"telemetry_size=2\.0"):
        CraigBatchSampler(100, 5, callback=p, telemetry_size=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"labels should have one entry per example \(shape"):
        CraigBatchSampler(100, 5, callback=p, labels=[0, 1])
    with pytest.raises(TypeError, match="batch_size=True"):
        CraigBatchSampler(100, True, callback=p)
    with pytest.raises(ValueError, match="budget should be in"):
        CraigBatchSampler(100, 5, callback=p, budget=1.5)


def test_errors_from_the_callback() -> None:
    def wrong_shape(indices: list[int]) -> Tensor:
        return torch.zeros(len(indices) + 1, 2)

    with pytest.raises(ValueError, match=r"callback\(indices\[0:50\]\) at selection 0 returned"):
        next(iter(CraigBatchSampler(100, 5, callback=wrong_shape, callback_batch_size=50)))

    def growing(indices: list[int]) -> Tensor:
        return torch.zeros(len(indices), 2 if indices[0] == 0 else 3)

    with pytest.raises(ValueError, match=r"indices\[50:100\]\) .* dimension 3, but the first"):
        next(iter(CraigBatchSampler(100, 5, callback=growing, callback_batch_size=50)))

    def not_finite(indices: list[int]) -> Tensor:
        out = torch.zeros(len(indices), 2)
        out[0, 0] = float("nan")
        return out

    with pytest.raises(ValueError, match="NaN or inf proxies"):
        next(iter(CraigBatchSampler(100, 5, callback=not_finite)))


def test_batches_are_weighted_indices() -> None:
    s = CraigBatchSampler(100, 5, callback=Proxies(100), budget=0.2)
    batch = next(iter(s))
    assert all(isinstance(i, WeightedIndex) for i in batch)


@pytest.mark.skipif(not _lazy.available(), reason="needs numba")
def test_lazy_method_selects_what_naive_selects() -> None:
    g = torch.Generator().manual_seed(0)
    prox = torch.randn(300, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(300) % 3

    def run(method: str) -> list[list[tuple[int, float]]]:
        s = CraigBatchSampler(
            300, 10, callback=lambda i: prox[i], labels=labels, budget=0.2,
            method=method, seed=0,  # type: ignore[arg-type]
        )  # fmt: skip
        return [[(int(i), i.weight) for i in batch] for batch in s]

    assert run("lazy") == run("naive")


def test_edges_of_the_arguments_and_the_generator() -> None:
    p = Proxies(100)
    for bad in (0.0, 1.0):
        with pytest.raises(
            ValueError, match=rf"epsilon should be in \(0, 1\), but got epsilon={bad}"
        ):
            CraigBatchSampler(100, 5, callback=p, epsilon=bad)
    whole = CraigBatchSampler(100, 20, callback=p, budget=0.2)  # a coreset of one batch
    assert whole.coreset_size == 20 and len(batches_of(whole)) == 1
    a = CraigBatchSampler(100, 5, callback=p, generator=torch.Generator().manual_seed(3))
    b = CraigBatchSampler(100, 5, callback=p, generator=torch.Generator().manual_seed(3))
    c = CraigBatchSampler(100, 5, callback=p, generator=torch.Generator().manual_seed(4))
    assert a.seed == b.seed != c.seed and batches_of(a) == batches_of(b)
    assert len(CraigBatchSampler(12800, callback=Proxies(12800), method="stochastic")) == 10


def test_a_class_with_one_pick_and_the_stochastic_method_reach_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import coreset_sampler.samplers.craig as craig_module

    calls: list[dict[str, object]] = []
    kernel = craig_module.greedy_facility_location

    def spy(features: Tensor, k: int, **kw: object) -> object:
        calls.append({"k": k, **kw})
        return kernel(features, k, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(craig_module, "greedy_facility_location", spy)
    labels = np.zeros(200, dtype=np.int64)
    labels[:10] = 1  # K = 20: the small class gets exactly one pick
    s = CraigBatchSampler(200, 5, callback=Proxies(200), labels=labels, budget=0.1,
                          method="stochastic", epsilon=0.3, seed=0)  # fmt: skip
    batches_of(s)
    assert sorted(c["k"] for c in calls) == [1, 19]  # type: ignore[type-var]
    assert all(c["method"] == "stochastic" and c["epsilon"] == 0.3 for c in calls)
    assert len(s.coreset) == 20 == len(set(s.coreset))
    assert sum(1 for i in s.coreset if labels[i] == 1) == 1
    t = s.telemetry
    assert t.anchor_seconds == 0.0 and t.selections[0].anchor_seconds == 0.0
    first = t.selections[0]
    assert 0.0 < first.callback_seconds + first.kernel_seconds <= first.seconds < 60.0


def test_tied_proxies_share_the_weights_of_the_coreset_with_a_warning() -> None:
    n = 300
    labels = np.arange(n) % 3
    tied = torch.full((n, 3), 1 / 3) - torch.nn.functional.one_hot(torch.from_numpy(labels)).float()
    s = CraigBatchSampler(n, 10, callback=lambda idx: tied[idx], budget=0.1, seed=0)
    with pytest.warns(UserWarning, match=r"of the coreset's 30 picks have the same gradient proxy"):
        next(iter(s))
    weights = s.coreset_weights
    assert int((weights == 0).sum()) == 0 and weights.mean().item() == pytest.approx(1.0)


def test_triton_method_selects_what_naive_selects() -> None:
    pytest.importorskip("triton")
    from coreset_sampler.kernels.facility_location import _triton

    if not (torch.cuda.is_available() or _triton.interpreting()):
        pytest.skip("needs CUDA or Triton's interpreter (TRITON_INTERPRET=1)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = Proxies(90, 3).table.to(device)
    labels = torch.arange(90) % 3

    def build(method: str) -> CraigBatchSampler:
        return CraigBatchSampler(
            90, 6, callback=lambda idx: table[idx], budget=0.2, labels=labels, seed=0,
            method=method,  # type: ignore[arg-type]
        )  # fmt: skip

    a, b = build("triton"), build("naive")
    assert stream(a) == stream(b)
