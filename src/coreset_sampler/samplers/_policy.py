"""When to reselect: every few steps, or when the monitor's quadratic model stops predicting.

A policy answers :meth:`due` before each batch (``"initial"``, ``"interval"``, ``"check"`` or
``None``), gives the number of pools of the next selection, is told of each selection
(:meth:`selected`), of each batch yielded (:meth:`stepped`) and of a selection the sampler
makes because its coresets are used up (:meth:`refresh`, before it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from coreset_sampler._checks import check_positive_int
from coreset_sampler._state import INT, OPAQUE, OPTIONAL_INT, Stateful

from ._telemetry import CheckRecord, Telemetry

__all__ = ["EveryNSteps", "MonitorChecks", "SelectionMonitor"]


class _CheckResult(Protocol):
    @property
    def rho(self) -> float: ...

    @property
    def reselect(self) -> bool: ...


class SelectionMonitor(Protocol):
    """What the sampler needs from a monitor, e.g. a
    :class:`~coreset_sampler.monitor.QuadraticLossMonitor`.

    ``anchor`` right after each selection, ``check()`` every ``interval`` (T1) steps; a check
    whose ``reselect`` is true triggers a new selection. ``state_dict``/``load_state_dict`` are
    used when present.
    """

    @property
    def interval(self) -> int: ...

    def anchor(
        self,
        coresets: Sequence[Sequence[int]],
        weights: Sequence[Tensor],
        check_indices: Sequence[int],
    ) -> object: ...

    def check(self) -> _CheckResult: ...


class EveryNSteps(Stateful):
    """Reselect every ``every`` steps (batches yielded), with ``num_pools`` pools each time."""

    steps_since_selection: int

    interval: int | None = None  # (no monitor: no check interval)

    def __init__(self, every: int, num_pools: int) -> None:
        super().__init__()
        self.every = check_positive_int("reselect_every", every)
        self.num_pools = check_positive_int("num_pools", num_pools)
        self.add_config("reselect_every", self.every)
        self.add_config("num_pools", self.num_pools)
        self.add_state("steps_since_selection", INT, 0)

    def due(self, has_coresets: bool, step: int) -> str | None:
        if not has_coresets:
            return "initial"
        return "interval" if self.steps_since_selection >= self.every else None

    def refresh(self) -> None:
        """The coresets are used up before the interval: the next selection's P stays."""

    def selected(self, coresets: Any, weights: Any, rngs: Any, active: Any) -> float:
        self.steps_since_selection = 0
        return 0.0

    def stepped(self) -> None:
        self.steps_since_selection += 1


class MonitorChecks(Stateful):
    """Reselect when the monitor's check says so (ρ > τ), checking every T1 steps.

    Right after each selection the monitor is anchored on the coresets, their weights and a
    fresh check sample of ``check_size`` active examples; T1 is then the smallest interval of
    any rank (``agree``), and a check that reselects on any rank reselects on all, with
    P = min(``pool_multiplier`` · T1, steps per epoch) pools, T1 the interval the monitor
    reports after that check (the adaptive rule has halved it already: the pools are drawn
    for the interval that follows, the paper's rule keeps the one that failed). The monitor's
    own state is captured after each anchor and check, so saving the sampler's state stays
    cheap.
    """

    num_pools: int
    interval: int | None
    steps_since_check: int
    monitor_state: Any

    def __init__(
        self,
        monitor: SelectionMonitor,
        *,
        num_pools: int,
        pool_multiplier: int,
        check_size: int,
        limit: int,
        over: str,
        steps_per_epoch: int,
        agree: Callable[[float, str], float],
        telemetry: Telemetry,
    ) -> None:
        super().__init__()
        if not all(hasattr(monitor, a) for a in ("anchor", "check", "interval")):
            raise TypeError(
                "monitor should provide anchor(), check() and interval (e.g. a "
                f"QuadraticLossMonitor), but got {type(monitor).__name__}"
            )
        self.monitor = monitor
        self.pool_multiplier = check_positive_int("pool_multiplier", pool_multiplier)
        self.check_size = check_positive_int("check_size", check_size)
        if self.check_size > limit:
            raise ValueError(f"check_size={self.check_size} {over}")
        self.steps_per_epoch = steps_per_epoch
        self.agree = agree
        self.telemetry = telemetry
        self.add_config("num_pools", check_positive_int("num_pools", num_pools))
        self.add_config("pool_multiplier", self.pool_multiplier)
        self.add_config("check_size", self.check_size)
        self.add_state("num_pools", INT, num_pools)  # P of the next selection
        self.add_state("interval", OPTIONAL_INT, None)  # T1 agreed at the last anchor
        self.add_state("steps_since_check", INT, 0)
        self.add_state("monitor_state", OPAQUE, None)

    def due(self, has_coresets: bool, step: int) -> str | None:
        if not has_coresets:
            return "initial"
        interval = self._current_interval()
        if self.steps_since_check < interval:
            return None
        start = time.perf_counter()
        report = self.monitor.check()
        seconds = time.perf_counter() - start
        self.steps_since_check = 0
        self._capture()
        # every rank reselects when any rank's model error exceeds the threshold
        reselect = bool(self.agree(float(bool(report.reselect)), "max"))
        record = CheckRecord(step, seconds, float(report.rho), reselect, interval)
        self.telemetry.check(record)
        # the monitor may lengthen the interval after a check that held, or tell the one it
        # will use after the reselection
        self.interval = int(self.agree(float(self.monitor.interval), "min"))
        if not reselect:
            return None
        self.num_pools = min(self.pool_multiplier * self.interval, self.steps_per_epoch)
        return "check"

    def refresh(self) -> None:
        """The coresets are used up before a check asked for new ones: P for the interval."""
        self.num_pools = min(self.pool_multiplier * self._current_interval(), self.steps_per_epoch)

    def _current_interval(self) -> int:
        """T1 as agreed at the last anchor or check (the monitor's own before any)."""
        return self.interval if self.interval is not None else int(self.monitor.interval)

    def selected(
        self,
        coresets: list[list[int]],
        weights: list[list[float]],
        rngs: dict[str, np.random.Generator],
        active: Callable[[], Any],
    ) -> float:
        """Anchor the monitor on the new coresets and a fresh check sample (drawn from
        ``active()`` with the ``"checks"`` stream); returns the seconds the anchor took."""
        self.steps_since_check = 0
        check = rngs["checks"].choice(active(), size=self.check_size, replace=False)
        start = time.perf_counter()
        self.monitor.anchor(
            coresets, [torch.tensor(w, dtype=torch.float32) for w in weights], check.tolist()
        )
        seconds = time.perf_counter() - start
        # all ranks check on the same steps: the smallest T1 of any rank
        self.interval = int(self.agree(float(self.monitor.interval), "min"))
        self._capture()
        return seconds

    def stepped(self) -> None:
        self.steps_since_check += 1

    def apply_state(self, values: Any) -> None:
        # the monitor first: if it refuses its state, nothing of the sampler has changed yet
        # (the sampler applies this part first)
        load = getattr(self.monitor, "load_state_dict", None)
        if values["monitor_state"] is not None and callable(load):
            load(values["monitor_state"])
        super().apply_state(values)

    def _capture(self) -> None:
        get = getattr(self.monitor, "state_dict", None)
        self.monitor_state = get() if callable(get) else None
