"""GradMatchBatchSampler: the subset against a plain OMP reference with SciPy refits, the
gradient it matches, the budget, DataLoader workers, resume, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import CraigBatchSampler, GradMatchBatchSampler, WithWeights
from coreset_sampler.weights import WeightedIndex

from ._helpers import Proxies, stream


def reference_class(g: np.ndarray, k: int, lam: float) -> tuple[list[int], list[float]]:
    """GradMatch for one class, plainly: OMP towards the class's proxy sum (largest positive
    inner product with the residual, refit by SciPy's NNLS on the ridge-augmented system)."""
    b = g.sum(0)
    picks: list[int] = []
    w = np.zeros(0)
    residual = b.copy()
    for _ in range(k):
        if np.linalg.norm(residual) <= 1e-4 * np.linalg.norm(b):
            break
        corr = g @ residual
        corr[picks] = -np.inf
        j = int(np.argmax(corr))
        if corr[j] <= 0:
            break
        picks.append(j)
        s = len(picks)
        m = np.vstack([g[picks].T, math.sqrt(lam) * np.eye(s)])
        w, _ = nnls(m, np.concatenate([b, np.zeros(s)]))
        residual = b - w @ g[picks]
    keep = [i for i in range(len(picks)) if w[i] > 0]
    return [picks[i] for i in keep], [float(w[i]) for i in keep]


def test_subset_and_weights_equal_the_plain_reference_per_class() -> None:
    n, d = 120, 12
    labels = torch.arange(n) % 3
    proxies = Proxies(n, d, seed=3)
    s = GradMatchBatchSampler(n, 6, callback=proxies, budget=0.2, labels=labels, seed=0, lam=0.5)
    list(s)
    coreset, weights = s.coreset, s.coreset_weights.double()
    expected: list[int] = []
    gammas: list[float] = []
    for c in range(3):
        members = np.flatnonzero(labels.numpy() == c)
        picks, w = reference_class(proxies.table[members].double().numpy(), 8, 0.5)
        assert len(picks) == 8  # (d > k: OMP fills the class's slots, no random fill-up)
        expected.extend(members[picks].tolist())
        gammas.extend(w)
    assert coreset == expected and s.num_filled == 0
    scale = 24 / math.fsum(gammas)
    np.testing.assert_allclose(weights.numpy(), np.array(gammas) * scale, rtol=1e-5)


def test_the_weighted_subset_matches_the_class_gradient_sums() -> None:
    # 10 picks per class in 4 dimensions: each class's weighted sum points where its full sum
    # does (the common scale of the weights is the mean-1 convention's), far better than the
    # plain sum of a random subset of the same size
    n, d = 200, 4
    labels = torch.arange(n) % 2
    proxies = Proxies(n, d, seed=4)
    s = GradMatchBatchSampler(n, 10, callback=proxies, budget=0.1, labels=labels, seed=0)
    list(s)
    coreset, w = s.coreset, s.coreset_weights.double()
    g = proxies.table.double()
    cos = torch.nn.functional.cosine_similarity
    for c in range(2):
        members = torch.nonzero(labels == c).flatten()
        mine = [i for i, j in enumerate(coreset) if labels[j] == c]
        approx = (w[mine, None] * g[[coreset[i] for i in mine]]).sum(0)
        target = g[members].sum(0)
        rand = members[
            torch.randperm(members.shape[0], generator=torch.Generator().manual_seed(c))[:10]
        ]
        assert float(cos(approx, target, dim=0)) > 0.999
        assert float(cos(g[rand].sum(0), target, dim=0)) < 0.99


def test_early_stop_fills_up_with_random_examples_of_weight_one() -> None:
    # every proxy is the same vector: one pick matches the sum exactly, the rest is filled up
    n = 60
    table = torch.ones(n, 3)
    s = GradMatchBatchSampler(n, 4, callback=lambda idx: table[idx], budget=0.2, seed=0, lam=0.0)
    list(s)
    coreset, w = s.coreset, s.coreset_weights.double()
    assert len(coreset) == len(set(coreset)) == 12
    assert coreset[0] == 0  # (the lowest index among equal inner products)
    # raw weights: 60 for the OMP pick, 1 for each of 11 fill-ups; mean 1 after rescaling
    np.testing.assert_allclose(w.numpy(), np.array([60.0] + [1.0] * 11) * 12 / 71, rtol=1e-6)
    assert s.num_filled == 11


def test_budget_len_reselection_and_telemetry() -> None:
    n = 100
    proxies = Proxies(n, 5)
    s = GradMatchBatchSampler(n, 8, callback=proxies, budget=0.3, reselect_every=2, seed=0)
    assert len(s) == math.ceil(0.3 * n / 8) and s.coreset_size == 30
    for _ in range(5):
        batches = list(s)
        assert len(batches) == len(s)
        assert all(isinstance(i, WeightedIndex) and len(b) == 8 for b in batches for i in b)
    assert s.telemetry.num_selections == 3  # epochs 0, 2, 4
    assert len(proxies.calls) == 3 * math.ceil(n / 1024)


def test_dataloader_workers_and_mid_epoch_resume() -> None:
    n = 120
    ds = TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))

    def make() -> GradMatchBatchSampler:
        return GradMatchBatchSampler(
            ds, 6, callback=Proxies(n, 5, seed=1), budget=0.25, labels=torch.arange(n) % 4,
            reselect_every=1, seed=2,
        )  # fmt: skip

    straight = []
    s = make()
    for epoch in range(2):
        s.set_epoch(epoch)
        loader = DataLoader(WithWeights(ds), batch_sampler=s, num_workers=2)
        straight.extend((x[:, 0].tolist(), w.tolist()) for x, _, w in loader)
    direct = make()
    expected = stream(direct) + stream(direct)
    assert [b for b, _ in straight] == [[float(i) for i in b] for b, _ in expected]
    np.testing.assert_allclose(
        [w for _, ws in straight for w in ws], [w for _, ws in expected for w in ws], rtol=1e-6
    )
    # stop after 3 batches of epoch 1, save, rebuild, load: the rest is identical
    a = make()
    list(a)
    it = iter(a)
    head = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(a.state_dict()))
    b = make()
    b.load_state_dict(state)
    tail = [[int(i) for i in batch] for batch in b]
    assert [[int(i) for i in x] for x in head] + tail == [b for b, _ in expected[len(a) :]]
    assert b.callback.calls == []  # (the subset came with the state: no new selection)


def test_state_of_another_sampler_or_setting_is_refused() -> None:
    s = GradMatchBatchSampler(100, 5, callback=Proxies(100), budget=0.2)
    craig = CraigBatchSampler(100, 5, callback=Proxies(100), budget=0.2).state_dict()
    with pytest.raises(ValueError, match="CraigBatchSampler"):
        s.load_state_dict(craig)
    other = GradMatchBatchSampler(100, 5, callback=Proxies(100), budget=0.2, lam=1.0)
    with pytest.raises(ValueError, match="lam"):
        s.load_state_dict(other.state_dict())


def test_errors() -> None:
    with pytest.raises(ValueError, match="lam should be a finite number ≥ 0"):
        GradMatchBatchSampler(100, 5, callback=Proxies(100), lam=-0.1)
    with pytest.raises(TypeError, match="lam should be a number"):
        GradMatchBatchSampler(100, 5, callback=Proxies(100), lam=True)
    with pytest.raises(ValueError, match="tol"):
        GradMatchBatchSampler(100, 5, callback=Proxies(100), tol=1.0)
    with pytest.raises(ValueError, match="smaller than batch_size"):
        GradMatchBatchSampler(100, 20, callback=Proxies(100), budget=0.1)
    with pytest.raises(TypeError, match="callback"):
        GradMatchBatchSampler(100, 5)


def test_picks_that_the_refit_sets_to_zero_are_replaced() -> None:
    # in 2 dimensions two picks match the sum; with tol=0 OMP goes on picking on rounding
    # noise, and the refits give those picks weight 0: they leave the subset for random fill-up
    table = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    s = GradMatchBatchSampler(
        40, 2, callback=lambda idx: table[idx], budget=0.25, seed=0, lam=0.0, tol=0.0
    )
    list(s)
    assert s.coreset[:2] == [13, 22] and len(set(s.coreset)) == 10
    assert bool((s.coreset_weights > 0).all())


def test_per_batch_selects_whole_batches_by_omp_on_their_summed_proxies() -> None:
    from coreset_sampler.samplers._wholeset import SELECT

    n, size = 130, 5  # (26 full batches; no remainder here, one of 3 below)
    proxies = Proxies(n, 12, seed=7)
    s = GradMatchBatchSampler(n, size, callback=proxies, budget=0.2, seed=3, per_batch=True)
    assert s.per_batch and len(s) == math.ceil(0.2 * n / size) == 6 and s.coreset_size == 30
    epoch0 = stream(s)
    # the reference: the same partition, OMP on the batches' summed proxies, plainly
    rng = s._stream.rng(0, SELECT)
    batches = rng.permutation(n)[:130].reshape(-1, size)
    sums = proxies.table.double()[torch.from_numpy(batches)].sum(1).numpy()
    picks, w = reference_class(sums, 6, 0.5)
    assert len(picks) == 6  # (12 dimensions: OMP fills every slot)
    chosen = {tuple(sorted(batches[p].tolist())): wp for p, wp in zip(picks, w, strict=True)}
    scale = 30 / (size * math.fsum(w))
    yielded = [tuple(sorted(b)) for b, _ in epoch0]
    assert sorted(yielded) == sorted(chosen)  # each chosen batch once, whole
    for (_, ws), key in zip(epoch0, yielded, strict=True):
        np.testing.assert_allclose(ws, [chosen[key] * scale] * size, rtol=1e-5)
    epoch1 = stream(s)  # same batches (no reselection before epoch 20), another order
    assert sorted(tuple(sorted(b)) for b, _ in epoch1) == sorted(yielded)
    assert [b for b, _ in epoch1] != [b for b, _ in epoch0]


def test_per_batch_resume_and_errors() -> None:
    n = 133  # a remainder of 3 sits out each selection
    s = GradMatchBatchSampler(n, 5, callback=Proxies(n, 4), budget=0.2, seed=1, per_batch=True)
    expected = stream(s)
    a = GradMatchBatchSampler(n, 5, callback=Proxies(n, 4), budget=0.2, seed=1, per_batch=True)
    head = stream(a, 2)
    b = GradMatchBatchSampler(n, 5, callback=Proxies(n, 4), budget=0.2, seed=1, per_batch=True)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert head + stream(b) == expected
    assert all(len(set(batch)) == 5 for batch, _ in expected)
    with pytest.raises(ValueError, match="pass labels=None"):
        GradMatchBatchSampler(n, 5, callback=Proxies(n), labels=torch.arange(n) % 2, per_batch=True)
    with pytest.raises(ValueError, match="lower the budget"):
        GradMatchBatchSampler(n, 5, callback=Proxies(n), budget=1.0, per_batch=True)
    # (100 examples: the same subset size, 20, either way; the setting that differs is named)
    whole = GradMatchBatchSampler(100, 5, callback=Proxies(100), budget=0.2, per_batch=True)
    examples = GradMatchBatchSampler(100, 5, callback=Proxies(100), budget=0.2).state_dict()
    with pytest.raises(ValueError, match="per_batch"):
        whole.load_state_dict(examples)
