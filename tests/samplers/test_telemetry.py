"""Tests of coreset_sampler.samplers._telemetry: records, totals, snapshot, state."""

from __future__ import annotations

import logging

import pytest

from coreset_sampler.samplers._telemetry import CheckRecord, SelectionRecord, Telemetry


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
