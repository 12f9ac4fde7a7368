"""What every sampler of the package shares: the budgeted stream, ``len``, epochs, state.

A sampler is a :class:`BudgetedSampler` composed of parts (:meth:`_compose`): the stream and
whatever else it needs (selection, policy, dropper, coreset cycle, telemetry). Its
``state_dict``/``load_state_dict`` are those of the parts, declared once in each, under the
sampler's kind and the format version (see :mod:`coreset_sampler._state`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from torch.utils.data import Sampler

from coreset_sampler._state import Composite, Stateful
from coreset_sampler.weights import WeightedIndex

from ._policy import EveryNSteps, MonitorChecks
from ._selection import PoolSelection, Selected
from ._stream import BudgetedStream, CoresetCycle
from ._telemetry import SamplerTelemetry, SelectionRecord, Telemetry

__all__ = ["STATE_VERSION", "BudgetedSampler", "PoolSampler"]

IntArray = npt.NDArray[np.int64]

# 2: the state of 0.2, declared by parts (kind, version, config, one entry per part)
# 3: the coreset cycle counts its passes (CREST's and k-center's ``cycle.passes``) and CREST's
#    configuration holds ``max_uses``
# 4: CREST's configuration holds ``weighting``
STATE_VERSION = 4


class BudgetedSampler(Sampler[list[int]]):
    """Base of the samplers: ``len`` batches per epoch, ``set_epoch``, declared state."""

    _kind: str  # the kind of state it saves and reads: its class's name in the library
    _stream: BudgetedStream
    _state: Composite
    _telemetry: Telemetry

    def _compose(
        self,
        stream: BudgetedStream,
        parts: Mapping[str, Stateful],
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Set the parts; ``settings`` are configuration that belongs to no part. A part that
        may refuse its state late (the monitor's) comes first in ``parts``."""
        self._stream = stream
        # (the stream's settings come first in the configuration, so that a state of another
        # budget is refused for its budget, not for what follows from it)
        config = {**stream.config(), **(settings or {})}
        self._state = Composite(self._kind, STATE_VERSION, {**parts, "stream": stream}, config)

    def _end_pass(self) -> None:
        """A pass's last batch was taken: the epoch's INFO line, then the next epoch."""
        stream = self._stream
        self._telemetry.epoch_done(
            stream.epoch, stream.step_in_epoch, stream.num_samples, self._dropping()
        )
        stream.end_pass()

    def _dropping(self) -> int | None:
        """Examples dropped so far, or ``None`` for a sampler that does not drop any."""
        return None

    def __len__(self) -> int:
        """Batches per epoch: ``ceil(budget · num_samples / batch_size)`` (floor with
        ``drop_last``), divided among the replicas."""
        return self._stream.num_steps

    @property
    def epoch(self) -> int:
        """The epoch of the current (or next) pass."""
        return self._stream.epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next pass, from its start; its random streams derive from
        ``(seed, epoch)``.

        Without calls to it the epoch advances by one after each pass, complete or left early
        (a loop that breaks out gets new batches at its next pass, as with torch's samplers).
        Setting the epoch the sampler is in is a no-op, so a resumed mid-epoch state survives
        the usual ``sampler.set_epoch(epoch)`` at the top of the loop, and a framework that
        sets the epoch after the pass has begun does not restart it.
        """
        self._stream.set_epoch(epoch)

    @property
    def num_samples(self) -> int:
        return self._stream.num_samples

    @property
    def batch_size(self) -> int:
        return self._stream.batch_size

    @property
    def budget(self) -> float:
        return self._stream.budget

    @property
    def drop_last(self) -> bool:
        return self._stream.drop_last

    @property
    def seed(self) -> int:
        return int(self._stream.seed)

    @property
    def num_replicas(self) -> int:
        return self._stream.num_replicas

    @property
    def rank(self) -> int:
        return self._stream.rank

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the batch stream exactly: the sampler's kind, the
        format version, its configuration and each part's fields (plain Python values, but a
        monitor's own state; fresh objects). Cheap enough to call at every step."""
        return self._state.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next ``__iter__`` continues the saved epoch.

        The state is checked first (its kind, format version and configuration must be this
        sampler's, and every field must be readable and in range); a state that does not fit
        raises and changes nothing.

        Raises:
            TypeError: if ``state`` is not a mapping, or a field has the wrong type.
            ValueError: for a state of another kind, version or configuration (the message
                says which setting differs), or a field out of range.
        """
        self._state.apply(self._state.read(state))


class PoolSampler(BudgetedSampler):
    """Samplers whose batches are coresets of random pools, reselected when a policy says so
    and cycled in between (CREST, k-center): one selection and one batch, written once.

    A subclass composes ``_selection``, ``_policy``, ``_cycle`` and ``_telemetry`` and may
    refine :meth:`_active` (the examples pools are drawn from) and :meth:`_observe` (what a
    selection's losses feed).
    """

    _selection: PoolSelection
    _policy: EveryNSteps | MonitorChecks
    _cycle: CoresetCycle
    _max_uses: int | None = None

    def __iter__(self) -> Iterator[list[int]]:
        stream = self._stream
        stream.begin_pass()
        while stream.step_in_epoch < stream.num_steps:
            yield self._next_batch()
        self._end_pass()

    def _next_batch(self) -> list[int]:
        stream = self._stream
        reason = self._policy.due(bool(self._cycle.coresets), stream.step)
        # coresets used up: a fresh selection (a check that held on this very step is then
        # superseded by the new anchor; its forward pass is not reused)
        if reason is None and self._cycle.used_up(self._max_uses):
            reason = "uses"
            self._policy.refresh()
        if reason is not None:
            self._select(reason)
        indices, weights = self._cycle.next(stream.rngs["shuffle"])
        self._policy.stepped()
        stream.advance()
        return [WeightedIndex(i, w) for i, w in zip(indices, weights, strict=True)]

    def _select(self, reason: str) -> None:
        stream, rngs, policy = self._stream, self._stream.rngs, self._policy
        start = time.perf_counter()
        active = self._active()
        num_pools = policy.num_pools
        call = (
            f"callback(indices) at selection {self._telemetry.num_selections} (step {stream.step})"
        )
        chosen = self._selection.select(rngs["pools"], active, num_pools, call)
        self._observe(chosen)
        self._cycle.replace(chosen.coresets, chosen.weights, rngs["shuffle"])
        anchor_seconds = policy.selected(chosen.coresets, chosen.weights, rngs, self._active)
        record = SelectionRecord(
            step=stream.step, epoch=stream.epoch, reason=reason, num_pools=num_pools,
            pool_size=self._selection.pool_size, interval=policy.interval,
            active_size=int(active.shape[0]), num_proxies=int(chosen.examples.shape[0]),
            callback_seconds=chosen.callback_seconds, kernel_seconds=chosen.kernel_seconds,
            anchor_seconds=anchor_seconds, seconds=time.perf_counter() - start,
            **self._telemetry.history(chosen.coresets, chosen.weights),
        )  # fmt: skip
        self._telemetry.selection(record)

    def _active(self) -> IntArray:
        """The examples pools are drawn from: all of them."""
        return np.arange(self._stream.num_samples, dtype=np.int64)

    def _observe(self, chosen: Selected) -> None:
        """What a selection's losses feed: nothing."""

    def _num_dropped(self) -> int:
        return 0

    @property
    def callback(self) -> Any:
        """The proxy callback."""
        return self._selection.callback

    @property
    def pool_size(self) -> int:
        """r, examples per pool."""
        return self._selection.pool_size

    @property
    def coresets(self) -> list[list[int]]:
        """The current P coresets (copies; empty before the first selection)."""
        return [list(c) for c in self._cycle.coresets]

    @property
    def telemetry(self) -> SamplerTelemetry:
        """Per-selection and per-check records and running totals (a fresh snapshot)."""
        return self._telemetry.snapshot(self._stream.step, self._num_dropped())
