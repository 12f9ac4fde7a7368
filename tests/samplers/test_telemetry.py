"""Tests of coreset_sampler.samplers._telemetry: records, totals, snapshot, state."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from coreset_sampler import DropLearned
from coreset_sampler.samplers import (
    CraigBatchSampler,
    CrestBatchSampler,
    KCenterBatchSampler,
    RandomBatchSampler,
)
from coreset_sampler.samplers._telemetry import CheckRecord, SelectionRecord, Telemetry

from ._helpers import Proxies


def _selection(step: int, seconds: float) -> SelectionRecord:
    return SelectionRecord(step, 0, "check", 5, 50, 2, 100, 200, 0.25 * seconds,
                           0.5 * seconds, 0.125 * seconds, seconds)  # fmt: skip


def test_totals_are_the_sums_of_every_record_and_survive_the_bounded_history() -> None:
    t = Telemetry(2, logging.getLogger("test"))
    for k in range(3):
        t.selection(_selection(k, 1.0 + k))
        t.check(CheckRecord(k, 0.5 + k, 0.1 * k, k == 2, 3))
    snap = t.snapshot(num_steps=9, num_dropped=4)
    assert len(snap.selections) == 2 and len(snap.checks) == 2  # bounded
    assert (snap.num_steps, snap.num_selections, snap.num_checks, snap.num_dropped) == (9, 3, 3, 4)
    assert snap.selection_seconds == pytest.approx(1.0 + 2.0 + 3.0)
    assert snap.callback_seconds == pytest.approx(0.25 * 6.0)
    assert snap.kernel_seconds == pytest.approx(0.5 * 6.0)
    assert snap.anchor_seconds == pytest.approx(0.125 * 6.0)
    assert snap.check_seconds == pytest.approx(0.5 + 1.5 + 2.5)


def test_counters_a_state_lacks_start_at_zero() -> None:
    t = Telemetry(5, logging.getLogger("test"))
    t.load_state_dict({"counters": {"num_selections": 2.0, "kernel_seconds": 1.5}})
    snap = t.snapshot(0)
    assert snap.num_selections == 2 and snap.kernel_seconds == 1.5
    assert snap.check_seconds == 0.0 and snap.num_checks == 0
    t.selection(_selection(0, 1.0))
    assert t.snapshot(0).num_selections == 3


# --------------------------------------------------------------------------- samplers


def _crest(**kw: Any) -> CrestBatchSampler:
    n = 200
    losses = torch.linspace(0.0, 2.0, n)  # the first examples are "learned" (loss < α = 0.1)
    kw.setdefault("callback", Proxies(n, losses=losses))
    return CrestBatchSampler(
        n, 5, pool_size=50, budget=0.3, reselect_every=3, seed=0,
        drop_learned=DropLearned(window=2), weighting="cluster_size", **kw,
    )  # fmt: skip


def test_selection_history_holds_each_selections_coresets_and_weights() -> None:
    s = _crest(record_coresets=True)
    seen = 0
    for _ in s:
        if s.telemetry.num_selections > seen:  # a selection just served this batch
            seen = s.telemetry.num_selections
            last = s.telemetry.selections[-1]
            assert last.coresets == tuple(tuple(c) for c in s.coresets)
            assert last.weights is not None
            recorded = [torch.tensor(w, dtype=torch.float32) for w in last.weights]
            assert all(map(torch.equal, recorded, s.coreset_weights))
    assert seen > 2 and len(s.telemetry.selections) == seen
    record = s.telemetry.selections[0].as_dict()
    assert record["coresets"] and record["weights"] and record["reason"] == "initial"
    assert "coresets of" in repr(s.telemetry.selections[0])  # not the indices themselves


def test_selection_history_of_craig_and_k_center() -> None:
    n = 120
    craig = CraigBatchSampler(n, 6, callback=Proxies(n), budget=0.25, seed=0, record_coresets=True)
    list(craig)
    (record,) = craig.telemetry.selections
    assert record.coresets == (tuple(craig.coreset),)
    assert record.weights is not None
    assert torch.equal(torch.tensor(record.weights[0], dtype=torch.float32), craig.coreset_weights)
    kc = KCenterBatchSampler(n, 6, callback=Proxies(n), pool_size=30, seed=0, record_coresets=True)
    list(kc)
    assert kc.telemetry.selections[-1].coresets == tuple(tuple(c) for c in kc.coresets)


def test_without_record_coresets_records_hold_no_indices() -> None:
    s = _crest()
    list(s)
    record = s.telemetry.selections[0]
    assert record.coresets is None and record.weights is None
    assert "coresets" not in record.as_dict() and "weights" not in record.as_dict()
    assert CheckRecord(3, 0.5, 0.1, False, 2).as_dict() == {
        "step": 3, "seconds": 0.5, "rho": 0.1, "reselect": False, "interval": 2
    }  # fmt: skip
    with pytest.raises(TypeError, match="record_coresets should be a bool"):
        _crest(record_coresets="yes")


def test_one_info_line_per_epoch_says_how_much_was_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = _crest()
    with caplog.at_level(logging.INFO, logger="coreset_sampler"):
        dropped = []
        for epoch in range(3):
            s.set_epoch(epoch)
            list(s)
            dropped.append(s.telemetry.num_dropped)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 3, lines  # selections and drops are DEBUG: one line per epoch
    assert dropped[-1] > 0
    for epoch, (line, d) in enumerate(zip(lines, dropped, strict=True)):
        assert line.startswith(f"CREST epoch {epoch} done: {len(s)} batches")
        share = f"{d / 200:.1%}"
        assert f"{d} learned examples dropped so far ({share} of 200), {200 - d} active" in line


def test_samplers_that_do_not_drop_say_nothing_of_dropping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="coreset_sampler"):
        list(RandomBatchSampler(100, 10, budget=1.0, seed=0))
        list(CrestBatchSampler(
            100, 5, callback=Proxies(100), pool_size=20, reselect_every=3, seed=0, budget=1.0,
            drop_learned=False,
        ))  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines[0] == "random batches epoch 0 done: 10 batches"
    assert lines[1].startswith("CREST epoch 0 done: 20 batches; 7 selections")
    assert not any("dropped" in line for line in lines)
