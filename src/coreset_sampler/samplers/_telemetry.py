"""What the samplers report: a record per selection and per check, and running totals.

:class:`Telemetry` keeps the last records (a bounded history, not saved; with
``record_coresets`` each selection record holds the chosen indices and weights) and the totals
(counters, part of the state), logs each selection and check at DEBUG and one line per epoch
at INFO through the sampler's logger, and gives a :class:`SamplerTelemetry` snapshot on
request. The library never prints.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from coreset_sampler._checks import check_positive_int
from coreset_sampler._state import COUNTERS, Stateful

__all__ = ["CheckRecord", "SamplerTelemetry", "SelectionRecord", "Telemetry"]

_COUNTERS = (
    "num_selections",
    "num_checks",
    "callback_seconds",
    "kernel_seconds",
    "selection_seconds",
    "anchor_seconds",
    "check_seconds",
)


@dataclass(frozen=True)
class SelectionRecord:
    """One selection.

    Attributes:
        step: batches yielded before it (the index of the first batch it serves).
        epoch: sampler epoch.
        reason: ``"initial"``, ``"check"`` (the monitor's ρ > τ), ``"interval"`` (fixed
            ``reselect_every`` without a monitor) or ``"uses"`` (every coreset was trained on
            ``max_uses`` times).
        num_pools: P.
        pool_size: r.
        interval: T1 after the anchor (``None`` without a monitor).
        active_size: examples in the active set when the pools were drawn.
        num_proxies: distinct examples sent to the callback.
        callback_seconds: time in the user's callback (proxies).
        kernel_seconds: time in :func:`greedy_facility_location` (and building its input).
        anchor_seconds: time in ``monitor.anchor`` (0 without a monitor).
        seconds: total time of the selection.
        coresets: the chosen example indices, one tuple per coreset (P for CREST and
            k-center, one for CRAIG), when the sampler was built with
            ``record_coresets=True``; else ``None``.
        weights: their weights, in the same order (``None`` as ``coresets``).
    """

    step: int
    epoch: int
    reason: str
    num_pools: int
    pool_size: int
    interval: int | None
    active_size: int
    num_proxies: int
    callback_seconds: float
    kernel_seconds: float
    anchor_seconds: float
    seconds: float
    coresets: tuple[tuple[int, ...], ...] | None = None
    weights: tuple[tuple[float, ...], ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, for a logger or a table (``coresets`` and ``weights``
        are left out when not recorded)."""
        out = asdict(self)
        if self.coresets is None:
            del out["coresets"], out["weights"]
        return out

    def __repr__(self) -> str:
        fields = self.as_dict()
        if self.coresets is not None:  # (the indices are in the attributes, not the line)
            sizes = [len(c) for c in self.coresets]
            fields["coresets"] = f"<{len(sizes)} coresets of {sum(sizes)} indices>"
            del fields["weights"]
        body = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
        )
        return f"SelectionRecord({body})"


@dataclass(frozen=True)
class CheckRecord:
    """One ``monitor.check()``.

    Attributes:
        step: batches yielded before it.
        seconds: time in ``monitor.check``.
        rho: ρ the monitor reported.
        reselect: whether it triggered a selection.
        interval: T1 in use at the check.
    """

    step: int
    seconds: float
    rho: float
    reselect: bool
    interval: int

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, for a logger or a table."""
        return asdict(self)


@dataclass(frozen=True)
class SamplerTelemetry:
    """A snapshot of a sampler's ``telemetry``: the last records and running totals.

    Samplers without monitor checks or dropping (CRAIG, k-center, random) report 0 for those.

    Attributes:
        selections: the most recent :class:`SelectionRecord` (at most ``telemetry_size``).
        checks: the most recent :class:`CheckRecord` (at most ``telemetry_size``).
        num_steps: batches yielded so far (all epochs).
        num_selections: selections so far (including the first).
        num_checks: monitor checks so far.
        num_dropped: examples dropped from the active set.
        callback_seconds: total time in the callback.
        kernel_seconds: total time in the selection kernel.
        anchor_seconds: total time in ``monitor.anchor``.
        check_seconds: total time in ``monitor.check``.
        selection_seconds: total time of the selections, everything included (drawing pools,
            callback, kernel, anchor, bookkeeping): ``callback_seconds``, ``kernel_seconds``
            and ``anchor_seconds`` are parts of it.
    """

    selections: list[SelectionRecord]
    checks: list[CheckRecord]
    num_steps: int
    num_selections: int
    num_checks: int
    num_dropped: int
    callback_seconds: float
    kernel_seconds: float
    anchor_seconds: float
    check_seconds: float
    selection_seconds: float

    def __repr__(self) -> str:
        """One line: the totals, the latest ρ, T1 and P, and how many records are kept (the
        records themselves are in ``selections`` and ``checks``)."""
        m = self.metrics()
        latest = ", ".join(
            f"{name} {m[key]:.4g}" for key, name in
            (("rho", "rho"), ("interval", "T1"), ("num_pools", "P")) if key in m
        )  # fmt: skip
        return (
            f"SamplerTelemetry(steps={self.num_steps}, selections={self.num_selections}, "
            f"checks={self.num_checks}, dropped={self.num_dropped}, seconds: selections "
            f"{self.selection_seconds:.3g} (callback {self.callback_seconds:.3g}, kernel "
            f"{self.kernel_seconds:.3g}, anchor {self.anchor_seconds:.3g}), checks "
            f"{self.check_seconds:.3g}"
            + (f"; latest {latest}" if latest else "")
            + f"; {len(self.selections)} selection and {len(self.checks)} check records)"
        )

    def metrics(self) -> dict[str, float]:
        """The totals and the latest ρ, T1 and P as one flat dict of numbers, for a logger
        (``LightningModule.log_dict``, TensorBoard's ``add_scalars``, ...): ``steps``,
        ``selections``, ``checks``, ``dropped``, ``*_seconds``, and ``rho`` (the latest
        check's), ``interval`` (T1 of the latest check or selection) and ``num_pools`` (P of the
        latest selection) once there are records that have them.

        Examples:
            >>> from coreset_sampler import RandomBatchSampler
            >>> sampler = RandomBatchSampler(100, 10, seed=0)
            >>> _ = list(sampler)
            >>> sampler.telemetry.metrics()["steps"]
            1.0
        """
        out = {
            "steps": float(self.num_steps),
            "selections": float(self.num_selections),
            "checks": float(self.num_checks),
            "dropped": float(self.num_dropped),
            "selection_seconds": self.selection_seconds,
            "callback_seconds": self.callback_seconds,
            "kernel_seconds": self.kernel_seconds,
            "anchor_seconds": self.anchor_seconds,
            "check_seconds": self.check_seconds,
        }
        intervals: list[tuple[int, int]] = []  # (step, T1) of the latest records
        if self.checks:
            out["rho"] = float(self.checks[-1].rho)
            intervals.append((self.checks[-1].step, self.checks[-1].interval))
        if self.selections:
            last = self.selections[-1]
            out["num_pools"] = float(last.num_pools)
            if last.interval is not None:
                intervals.append((last.step, last.interval))
        if intervals:
            out["interval"] = float(max(intervals)[1])
        return out


class Telemetry(Stateful):
    """Records and totals of a sampler's selections and checks.

    ``label`` starts the log lines (``"CRAIG "``: "CRAIG selection 3 ..."); with
    ``record_coresets`` the selection records keep the chosen indices and weights; a sampler
    that never selects (``selects=False``, random batches) leaves the totals out of its epoch
    lines.
    """

    counters: dict[str, float]

    def __init__(
        self,
        size: int,
        logger: logging.Logger,
        label: str = "",
        *,
        record_coresets: bool = False,
        selects: bool = True,
    ) -> None:
        super().__init__()
        self.size = check_positive_int("telemetry_size", size)
        if not isinstance(record_coresets, bool):
            raise TypeError(f"record_coresets should be a bool, but got {record_coresets!r}")
        self.record_coresets = record_coresets
        self.selects = selects
        self.logger = logger
        self.label = label
        self.selections: deque[SelectionRecord] = deque(maxlen=self.size)
        self.checks: deque[CheckRecord] = deque(maxlen=self.size)
        self.add_state("counters", COUNTERS, dict.fromkeys(_COUNTERS, 0.0))

    @property
    def num_selections(self) -> int:
        return int(self.counters["num_selections"])

    def history(
        self, coresets: Sequence[Sequence[int]], weights: Sequence[Sequence[float]]
    ) -> dict[str, Any]:
        """The ``coresets``/``weights`` fields of a selection record: the chosen indices and
        weights when recording them, else nothing."""
        if not self.record_coresets:
            return {}
        return {
            "coresets": tuple(tuple(int(i) for i in c) for c in coresets),
            "weights": tuple(tuple(float(w) for w in ws) for ws in weights),
        }

    def selection(self, record: SelectionRecord) -> None:
        index = self.num_selections
        self.selections.append(record)
        c = self.counters
        c["num_selections"] += 1
        c["callback_seconds"] += record.callback_seconds
        c["kernel_seconds"] += record.kernel_seconds
        c["selection_seconds"] += record.seconds
        c["anchor_seconds"] += record.anchor_seconds
        self.logger.debug("%sselection %d (%s): %s", self.label, index, record.reason, record)

    def check(self, record: CheckRecord) -> None:
        self.checks.append(record)
        self.counters["num_checks"] += 1
        self.counters["check_seconds"] += record.seconds
        self.logger.debug("check at step %d: %s", record.step, record)

    def epoch_done(
        self, epoch: int, num_batches: int, num_samples: int, num_dropped: int | None = None
    ) -> None:
        """The INFO line at the end of a pass: its batches, the totals so far, and for a
        sampler that drops examples (``num_dropped`` not ``None``) how many it dropped in
        all so far, and their share of the data."""
        c = self.counters
        line = f"{self.label}epoch {epoch} done: {num_batches} batches"
        if self.selects:
            line += (
                f"; {int(c['num_selections'])} selections and {int(c['num_checks'])} checks so "
                f"far, {c['selection_seconds'] + c['check_seconds']:.3g} s in the sampler"
            )
        if num_dropped is not None:
            line += (
                f"; {num_dropped} learned examples dropped so far ({num_dropped / num_samples:.1%}"
                f" of {num_samples}), {num_samples - num_dropped} active"
            )
        self.logger.info("%s", line)

    def snapshot(self, num_steps: int, num_dropped: int = 0) -> SamplerTelemetry:
        c = self.counters
        return SamplerTelemetry(
            selections=list(self.selections),
            checks=list(self.checks),
            num_steps=num_steps,
            num_selections=int(c["num_selections"]),
            num_checks=int(c["num_checks"]),
            num_dropped=num_dropped,
            callback_seconds=c["callback_seconds"],
            kernel_seconds=c["kernel_seconds"],
            anchor_seconds=c["anchor_seconds"],
            check_seconds=c["check_seconds"],
            selection_seconds=c["selection_seconds"],
        )

    def _after_load(self) -> None:
        # a state may lack counters this version keeps: they start at 0
        self.counters = {**dict.fromkeys(_COUNTERS, 0.0), **self.counters}
