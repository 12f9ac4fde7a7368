"""Tests of coreset_sampler.samplers._stream: the budget arithmetic, epochs, random streams and
the coreset cycle."""

from __future__ import annotations

import numpy as np
import pytest

from coreset_sampler.samplers._stream import BudgetedStream, CoresetCycle, steps_per_epoch


@pytest.mark.parametrize(
    ("n", "m", "budget", "drop_last", "expected"),
    [
        (1000, 32, 0.1, False, 4),  # 3.125 → 4
        (1000, 32, 0.1, True, 3),
        (10, 1, 0.3, False, 3),
        (100, 1, 0.07, False, 7),  # 0.07·100 = 7.000000000000001 must not become 8
        (100000, 1, 0.07, False, 7000),  # and its relative error at a large count
        (10, 1, 0.7, True, 7),  # 0.7·10 = 6.999999999999999 must not become 6
        (1000, 100, 0.1, False, 1),
        (50000, 128, 0.1, False, 40),
        (50000, 128, 1.0, False, 391),
        (50000, 128, 1.0, True, 390),
    ],
)
def test_budget_arithmetic(n: int, m: int, budget: float, drop_last: bool, expected: int) -> None:
    assert steps_per_epoch(budget, n, m, drop_last) == expected


def test_epochs_and_random_streams() -> None:
    s = BudgetedStream(100, 10, budget=0.5, drop_last=False, seed=3, generator=None,
                       streams=("a", "b"))  # fmt: skip
    assert s.num_steps == 5 and s.epoch == 0
    assert not s.begin_pass()
    first = s.rngs["a"].integers(0, 2**62)
    for _ in range(5):
        s.advance()
    s.end_pass()
    assert (s.epoch, s.step_in_epoch, s.step) == (1, 0, 5)
    assert not s.begin_pass()
    assert s.rngs["a"].integers(0, 2**62) != first  # another epoch, another stream
    again = BudgetedStream(100, 10, budget=0.5, drop_last=False, seed=3, generator=None,
                           streams=("a", "b"))  # fmt: skip
    again.begin_pass()
    assert again.rngs["a"].integers(0, 2**62) == first  # (seed, epoch, stream) decides
    assert again.rngs["b"].integers(0, 2**62) != first
    ranked = BudgetedStream(100, 10, budget=0.5, drop_last=False, seed=3, generator=None,
                            num_replicas=2, rank=1, streams=("a",))  # fmt: skip
    ranked.begin_pass()
    assert ranked.rngs["a"].integers(0, 2**62) != first  # each rank its own stream
    with pytest.raises(ValueError, match="epoch should be a non-negative integer"):
        s.set_epoch(-1)


def test_resume_continues_the_epoch_and_its_streams() -> None:
    a = BudgetedStream(50, 5, budget=1.0, drop_last=False, seed=0, generator=None,
                       streams=("x",))  # fmt: skip
    a.begin_pass()
    a.advance()
    a.rngs["x"].random()
    b = BudgetedStream(50, 5, budget=1.0, drop_last=False, seed=0, generator=None,
                       streams=("x",))  # fmt: skip
    b.load_state_dict(a.state_dict())
    b.set_epoch(0)  # the loaded state's epoch, before its pass: a no-op
    assert b.begin_pass()  # resumed mid-epoch
    assert b.step_in_epoch == 1 and b.rngs["x"].random() == a.rngs["x"].random()
    b.advance()
    b.set_epoch(0)  # during the pass: the epoch it is in, a no-op (the pass goes on)
    assert (b.epoch, b.step_in_epoch) == (0, 2)
    b.set_epoch(2)
    assert (b.epoch, b.step_in_epoch) == (2, 0) and not b.begin_pass()


def test_a_pass_left_early_is_followed_by_the_next_epoch() -> None:
    s = BudgetedStream(50, 5, budget=1.0, drop_last=False, seed=0, generator=None)
    s.begin_pass()
    s.advance()  # the loop broke out after one batch
    assert not s.begin_pass() and (s.epoch, s.step_in_epoch) == (1, 0)
    assert not s.begin_pass() and s.epoch == 1  # a pass that yielded nothing: the same epoch


def test_coreset_cycle_yields_each_coreset_once_per_pass_in_fresh_orders() -> None:
    cycle = CoresetCycle(100)
    rng = np.random.default_rng(0)
    cycle.replace([[1, 2], [3, 4], [5, 6]], [[1.0, 1.0], [0.5, 1.5], [2.0, 0.0]], rng)
    orders = []
    for _ in range(4):
        orders.append(tuple(tuple(cycle.next(rng)[0]) for _ in range(3)))
        assert sorted(orders[-1]) == [(1, 2), (3, 4), (5, 6)]
    assert len(set(orders)) > 1
    assert cycle.next(rng)[1] in ([1.0, 1.0], [0.5, 1.5], [2.0, 0.0])


def test_set_epoch_takes_a_non_negative_int_only() -> None:
    s = BudgetedStream(100, 10, budget=0.5, drop_last=False, seed=0, generator=None)
    for bad in (1.5, True, -1, "1"):
        with pytest.raises(ValueError, match="epoch should be a non-negative integer"):
            s.set_epoch(bad)  # type: ignore[arg-type]
    assert s.epoch == 0


def test_a_state_saved_after_the_last_batch_goes_on_with_the_next_epoch() -> None:
    a = BudgetedStream(50, 5, budget=1.0, drop_last=False, seed=0, generator=None,
                       streams=("x",))  # fmt: skip
    a.set_epoch(3)
    a.begin_pass()
    for _ in range(a.num_steps):  # the whole pass, its end not observed
        a.advance()
    b = BudgetedStream(50, 5, budget=1.0, drop_last=False, seed=0, generator=None,
                       streams=("x",))  # fmt: skip
    b.load_state_dict(a.state_dict())
    assert not b.begin_pass()  # a new pass ...
    assert (b.epoch, b.step_in_epoch) == (4, 0)  # ... of the next epoch


def test_a_state_with_other_random_streams_is_refused() -> None:
    a = BudgetedStream(50, 5, budget=1.0, drop_last=False, seed=0, generator=None,
                       streams=("x", "y"))  # fmt: skip
    b = BudgetedStream(50, 5, budget=1.0, drop_last=False, seed=0, generator=None,
                       streams=("x", "z"))  # fmt: skip
    with pytest.raises(ValueError, match=r"should hold the random streams \['x', 'z'\]"):
        b.load_state_dict(a.state_dict())


def test_batch_size_may_equal_the_dataset() -> None:
    assert (
        BudgetedStream(10, 10, budget=1.0, drop_last=False, seed=0, generator=None).num_steps == 1
    )
    with pytest.raises(ValueError, match="batch_size=11 is larger than the dataset"):
        BudgetedStream(10, 11, budget=1.0, drop_last=False, seed=0, generator=None)
