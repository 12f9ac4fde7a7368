"""Samplers that train on one weighted coreset of the whole training set (CRAIG, GradMatch).

Every ``reselect_every`` epochs the callback is asked for the proxies of all N examples, the
coreset of K = round(budget · N) examples is chosen class by class (K split by largest
remainder) by the subclass's rule (:meth:`WholeSetSelection.solve`), its weights are rescaled
to mean 1, and each epoch's batches are consecutive slices of a stream of random permutations
of it (:func:`batch_positions`). The coreset, its weights and the epoch of its selection are
the state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from coreset_sampler._checks import check_callable, check_labels, check_positive_int
from coreset_sampler._state import (
    FLOATS,
    INTS,
    OPTIONAL_INT,
    Stateful,
    finite_weights,
    indices_below,
)
from coreset_sampler.proxies import call_proxies
from coreset_sampler.weights import WeightedIndex

from ._base import BudgetedSampler
from ._selection import labels_digest, largest_remainder, mean_one
from ._stream import BudgetedStream
from ._telemetry import SamplerTelemetry, SelectionRecord, Telemetry

__all__ = ["WholeSetSampler", "WholeSetSelection", "batch_positions", "coreset_size"]

IntArray = npt.NDArray[np.int64]
# random streams derived per epoch from (seed, epoch, stream)
SHUFFLE, SELECT = 0, 1


def coreset_size(budget: float, num_samples: int) -> int:
    """``round(budget · N)``, halves rounded up; products within 1e-9 of an integer snap to it."""
    exact = budget * num_samples
    nearest = round(exact)
    if abs(exact - nearest) <= 1e-9 * max(1.0, exact):
        return int(nearest)
    return math.floor(exact + 0.5)


def batch_positions(rng: np.random.Generator, size: int, m: int, steps: int) -> list[IntArray]:
    """``steps`` batches of ``m`` distinct positions in ``[0, size)``, ``m ≤ size``.

    The batches are consecutive slices of a stream of cycles; each cycle is a random permutation
    of all positions. A batch that would run past the end of a cycle takes the cycle's rest and
    is filled up with the first positions of the next cycle's permutation that it does not hold
    yet; the next cycle then continues with its remaining positions. So every position appears
    exactly once per cycle and no batch holds a position twice.
    """
    out: list[IntArray] = []
    perm = rng.permutation(size).astype(np.int64)
    pos = 0
    for _ in range(steps):
        if pos + m <= perm.shape[0]:
            out.append(perm[pos : pos + m])
            pos += m
            continue
        head = perm[pos:]
        nxt = rng.permutation(size).astype(np.int64)
        fill = nxt[~np.isin(nxt, head)][: m - head.shape[0]]
        out.append(np.concatenate([head, fill]))
        perm = nxt[~np.isin(nxt, fill)]
        pos = 0
    return out


class WholeSetSelection(Stateful):
    """A coreset of the whole training set: proxies of every example (in chunks), one problem
    per class, K split by largest remainder; a subclass's :meth:`solve` picks each class's
    coreset and its weights. The coreset, its weights and the epoch of its selection are the
    state; ``settings`` (name → value) join the configuration after ``reselect_every``;
    ``size`` replaces K = round(budget · N) for a subclass whose subset has another size."""

    coreset: list[int]
    weights: list[float]
    selected_epoch: int | None

    def __init__(
        self, callback: Any, stream: BudgetedStream, *, labels: Any, reselect_every: int,
        callback_batch_size: int, settings: Mapping[str, Any], size: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        n = self.num_samples = stream.num_samples
        self.callback = check_callable("callback", callback)
        self.size = coreset_size(stream.budget, n) if size is None else size
        if self.size < stream.batch_size:
            raise ValueError(
                f"the coreset, round(budget·num_samples) = {self.size} (budget={stream.budget!r},"
                f" num_samples={n}), is smaller than batch_size={stream.batch_size}: raise the "
                "budget or lower batch_size"
            )
        self.reselect_every = check_positive_int("reselect_every", reselect_every)
        self.callback_batch_size = check_positive_int("callback_batch_size", callback_batch_size)
        self.labels = check_labels(labels, n)
        self.add_config("coreset_size", self.size)
        self.add_config("reselect_every", self.reselect_every)
        for name, value in settings.items():
            self.add_config(name, value)
        self.add_config("labels", labels_digest(self.labels))
        self.add_state("coreset", INTS, [], check=indices_below(n))
        self.add_state("weights", FLOATS, [], check=finite_weights)
        self.add_state("selected_epoch", OPTIONAL_INT, None)

    def _check_together(self, values: Mapping[str, Any]) -> str | None:
        coreset, weights = values["coreset"], values["weights"]
        if len(coreset) not in (0, self.size) or len(weights) != len(coreset):
            return (
                f"holds a coreset of {len(coreset)} examples and {len(weights)} weights, but "
                f"this sampler's coreset has {self.size} (and one weight each)"
            )
        return None

    def due(self, epoch: int) -> bool:
        last = self.selected_epoch
        return last is None or not self.coreset or not 0 <= epoch - last < self.reselect_every

    def select(
        self, index: int, epoch: int, rng: np.random.Generator
    ) -> tuple[float, float, list[tuple[IntArray, int]]]:
        """Select the coreset of ``epoch``; returns the seconds in the callback and in the
        kernel, and the problems (examples, picks)."""
        t0 = time.perf_counter()
        proxies = self._proxies(index)
        callback_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        groups = self._groups()
        coreset: list[int] = []
        gammas: list[float] = []
        for members, k in groups:
            feats = proxies[torch.from_numpy(members).to(proxies.device)]
            picks, weights = self.solve(feats, k, rng)
            coreset.extend(members[picks].tolist())
            gammas.extend(weights)
        self.coreset, self.weights = coreset, mean_one(gammas, self.size)
        self.selected_epoch = epoch
        return callback_seconds, time.perf_counter() - t0, groups

    def solve(
        self, feats: Tensor, k: int, rng: np.random.Generator
    ) -> tuple[IntArray, list[float]]:
        """``k`` distinct rows of one class's proxies ``feats`` and their (unscaled) weights."""
        raise NotImplementedError

    def _proxies(self, selection: int) -> Tensor:
        n, size = self.num_samples, self.callback_batch_size
        parts: list[Tensor] = []
        for start in range(0, n, size):
            idx = np.arange(start, min(n, start + size), dtype=np.int64)
            call = f"callback(indices[{start}:{start + idx.shape[0]}]) at selection {selection}"
            proxies, _ = call_proxies(self.callback, idx, call)
            if parts and (proxies.shape[1] != parts[0].shape[1]):
                raise ValueError(
                    f"{call} returned proxies of dimension {proxies.shape[1]}, but the first "
                    f"call returned {parts[0].shape[1]}"
                )
            parts.append(proxies)
        return torch.cat(parts)

    def _groups(self) -> list[tuple[IntArray, int]]:
        """(examples, picks) of each problem; picks sum to K."""
        if self.labels is None:
            return [(np.arange(self.num_samples, dtype=np.int64), self.size)]
        members = [
            np.flatnonzero(self.labels == c).astype(np.int64)
            for c in range(int(self.labels.max()) + 1)
        ]
        ks = largest_remainder(self.size, np.array([m.shape[0] for m in members], dtype=np.int64))
        return [(m, int(k)) for m, k in zip(members, ks, strict=True) if k > 0]


class WholeSetSampler(BudgetedSampler):
    """Batches from one weighted coreset of the whole set (``_selection``), reselected every
    ``reselect_every`` epochs; a subclass composes the parts."""

    _selection: WholeSetSelection

    def _build(
        self, stream: BudgetedStream, selection: WholeSetSelection, telemetry: Telemetry
    ) -> None:
        self._selection = selection
        self._telemetry = telemetry
        self._compose(stream, {"coreset": selection, "telemetry": telemetry})

    def __iter__(self) -> Iterator[list[int]]:
        stream = self._stream
        skip = stream.step_in_epoch if stream.begin_pass() else 0
        epoch = stream.epoch
        if self._selection.due(epoch):
            self._select(epoch)
        coreset, weights = self._selection.coreset, self._selection.weights
        batches = self._batch_positions(epoch)
        for k in range(skip, stream.num_steps):
            stream.advance()
            yield [WeightedIndex(coreset[p], weights[p]) for p in batches[k]]
        self._end_pass()

    def _batch_positions(self, epoch: int) -> Sequence[Sequence[int]]:
        """Each step's positions in the subset: consecutive slices of random permutations of it
        (:func:`batch_positions`)."""
        stream = self._stream
        batches = batch_positions(
            stream.rng(epoch, SHUFFLE), self._selection.size, stream.batch_size, stream.num_steps
        )
        return [b.tolist() for b in batches]

    def _select(self, epoch: int) -> None:
        start = time.perf_counter()
        index = self._telemetry.num_selections
        rng = self._stream.rng(epoch, SELECT)
        callback_seconds, kernel_seconds, groups = self._selection.select(index, epoch, rng)
        record = SelectionRecord(
            step=self._stream.step, epoch=epoch, reason="initial" if index == 0 else "interval",
            num_pools=len(groups), pool_size=max(m.shape[0] for m, _ in groups), interval=None,
            active_size=self.num_samples, num_proxies=self.num_samples,
            callback_seconds=callback_seconds, kernel_seconds=kernel_seconds,
            anchor_seconds=0.0, seconds=time.perf_counter() - start,
            **self._telemetry.history([self._selection.coreset], [self._selection.weights]),
        )  # fmt: skip
        self._telemetry.selection(record)

    @property
    def callback(self) -> Any:
        """The proxy callback."""
        return self._selection.callback

    @property
    def coreset_size(self) -> int:
        """K = round(budget · N), the coreset's size."""
        return self._selection.size

    @property
    def coreset(self) -> list[int]:
        """The current coreset's example indices, class by class in selection order (a copy)."""
        return list(self._selection.coreset)

    @property
    def coreset_weights(self) -> Tensor:
        """The current coreset's weights w_j, mean 1 (a fresh float32 tensor)."""
        return torch.tensor(self._selection.weights, dtype=torch.float32)

    @property
    def telemetry(self) -> SamplerTelemetry:
        """Selection records and running totals (a fresh snapshot).

        In each :class:`~coreset_sampler.samplers.SelectionRecord`, ``num_pools`` is the number
        of problems (classes with at least one pick), ``pool_size`` the size of the largest,
        ``interval`` is ``None`` and ``anchor_seconds`` 0; the check and dropping totals are 0
        (these samplers have neither).
        """
        return self._telemetry.snapshot(self._stream.step)
