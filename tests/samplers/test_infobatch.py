"""InfoBatchSampler: unbiased rescaling, the pruned fraction, annealing, ``len``, resume,
DataLoader workers, sharding and errors."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import InfoBatchSampler, WithWeights

from ._helpers import stream
from .test_distributed import free_port


def losses_of(epoch: int, n: int) -> np.ndarray:
    """A loss for every example that changes with the epoch (deterministic)."""
    rng = np.random.default_rng(1000 + epoch)
    return rng.exponential(1.0, n)


def run_epoch(sampler: InfoBatchSampler, epoch: int) -> list[tuple[list[int], list[float]]]:
    """One pass, reporting ``losses_of(epoch)`` for every batch."""
    table = losses_of(epoch, sampler.num_samples)
    out = []
    for batch in sampler:
        idx = [int(i) for i in batch]
        out.append((idx, [i.weight for i in batch]))
        sampler.report_losses(idx, table[idx])
    return out


def test_the_expected_weighted_gradient_is_the_full_data_gradient() -> None:
    # logistic regression, exact per-example gradients in float64 (torch.func)
    g = torch.Generator().manual_seed(0)
    n, d = 40, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g) < 0.5).to(torch.float64)
    theta = torch.randn(d, generator=g, dtype=torch.float64)

    def loss(t: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(xi @ t, yi)

    per_loss = torch.vmap(loss, in_dims=(None, 0, 0))(theta, x, y)
    grads = torch.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(theta, x, y)
    full = grads.sum(0)

    sampler = InfoBatchSampler(n, 8, num_epochs=10**6, prune_ratio=0.3, seed=0)
    sampler.report_losses(range(n), per_loss)
    low = per_loss < per_loss.mean()
    n_low = int(low.sum())
    assert round(0.3 * n_low) != 0.3 * n_low  # the rounding the exact weight corrects
    estimates = []
    kept_low = torch.zeros(n)
    trials = 4000
    for _ in range(trials):
        idx, w = [], []
        for batch in sampler:
            idx += [int(i) for i in batch]
            w += [i.weight for i in batch]
        assert len(set(idx)) == len(idx)  # each kept example once per epoch
        # exactly: the kept low-loss examples are a uniform k-subset (checked below), so the
        # expectation is Σ_high g + w · (k / n_low) · Σ_low g, which is Σ g iff w · k = n_low
        w_low = {wi for i, wi in zip(idx, w, strict=True) if low[i]}
        k_seen = sum(1 for i in idx if low[i])
        assert len(w_low) == 1 and w_low.pop() * k_seen == pytest.approx(n_low, rel=1e-12)
        estimates.append((torch.tensor(w, dtype=torch.float64)[:, None] * grads[idx]).sum(0))
        kept_low[[i for i in idx if low[i]]] += 1
    est = torch.stack(estimates)
    se = est.std(0) / math.sqrt(trials)
    assert torch.all((est.mean(0) - full).abs() <= 4 * se + 1e-12), (est.mean(0), full, se)
    # every low-loss example is kept with the same probability, the others always
    k = n_low - round(0.3 * n_low)
    freq = kept_low[low] / trials
    assert torch.allclose(freq, torch.full_like(freq, k / n_low), atol=0.04)


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.9, 0.0])
def test_the_pruned_fraction_is_r_of_the_low_loss_examples(ratio: float) -> None:
    n = 1000
    sampler = InfoBatchSampler(n, 32, num_epochs=10, prune_ratio=ratio, seed=1)
    for epoch in range(4):
        table = losses_of(epoch - 1, n)  # the losses reported after the previous epoch
        low = set(np.flatnonzero(table < table.mean()).tolist()) if epoch else set()
        planned = len(sampler)
        batches = stream(sampler)
        sampler.report_losses(range(n), losses_of(epoch, n))
        kept = {i: w for b, ws in batches for i, w in zip(b, ws, strict=True)}
        pruned = set(range(n)) - set(kept)
        assert len(kept) == sum(len(b) for b, _ in batches)  # no repeats
        assert pruned <= low  # only low-loss examples are pruned
        assert len(pruned) == math.floor(ratio * len(low) + 0.5) == sampler.num_pruned
        assert sampler.telemetry.num_dropped == len(pruned)
        rescale = len(low) / (len(low) - len(pruned)) if low else 1.0
        for i, w in kept.items():
            assert w == pytest.approx(rescale if i in low else 1.0)
        assert planned == len(batches) == math.ceil(len(kept) / 32)


def test_annealing_epochs_and_the_first_epoch_are_not_pruned() -> None:
    n = 200
    sampler = InfoBatchSampler(n, 20, num_epochs=8, delta=0.75, seed=0)
    sizes, weights = [], []
    for epoch in range(10):
        batches = run_epoch(sampler, epoch)
        sizes.append(sum(len(b) for b, _ in batches))
        weights.append({w for _, ws in batches for w in ws})
    # epoch 0: no losses yet; epochs 1-5 pruned; from 0.75 · 8 = 6 on: everything, weight 1
    assert sizes[0] == n and weights[0] == {1.0}
    assert all(s < n for s in sizes[1:6]) and all(len(w) == 2 for w in weights[1:6])
    assert sizes[6:] == [n] * 4 and all(w == {1.0} for w in weights[6:])


def test_a_state_with_a_plan_drawn_before_the_last_losses_resumes_with_the_right_plan() -> None:
    n = 200
    a = InfoBatchSampler(n, 16, num_epochs=8, seed=2)
    a.report_losses(range(n), losses_of(0, n))
    stream(a)
    len(a)  # plans epoch 1 provisionally ...
    a.report_losses(range(n), losses_of(1, n))  # ... then more losses come
    b = InfoBatchSampler(n, 16, num_epochs=8, seed=2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert len(b) == len(a) and stream(b) == stream(a)


def test_a_pruned_epoch_keeps_a_full_batch() -> None:
    s = InfoBatchSampler(10, 8, num_epochs=10, prune_ratio=0.9, drop_last=True, seed=0)
    s.report_losses(range(10), [0.1] * 9 + [100.0])
    (batch,) = stream(s)
    assert len(set(batch[0])) == 8 and s.num_pruned == 2  # 8 of 9 would be pruned otherwise


def test_the_annealing_starts_at_delta_times_epochs_despite_rounding() -> None:
    s = InfoBatchSampler(100, 10, num_epochs=100, delta=0.55, seed=0)  # 0.55 · 100 = 55.0…01
    for epoch, pruned in ((54, True), (55, False)):
        s.set_epoch(epoch)
        s.report_losses(range(100), losses_of(0, 100))
        assert (len(s) < 10) == pruned


def test_losses_all_equal_prune_nothing() -> None:
    sampler = InfoBatchSampler(50, 10, num_epochs=5, seed=0)
    sampler.report_losses(range(50), [0.3] * 50)  # none is below the mean
    assert len(stream(sampler)) == 5 and sampler.num_pruned == 0


def test_len_follows_the_epoch_and_budget_and_drop_last_cap_it() -> None:
    n = 1000
    s = InfoBatchSampler(n, 64, num_epochs=10, seed=0)
    assert len(s) == 16  # ceil(1000 / 64): no losses yet
    batches = run_epoch(s, 0)
    assert [len(b) for b, _ in batches] == [64] * 15 + [40]  # the last batch is short
    planned = len(s)
    assert planned < 16 and len(run_epoch(s, 1)) == planned
    capped = InfoBatchSampler(n, 64, num_epochs=10, budget=0.25, seed=0)
    assert len(capped) == 4 and len(run_epoch(capped, 0)) == 4
    assert len(capped) == 4  # the pruned epoch still has more than 4 batches of examples
    dropped = InfoBatchSampler(n, 64, num_epochs=10, drop_last=True, seed=0)
    assert [len(b) for b, _ in run_epoch(dropped, 0)] == [64] * 15


def test_resume_mid_epoch_continues_exactly_with_the_loss_table() -> None:
    n = 300

    def build() -> InfoBatchSampler:
        return InfoBatchSampler(n, 16, num_epochs=6, prune_ratio=0.6, seed=7)

    reference = build()
    expected = [run_epoch(reference, e) for e in range(4)]
    run = build()
    run_epoch(run, 0)
    table = losses_of(1, n)
    it = iter(run)
    head = []
    for _ in range(5):
        batch = next(it)
        idx = [int(i) for i in batch]
        head.append((idx, [i.weight for i in batch]))
        run.report_losses(idx, table[idx])
    state = json.loads(json.dumps(run.state_dict()))
    assert len(state["pruning"]["scores"][0]) == n  # the loss table is saved
    del it
    resumed = build()
    resumed.load_state_dict(state)
    assert len(resumed) == len(expected[1])
    tail = []
    for batch in resumed:
        idx = [int(i) for i in batch]
        tail.append((idx, [i.weight for i in batch]))
        resumed.report_losses(idx, table[idx])
    assert head + tail == expected[1]
    assert [run_epoch(resumed, e) for e in (2, 3)] == expected[2:]


def test_every_batch_in_a_loader_with_workers_gets_its_weights_and_reports_losses() -> None:
    n = 256
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    data = WithWeights(TensorDataset(x, torch.zeros(n)), return_index=True)
    sampler = InfoBatchSampler(n, 32, num_epochs=5, seed=0)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=2)
    reference = InfoBatchSampler(n, 32, num_epochs=5, seed=0)
    for epoch in range(3):
        expected = run_epoch(reference, epoch)
        got = []
        assert len(loader) == len(expected)
        for xb, _y, w, idx in loader:
            assert torch.equal(xb, x[idx])
            got.append((idx.tolist(), w.tolist()))
            sampler.report_losses(idx, losses_of(epoch, n)[idx.numpy()])
        assert got == [(b, pytest.approx(ws)) for b, ws in expected]


def test_a_stateful_dataloader_with_workers_resumes_mid_epoch() -> None:
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    n = 256
    data = WithWeights(TensorDataset(torch.arange(n)), return_index=True)

    def build() -> Any:
        sampler = InfoBatchSampler(n, 16, num_epochs=5, seed=3)
        return sampler, sdl.StatefulDataLoader(data, batch_sampler=sampler, num_workers=2)

    def consume(sampler: Any, it: Any, epoch: int, count: int | None = None) -> list[Any]:
        out = []
        for k, (_x, w, idx) in enumerate(it):
            out.append((idx.tolist(), w.tolist()))
            sampler.report_losses(idx, losses_of(epoch, n)[idx.numpy()])
            if count is not None and k + 1 == count:
                break
        return out

    ref_sampler, ref_loader = build()
    expected = [consume(ref_sampler, iter(ref_loader), e) for e in range(3)]
    sampler, loader = build()
    consume(sampler, iter(loader), 0)
    it = iter(loader)
    head = consume(sampler, it, 1, count=4)
    # the loader's snapshot of the sampler is taken when a batch is sent to the workers,
    # before the loop reported the losses of the batches in flight: the recipe saves the
    # loss table as well and reports it back once the resumed loader's iterator exists
    # (the loader restores its snapshot into the sampler when the iterator is created)
    state, scores = loader.state_dict(), sampler.scores
    del it
    sampler2, loader2 = build()
    loader2.load_state_dict(state)
    it2 = iter(loader2)
    sampler2.report_losses(range(n), scores)
    tail = consume(sampler2, it2, 1)
    assert head + tail == expected[1]
    assert consume(sampler2, iter(loader2), 2) == expected[2]


def test_replicas_share_each_epoch_in_full_batches() -> None:
    n, m = 250, 16
    ranks = [InfoBatchSampler(n, m, num_epochs=10, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    single = InfoBatchSampler(n, m, num_epochs=10, seed=5)
    for epoch in range(3):
        table = losses_of(epoch, n)
        per_rank = [stream(s) for s in ranks]
        order = [i for b, _ in stream(single) for i in b]  # the epoch's kept examples, in order
        assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == math.ceil(len(order) / 32)
        interleaved = [i for pair in zip(*per_rank, strict=True) for b, _ in pair for i in b]
        padded = (order * 2)[: len(interleaved)]  # the last batches wrap around
        assert interleaved == padded
        assert all(len(b) == m for r in per_rank for b, _ in r)
        with (
            pytest.warns(UserWarning, match="without a process group")
            if epoch == 0
            else (contextlib.nullcontext())
        ):
            for s in (*ranks, single):  # as if every rank saw every rank's losses
                s.report_losses(range(n), table)


def test_arguments_losses_and_states_are_checked() -> None:
    with pytest.raises(TypeError):
        InfoBatchSampler(100, 10)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="num_epochs"):
        InfoBatchSampler(100, 10, num_epochs=0)
    with pytest.raises(ValueError, match="prune_ratio"):
        InfoBatchSampler(100, 10, num_epochs=3, prune_ratio=1.0)
    with pytest.raises(ValueError, match="delta"):
        InfoBatchSampler(100, 10, num_epochs=3, delta=1.5)
    s = InfoBatchSampler(100, 10, num_epochs=3, seed=0)
    with pytest.raises(ValueError, match="3 indices but 2 losses"):
        s.report_losses([0, 1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"indices should be in \[0, 100\)"):
        s.report_losses([100], [0.1])
    with pytest.raises(TypeError, match="losses should be numbers"):
        s.report_losses([0], ["a"])
    s.report_losses([0, 0, 1], [5.0, 0.5, float("nan")])  # the last loss; NaN: not reported
    assert s.scores[:2].tolist()[0] == 0.5 and math.isnan(s.scores[1])
    run_epoch(s, 0)
    state = s.state_dict()
    for field, value, message in [
        ("scores", [[0], [float("inf")]], "finite losses"),
        ("scaled", [100], r"indices|\[0, 100\)"),
        ("rescale", 0.5, "rescale"),
        ("order", [1, 1], "empty or repeated"),
        ("rescale", 1e6, "does not add up"),
    ]:
        bad = {**state, "pruning": {**state["pruning"], field: value}}
        with pytest.raises(ValueError, match=message):
            InfoBatchSampler(100, 10, num_epochs=3, seed=0).load_state_dict(bad)
    with pytest.raises(ValueError, match="prune_ratio"):
        InfoBatchSampler(100, 10, num_epochs=3, prune_ratio=0.2).load_state_dict(state)
    planless = {**state, "stream": {**state["stream"], "step_in_epoch": 3}}
    planless["pruning"] = {**state["pruning"], "plan_epoch": -1, "order": [], "scaled": []}
    planless["pruning"].update(rescale=1.0, num_low=0)
    with pytest.raises(ValueError, match="no plan of that epoch"):
        InfoBatchSampler(100, 10, num_epochs=3, seed=0).load_state_dict(planless)


def _gloo_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        n = 120
        sampler = InfoBatchSampler(n, 8, num_epochs=4, seed=0)
        table = losses_of(0, n)
        epochs, scores = [], []
        for _ in range(3):
            batches = stream(sampler)
            epochs.append(batches)
            for b, _ in batches:  # each rank reports only its own batches
                sampler.report_losses(b, table[b])
            scores.append(sampler.scores.tolist())
        Path(out, f"rank{rank}.json").write_text(json.dumps([epochs, scores]))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_ranks_share_their_losses_and_agree_on_the_plan(tmp_path: Path) -> None:
    mp.spawn(_gloo_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    (e0, s0), (e1, s1) = (json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in (0, 1))
    table = losses_of(0, 120)
    for e in range(3):
        assert len(e0[e]) == len(e1[e])
        # every rank holds the losses of both ranks' batches
        assert s0[e] == s1[e]
        seen = sorted(i for b, _ in e0[e] + e1[e] for i in b)
        assert all(s0[e][i] == pytest.approx(table[i]) for i in seen)
        if e == 0:  # a full epoch, shared (8 · 16 = 128 places: 8 examples twice)
            assert sorted(set(seen)) == list(range(120)) and len(seen) == 128
    # epoch 1 was planned alike on both ranks from the shared table: their batches together
    # are the kept set, each example once, and only low-loss examples are missing
    seen1 = {i for b, _ in e0[1] + e1[1] for i in b}
    assert len(seen1) < 120
    assert all(table[i] < table.mean() for i in set(range(120)) - set(seen1))
