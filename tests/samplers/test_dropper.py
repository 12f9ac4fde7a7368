"""Tests of coreset_sampler.samplers._dropper: the rule's options, observations, the cap, state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coreset_sampler.samplers._dropper import DropLearned, LearnedExampleDropper


def test_drop_learned_options_are_checked_and_kept_as_numbers() -> None:
    rule = DropLearned(threshold=1, window=3, max_fraction=0)
    assert (rule.threshold, rule.window, rule.max_fraction) == (1.0, 3, 0.0)
    assert type(rule.threshold) is float and type(rule.max_fraction) is float
    with pytest.raises(ValueError, match="threshold should be finite"):
        DropLearned(threshold=math.nan)
    with pytest.raises(TypeError, match="window should be a positive integer value"):
        DropLearned(window=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_fraction should be in \[0, 1\)"):
        DropLearned(max_fraction=1.0)
    assert LearnedExampleDropper(10, False).config() == {"drop_learned": None}
    assert LearnedExampleDropper(10, True).config() == {"drop_learned": repr(DropLearned())}


def test_an_index_observed_twice_at_once_counts_with_its_worst_loss() -> None:
    d = LearnedExampleDropper(10, DropLearned(threshold=0.5, window=1, max_fraction=0.5))
    idx = np.array([3, 3, 4, 4, 5], dtype=np.int64)
    d.observe(idx, np.array([0.1, 0.9, 0.1, np.nan, 0.1]), step=0)  # 3: 0.9; 4: NaN ends it
    d.observe(np.array([3, 4, 5], dtype=np.int64), np.array([0.1, 0.1, 0.1]), step=1)
    assert d.dropped == [5]  # 5 was low at 0 and 1; 3 and 4 start their runs at 1
    d.observe(np.array([3, 4], dtype=np.int64), np.array([0.2, 0.2]), step=2)
    assert sorted(d.dropped) == [3, 4, 5]
    assert d.num_active == 7 and 3 not in d.active_indices().tolist()


def test_dropper_state_is_checked_when_read() -> None:
    d = LearnedExampleDropper(10, DropLearned(window=1, max_fraction=0.5))
    d.observe(np.arange(4, dtype=np.int64), np.zeros(4), step=0)
    d.observe(np.arange(2, dtype=np.int64), np.zeros(2), step=1)
    state = d.state_dict()
    assert state == {"dropped": [0, 1], "low_since": [[2, 3], [0, 0]]}
    fresh = LearnedExampleDropper(10, DropLearned(window=1, max_fraction=0.5))
    fresh.load_state_dict(state)
    assert fresh.dropped == [0, 1] and fresh.active_indices().tolist() == list(range(2, 10))
    assert fresh.low_since[[2, 3]].tolist() == [0, 0]
    for bad, match in [
        ({"dropped": [0, 10]}, r"\['dropped'\] holds example indices outside \[0, 10\)"),
        ({"dropped": [1, 1]}, r"\['dropped'\] holds 2 examples; this sampler drops at most 5"),
        ({"dropped": list(range(6))}, r"holds 6 examples; this sampler drops at most 5"),
        ({"low_since": [[2, 3], [0]]}, r"\['low_since'\] should be \[indices, steps\] of"),
        ({"low_since": [[2, 10], [0, 0]]}, r"\['low_since'\] should be \[indices, steps\] of"),
        ({"low_since": [[-1], [0]]}, r"\['low_since'\] should be \[indices, steps\] of"),
        ({"low_since": 3}, r"\['low_since'\] should be \[indices, steps\], but got 3"),
    ]:
        with pytest.raises(ValueError, match=match):
            LearnedExampleDropper(10, DropLearned(max_fraction=0.5)).load_state_dict(
                {**state, **bad}
            )
