r"""k-center greedy mini-batches as a DataLoader batch sampler.

The k-center coreset (Sener and Savarese, "Active Learning for Convolutional Neural Networks: A
Core-Set Approach", ICLR 2018; the ``GreedyCoreset`` of Small-GAN, Sinha et al., 2020) picks
the points that cover a set best in the worst case,

.. math::

    S = \operatorname*{arg\,min}_{|S| = m} \max_{i ∈ V} \min_{j ∈ S} \lVert g_i - g_j \rVert,

by farthest-point greedy, a 2-approximation (Gonzalez, 1985). Unlike facility location it
has no cluster-size weights: the picks are a diverse, unweighted mini-batch.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from coreset_sampler._validation import check_positive_int

from .k_center import greedy_k_center
from .sampler import (
    IntArray,
    ProxyCallback,
    SamplerTelemetry,
    SelectionRecord,
    WeightedIndex,
    _BudgetedBatchSampler,
    _check_labels,
    _check_state,
    _first_appearance,
    _largest_remainder,
    _read_callback,
    _resolve_pool_size,
    _rng_from_state,
    _rng_state,
    _selection_only_telemetry,
)

__all__ = ["KCenterBatchSampler"]

logger = logging.getLogger(__name__)

# independent random streams, derived per epoch from (seed, epoch, stream)
_STREAMS = ("pools", "shuffle")
_STATE_VERSION = 1


class KCenterBatchSampler(_BudgetedBatchSampler):
    r"""Batch sampler whose batches are k-center greedy picks of random pools (unweighted).

    **Budget.** ``len(sampler) = ceil(budget · N / batch_size)`` batches every epoch
    (``drop_last=True``: floor), as for :class:`~coreset_sampler.sampler.CrestBatchSampler`.

    **Selection, per pool.** Draw P = ``num_pools`` pools of r = ``pool_size`` examples, each
    uniformly without replacement from the dataset, independently (pools may overlap); with
    ``labels`` each pool is stratified (class c gets r · n_c / N examples, largest remainder),
    but the centres are picked across classes. Call ``callback`` once on all pooled examples
    (deduplicated, in order of first appearance), then pick m = ``batch_size`` centres in every
    pool by farthest-point greedy on the proxies, all pools in one batched
    :func:`~coreset_sampler.k_center.greedy_k_center` call (first centre: the pool member
    nearest to the pool's mean). Each pool's m centres are one batch.

    **Yield.** Lists of :class:`~coreset_sampler.sampler.WeightedIndex` with weight 1 (so a
    loop written for the weighted samplers runs unchanged). The P batches are cycled, each pass
    in a fresh random order, and a new selection is made every ``reselect_every`` steps
    (batches yielded; default 20, so each batch is used 4 times with P = 5, as for CREST
    without a monitor). Selections carry over epoch boundaries: this is a per-pool schedule,
    not one selection per epoch.

    **State.** :meth:`state_dict` holds the epoch and step, the random streams, the current
    batches and cycle position, and the steps since the last selection. After
    :meth:`load_state_dict` the next ``__iter__`` continues with the identical batches, calling
    the callback only for selections not made before the save.

    Args:
        data_source: the dataset (anything with ``len``) or its size N. Not a sampler.
        batch_size: m, centres per pool; every batch has exactly this many indices.
        callback: ``callback(indices) -> [n, d]`` proxies or ``(proxies, losses)`` (losses are
            ignored), see :class:`~coreset_sampler.sampler.ProxyCallback`.
        budget: fraction of a full-data epoch's batches to yield, in (0, 1].
        labels: optional class label of every example (length N) for stratified pools.
        pool_size: r, examples per pool (default ``max(ceil(0.01·N), batch_size)``).
        num_pools: P, pools (and batches) per selection.
        reselect_every: steps between selections.
        drop_last: round ``budget · N / batch_size`` down instead of up.
        seed: seed of the random streams (0 when neither ``seed`` nor ``generator`` is given).
        generator: a :class:`torch.Generator` to draw the seed from (once, at construction).
        telemetry_size: selection records kept in :attr:`telemetry`.

    Raises:
        TypeError: on arguments of the wrong type (including ``True`` where an int is meant).
        ValueError: on invalid values, naming the argument and the value.

    Examples:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> proxies = torch.randn(500, 4, generator=g)
        >>> sampler = KCenterBatchSampler(
        ...     500, batch_size=10, callback=lambda idx: proxies[idx], budget=0.4, seed=0
        ... )
        >>> batches = list(sampler)
        >>> len(batches), len(sampler), {len(b) for b in batches}, batches[0][0].weight
        (20, 20, {10}, 1.0)
        >>> sampler.telemetry.num_selections
        1
    """

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 128,
        *,
        callback: ProxyCallback,
        budget: float = 0.1,
        labels: Sequence[int] | Tensor | npt.NDArray[Any] | None = None,
        pool_size: int | None = None,
        num_pools: int = 5,
        reselect_every: int = 20,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        telemetry_size: int = 1000,
    ) -> None:
        super().__init__(
            data_source,
            batch_size,
            budget=budget,
            drop_last=drop_last,
            seed=seed,
            generator=generator,
        )
        n = self.num_samples
        if not callable(callback):
            raise TypeError(f"callback should be callable, but got {type(callback).__name__}")
        self.callback = callback
        self.pool_size = _resolve_pool_size(
            pool_size,
            self.batch_size,
            n,
            n,
            unit="batch",
            over=f"is larger than the dataset (num_samples={n})",
        )
        self.num_pools = check_positive_int("num_pools", num_pools)
        self.reselect_every = check_positive_int("reselect_every", reselect_every)
        self._labels = _check_labels(labels, n)
        self.telemetry_size = check_positive_int("telemetry_size", telemetry_size)

        self._step = 0  # batches yielded, all epochs
        self._rngs = self._make_rngs(0)
        self._coresets: list[list[int]] = []
        self._order: list[int] = []
        self._position = 0
        self._steps_since_selection = 0
        self._selections: deque[SelectionRecord] = deque(maxlen=self.telemetry_size)
        self._counters: dict[str, float] = dict.fromkeys(
            ("num_selections", "callback_seconds", "kernel_seconds", "selection_seconds"), 0.0
        )

    # -- public API -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[list[int]]:
        if not self._begin_pass():
            self._rngs = self._make_rngs(self._epoch)
        while self._step_in_epoch < self._num_steps:
            yield self._next_batch()
        self._end_pass()

    @property
    def coresets(self) -> list[list[int]]:
        """The current P batches (copies; empty before the first selection)."""
        return [list(c) for c in self._coresets]

    @property
    def telemetry(self) -> SamplerTelemetry:
        """Selection records and running totals (a fresh snapshot).

        In each :class:`~coreset_sampler.sampler.SelectionRecord`, ``interval`` is ``None`` and
        ``anchor_seconds`` 0; the check and dropping fields of the snapshot are 0.
        """
        return _selection_only_telemetry(self._selections, self._counters, self._step)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the batch stream exactly (plain Python values)."""
        return {
            "version": _STATE_VERSION,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "epoch": self._epoch,
            "step_in_epoch": self._step_in_epoch,
            "step": self._step,
            "rng": {name: _rng_state(g) for name, g in self._rngs.items()},
            "coresets": [list(c) for c in self._coresets],
            "order": list(self._order),
            "position": self._position,
            "steps_since_selection": self._steps_since_selection,
            "counters": dict(self._counters),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next ``__iter__`` continues the saved epoch.

        Raises:
            TypeError: if ``state`` is not a mapping.
            ValueError: on missing keys, or a state saved for another dataset size or batch
                size.
        """
        keys = (
            "seed", "epoch", "step_in_epoch", "step", "rng", "coresets", "order", "position",
            "steps_since_selection", "counters",
        )  # fmt: skip
        _check_state(state, self, keys)
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._step_in_epoch = int(state["step_in_epoch"])
        self._step = int(state["step"])
        self._rngs = {name: _rng_from_state(state["rng"][name]) for name in _STREAMS}
        self._coresets = [[int(i) for i in c] for c in state["coresets"]]
        self._order = [int(i) for i in state["order"]]
        self._position = int(state["position"])
        self._steps_since_selection = int(state["steps_since_selection"])
        self._counters = {
            **dict.fromkeys(self._counters, 0.0),
            **{k: float(v) for k, v in state["counters"].items()},
        }
        self._resume = True

    # -- the schedule ---------------------------------------------------------------------

    def _make_rngs(self, epoch: int) -> dict[str, np.random.Generator]:
        return {name: self._rng(epoch, k) for k, name in enumerate(_STREAMS)}

    def _next_batch(self) -> list[int]:
        if not self._coresets or self._steps_since_selection >= self.reselect_every:
            self._select()
        if self._position >= len(self._order):
            self._order = self._rngs["shuffle"].permutation(len(self._coresets)).tolist()
            self._position = 0
        p = self._order[self._position]
        self._position += 1
        self._steps_since_selection += 1
        self._step += 1
        self._step_in_epoch += 1
        return [WeightedIndex(i, 1.0) for i in self._coresets[p]]

    def _draw_pools(self) -> list[IntArray]:
        rng = self._rngs["pools"]
        n, r = self.num_samples, self.pool_size
        if self._labels is None:
            return [rng.choice(n, size=r, replace=False) for _ in range(self.num_pools)]
        members = [
            np.flatnonzero(self._labels == c).astype(np.int64)
            for c in range(int(self._labels.max()) + 1)
        ]
        quotas = _largest_remainder(r, np.array([m.shape[0] for m in members], dtype=np.int64))
        return [
            np.concatenate(
                [
                    rng.choice(m, size=int(q), replace=False)
                    for m, q in zip(members, quotas, strict=True)
                    if q
                ]
            )
            for _ in range(self.num_pools)
        ]

    def _select(self) -> None:
        start = time.perf_counter()
        selection = int(self._counters["num_selections"])
        reason = "initial" if selection == 0 else "interval"
        pools = self._draw_pools()
        unique, positions = _first_appearance(np.concatenate(pools))
        call = f"callback(indices) at selection {selection} (step {self._step})"

        t0 = time.perf_counter()
        proxies, _ = _read_callback(self.callback(unique.tolist()), unique, call)
        callback_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        gather = torch.from_numpy(positions.reshape(self.num_pools, -1)).to(proxies.device)
        picks = greedy_k_center(proxies[gather], self.batch_size).indices.cpu().numpy()
        self._coresets = [pool[row].tolist() for pool, row in zip(pools, picks, strict=True)]
        kernel_seconds = time.perf_counter() - t0

        self._order = self._rngs["shuffle"].permutation(self.num_pools).tolist()
        self._position = 0
        self._steps_since_selection = 0
        record = SelectionRecord(
            step=self._step,
            epoch=self._epoch,
            reason=reason,
            num_pools=self.num_pools,
            pool_size=self.pool_size,
            interval=None,
            active_size=self.num_samples,
            num_proxies=int(unique.shape[0]),
            callback_seconds=callback_seconds,
            kernel_seconds=kernel_seconds,
            anchor_seconds=0.0,
            seconds=time.perf_counter() - start,
        )
        self._selections.append(record)
        c = self._counters
        c["num_selections"] += 1
        c["callback_seconds"] += callback_seconds
        c["kernel_seconds"] += kernel_seconds
        c["selection_seconds"] += record.seconds
        logger.info("k-center selection %d (%s): %s", selection, reason, record)
