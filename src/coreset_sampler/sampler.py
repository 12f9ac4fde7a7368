r"""CREST mini-batch coresets as a batch sampler for any :class:`~torch.utils.data.DataLoader`.

CREST (Yang, Kang, Mirzasoleiman, "Towards Sustainable Learning: Coresets for Data-efficient Deep
Learning", ICML 2023, arXiv 2306.01244) trains on small weighted *mini-batch coresets*: at a
selection it draws P random pools V_1..V_P of r examples each, asks for one gradient proxy g_i
per pooled example, and in each pool picks S_p ⊆ V_p, |S_p| = m, by greedy facility location,

.. math::

    S_p = \operatorname*{arg\,max}_{|S| = m} \sum_{i ∈ V_p} \max_{j ∈ S} \bigl(C - \lVert g_i -
    g_j \rVert\bigr), \qquad γ_j = \bigl|\{i ∈ V_p : j = \operatorname*{arg\,max}_{j' ∈ S_p}
    s(i, j')\}\bigr|,

weighting each pick by its cluster size γ_j, rescaled to mean 1 within its coreset. The training
loss of a batch is mean_i(γ_i ℓ_i). The coresets are reused until a local quadratic model of the
loss (:class:`~coreset_sampler.monitor.QuadraticLossMonitor`) stops predicting the loss, and
examples whose loss stayed below α for T2 steps are dropped from the active set.

This module holds the sampler (:class:`CrestBatchSampler`), the uniform baseline with the same
budget and code path (:class:`RandomBatchSampler`), and the mechanism that carries each batch's
weights to the loss under prefetching (:class:`WeightedIndex`, :class:`WithWeights`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from coreset_sampler._validation import check_finite, check_nonnegative_int, check_positive_int

from .facility_location import greedy_facility_location
from .gradients import GradientProxyCallback

__all__ = [
    "CheckRecord",
    "CrestBatchSampler",
    "ProxyCallback",
    "RandomBatchSampler",
    "SamplerTelemetry",
    "SelectionMonitor",
    "SelectionRecord",
    "WeightedIndex",
    "WithWeights",
]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
Similarity = Literal["neg_distance", "exp", "cosine", "dot"]
_SIMILARITIES: tuple[str, ...] = get_args(Similarity)
# independent random streams, derived per epoch from (seed, epoch, stream)
_STREAMS = ("pools", "checks", "shuffle", "warmup")
_STATE_VERSION = 1


# --------------------------------------------------------------------------- weights travel


class WeightedIndex(int):
    """An example index (an ``int``) that carries the weight of the batch it was yielded in.

    The samplers of this module yield lists of these. They index datasets, tensors and arrays
    exactly like the ``int`` they equal, pickle with their weight (so they reach DataLoader
    workers), and :class:`WithWeights` reads the weight back next to the sample. Arithmetic on
    them returns plain ints.

    Examples:
        >>> import pickle
        >>> i = WeightedIndex(7, 0.5)
        >>> i == 7, i.weight, pickle.loads(pickle.dumps(i)).weight
        (True, 0.5, 0.5)
    """

    weight: float

    def __new__(cls, index: int, weight: float = 1.0) -> WeightedIndex:
        obj = super().__new__(cls, index)
        obj.weight = float(weight)
        return obj

    def __reduce__(self) -> tuple[type[WeightedIndex], tuple[int, float]]:
        return (WeightedIndex, (int(self), self.weight))

    def __repr__(self) -> str:
        return f"WeightedIndex({int(self)}, weight={self.weight!r})"


class WithWeights(Dataset[tuple[Any, ...]]):
    """Opt-in dataset wrapper that returns each sample together with its coreset weight.

    ``WithWeights(ds)[i]`` is ``(*ds[i], w)`` when ``ds[i]`` is a tuple and ``(ds[i], w)``
    otherwise (a list, dict or tensor item is kept whole), with ``w = i.weight`` for a
    :class:`WeightedIndex` and ``1.0`` for a plain int, as a 0-d float32 tensor (so the default
    collate gives a float32 ``[batch]`` tensor). With ``return_index=True`` the example index is
    appended after the weight (for :meth:`CrestBatchSampler.report_losses`). Because the weight
    rides on the index the worker receives, it is always the weight computed for *that* batch,
    however far the loader prefetches. Wrapped datasets that define ``__getitems__`` keep using
    it.

    Args:
        dataset: a map-style dataset.
        return_index: also return the example index (as a 0-d int64 tensor).

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = WithWeights(TensorDataset(torch.arange(4.0), torch.tensor([0, 1, 0, 1])))
        >>> x, y, w = ds[WeightedIndex(2, 1.5)]
        >>> float(x), int(y), float(w)
        (2.0, 0, 1.5)
    """

    def __init__(self, dataset: Any, *, return_index: bool = False) -> None:
        if not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"dataset should be a map-style dataset (with __getitem__), but got "
                f"{type(dataset).__name__}"
            )
        if not isinstance(return_index, bool):
            raise TypeError(f"return_index should be a bool, but got return_index={return_index!r}")
        self.dataset = dataset
        self.return_index = return_index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return self._attach(self.dataset[index], index)

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, ...]]:
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(indices) if callable(getitems) else [self.dataset[i] for i in indices]
        return [self._attach(item, i) for item, i in zip(items, indices, strict=True)]

    def _attach(self, item: Any, index: int) -> tuple[Any, ...]:
        weight = torch.tensor(float(getattr(index, "weight", 1.0)), dtype=torch.float32)
        extra: tuple[Any, ...] = (weight,)
        if self.return_index:
            extra = (weight, torch.tensor(int(index), dtype=torch.int64))
        if isinstance(item, tuple):
            return (*item, *extra)
        return (item, *extra)


# --------------------------------------------------------------------------- protocols


class ProxyCallback(Protocol):
    """``callback(indices) -> proxies`` or ``-> (proxies, losses)``.

    ``proxies`` is a floating ``[len(indices), d]`` tensor, one gradient proxy per example
    (e.g. ``softmax(logits) − onehot(y)``); ``losses``, if returned, the ``[len(indices)]``
    per-sample losses of the same forward pass (they feed learned-example dropping).
    :class:`~coreset_sampler.gradients.GradientProxyCallback` is one (the sampler then uses its
    ``proxies_and_losses``).
    """

    def __call__(self, indices: list[int]) -> Tensor | tuple[Tensor, Tensor]: ...


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


# --------------------------------------------------------------------------- telemetry


@dataclass(frozen=True)
class SelectionRecord:
    """One selection.

    Attributes:
        step: batches yielded before it (the index of the first batch it serves).
        epoch: sampler epoch.
        reason: ``"initial"``, ``"check"`` (the monitor's ρ > τ) or ``"interval"`` (fixed
            ``reselect_every`` without a monitor).
        num_pools: P.
        pool_size: r.
        interval: T1 after the anchor (``None`` without a monitor).
        active_size: examples in the active set when the pools were drawn.
        num_proxies: distinct examples sent to the callback.
        callback_seconds: time in the user's callback (proxies).
        kernel_seconds: time in :func:`greedy_facility_location` (and building its input).
        anchor_seconds: time in ``monitor.anchor`` (0 without a monitor).
        seconds: total time of the selection.
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


@dataclass(frozen=True)
class SamplerTelemetry:
    """A snapshot of :attr:`CrestBatchSampler.telemetry`: the last records and running totals.

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


# --------------------------------------------------------------------------- shared base


def _steps_per_epoch(
    budget: float, num_samples: int, batch_size: int, drop_last: bool, num_replicas: int = 1
) -> int:
    """Batches per epoch (per replica): ceil(budget·N / (m·replicas)), floor with drop_last.

    The one place of the budget arithmetic. A product within 1e-9 (relative) of an integer is
    that integer, so that float rounding of ``budget·N`` (0.3·10 = 3.0000000000000004) does not
    add a step.
    """
    exact = budget * num_samples / (batch_size * num_replicas)
    nearest = round(exact)
    if abs(exact - nearest) <= 1e-9 * max(1.0, exact):
        return int(nearest)
    return math.floor(exact) if drop_last else math.ceil(exact)


class _BudgetedBatchSampler(Sampler[list[int]]):
    """Dataset size, batch size, budget, epochs and seeds shared by both samplers."""

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int,
        *,
        budget: float,
        drop_last: bool,
        seed: int | None,
        generator: torch.Generator | None,
        num_replicas: int | None = 1,
        rank: int | None = 0,
    ) -> None:
        super().__init__()
        self.num_replicas, self.rank = _resolve_replicas(num_replicas, rank)
        self.num_samples = _num_samples(data_source)
        self.batch_size = check_positive_int("batch_size", batch_size)
        if not isinstance(drop_last, bool):
            raise TypeError(f"drop_last should be a boolean value, but got drop_last={drop_last!r}")
        self.drop_last = drop_last
        if self.batch_size > self.num_samples:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the dataset "
                f"(num_samples={self.num_samples}): the sampler needs at least one full batch"
            )
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise TypeError(f"budget should be a number in (0, 1], but got budget={budget!r}")
        if not (math.isfinite(budget) and 0.0 < budget <= 1.0):
            raise ValueError(f"budget should be in (0, 1], but got budget={budget!r}")
        self.budget = float(budget)
        self._num_steps = _steps_per_epoch(
            self.budget, self.num_samples, self.batch_size, self.drop_last, self.num_replicas
        )
        if self._num_steps == 0:
            per = self.budget * self.num_samples / (self.batch_size * self.num_replicas)
            raise ValueError(
                f"budget={budget!r} gives 0 steps per epoch: budget·num_samples/"
                f"(batch_size·num_replicas) = {per:.4g} rounds down to 0 with "
                f"drop_last=True; raise the budget or use drop_last=False"
            )
        self.seed = _resolve_seed(seed, generator)
        self._epoch = 0
        self._step_in_epoch = 0
        self._resume = False

    def __len__(self) -> int:
        """Batches per epoch: ``ceil(budget · num_samples / batch_size)`` (floor with drop_last)."""
        return self._num_steps

    @property
    def epoch(self) -> int:
        """The epoch of the current (or next) pass."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next pass; its random streams derive from ``(seed, epoch)``.

        Without calls to it the epoch advances by one after each complete pass. Setting the
        epoch the sampler is already in is a no-op (so a resumed mid-epoch state survives the
        usual ``sampler.set_epoch(epoch)`` at the top of the loop).
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch should be a non-negative integer, but got epoch={epoch!r}")
        if epoch == self._epoch:
            return
        self._epoch = epoch
        self._step_in_epoch = 0
        self._resume = False

    def _begin_pass(self) -> bool:
        """Prepare an ``__iter__``; True if it continues a resumed pass mid-epoch."""
        if self._resume:
            self._resume = False
            if self._step_in_epoch < self._num_steps:
                return True
        if self._step_in_epoch >= self._num_steps:
            # a complete pass whose end was not observed (state saved after its last batch)
            self._epoch += 1
        self._step_in_epoch = 0
        return False

    def _end_pass(self) -> None:
        self._epoch += 1
        self._step_in_epoch = 0

    def _rng(self, epoch: int, stream: int, *, per_rank: bool = False) -> np.random.Generator:
        """The stream ``(seed, epoch, stream)``, or ``(…, rank)`` for a rank's own stream."""
        key: tuple[int, ...] = (epoch, stream)
        if per_rank and self.num_replicas > 1:
            key = (epoch, stream, self.rank)
        seq = np.random.SeedSequence(self.seed, spawn_key=key)
        return np.random.Generator(np.random.PCG64(seq))


# --------------------------------------------------------------------------- random baseline


class RandomBatchSampler(_BudgetedBatchSampler):
    """Uniform random batches with CREST's budget: the baseline on the same code path.

    Each epoch yields ``len(sampler) = ceil(budget · N / batch_size)`` batches of exactly
    ``batch_size`` distinct indices, consecutive slices of random permutations of the dataset
    (a permutation whose remainder is shorter than a batch is replaced by a fresh one). Indices
    are :class:`WeightedIndex` with weight 1, so a loop written for :class:`CrestBatchSampler`
    (:class:`WithWeights`, weighted loss) runs unchanged. Randomness comes only from ``seed``
    (or one draw from ``generator`` at construction), per epoch from ``(seed, epoch)``.

    Args:
        data_source: the dataset (anything with ``len``) or its size ``N``.
        batch_size: m.
        budget: fraction of a full-data epoch's batches to yield, in (0, 1].
        drop_last: round ``budget · N / batch_size`` down instead of up.
        seed: seed of the random streams (0 when neither ``seed`` nor ``generator`` is given).
        generator: a :class:`torch.Generator` to draw the seed from, instead of ``seed``.

    Examples:
        >>> sampler = RandomBatchSampler(1000, batch_size=32, budget=0.1, seed=0)
        >>> batches = list(sampler)
        >>> len(batches), len(sampler), {len(b) for b in batches}, batches[0][0].weight
        (4, 4, {32}, 1.0)
    """

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 128,
        *,
        budget: float = 0.1,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(
            data_source,
            batch_size,
            budget=budget,
            drop_last=drop_last,
            seed=seed,
            generator=generator,
            num_replicas=num_replicas,
            rank=rank,
        )

    def __iter__(self) -> Iterator[list[int]]:
        resumed = self._begin_pass()
        skip = self._step_in_epoch if resumed else 0
        rng = self._rng(self._epoch, 0)  # the same permutations on every rank
        perm = rng.permutation(self.num_samples)
        pos = 0
        m = self.batch_size
        replicas = self.num_replicas
        for k in range(self._num_steps * replicas):
            if pos + m > self.num_samples:
                perm = rng.permutation(self.num_samples)
                pos = 0
            chunk = perm[pos : pos + m]
            pos += m
            step, owner = divmod(k, replicas)  # rank r takes global batches r, r+R, r+2R, …
            if owner != self.rank or step < skip:
                continue
            self._step_in_epoch = step + 1
            yield [WeightedIndex(int(i), 1.0) for i in chunk]
        self._end_pass()

    def weights_for(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Weights of a batch: all ones (float32), as for :meth:`CrestBatchSampler.weights_for`."""
        return torch.ones(len(indices), dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """Epoch and position (plain ints; the batches are regenerated from the seed on load)."""
        return {
            "version": _STATE_VERSION,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "seed": self.seed,
            "epoch": self._epoch,
            "step_in_epoch": self._step_in_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next ``__iter__`` continues mid-epoch."""
        _check_state(state, self, ("seed", "epoch", "step_in_epoch"))
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._step_in_epoch = int(state["step_in_epoch"])
        self._resume = True


# --------------------------------------------------------------------------- CREST


class CrestBatchSampler(_BudgetedBatchSampler):
    r"""Batch sampler that yields CREST's weighted mini-batch coresets (Yang et al., ICML 2023).

    **Budget.** ``len(sampler) = ceil(budget · N / batch_size)`` batches every epoch, with N the
    dataset size (not the active-set size, so the length never changes when examples are
    dropped); ``drop_last=True`` rounds down instead. The user keeps the full run's epoch count
    and learning-rate schedule and spends ``budget`` of its optimizer steps. The first
    ``warmup_steps`` batches of the run (counted inside the budget, across epochs) are uniform
    random batches of the active set with weight 1.

    **Selection** (§2 of the paper). Draw P pools of r = ``pool_size`` examples, each uniformly
    without replacement from the active set, independently (pools may overlap). With ``labels``
    each pool is stratified: class c gets ``r · n_c / A`` examples (n_c active examples of class
    c, A active examples), rounded by largest remainder. Call ``callback`` once on all pooled
    examples (deduplicated, in order of first appearance), then solve every pool by greedy
    facility location in one batched
    :func:`~coreset_sampler.facility_location.greedy_facility_location` call; with labels,
    one subproblem per (pool, class) with ``m · q_c / r`` picks (q_c pool members of class c;
    largest remainder), so every coreset has exactly m = ``batch_size``
    elements. Weights are the cluster sizes γ_j rescaled to mean 1 within each coreset:
    w_j = m · γ_j / Σ_{j'∈S_p} γ_{j'}. The first selection uses P = ``num_pools`` (5).

    **Yield.** Each batch is one whole coreset, as a list of :class:`WeightedIndex` (ints that
    carry their weight). The P coresets are cycled, each pass in a fresh random order, until
    the next selection.

    **Reselection.** With a ``monitor``, right after each selection it is anchored on the
    coresets, their weights and ``check_size`` uniform random active examples (the check
    sample V_r; default r, as in the paper); every
    T1 = ``monitor.interval`` steps ``monitor.check()`` runs, and a report with ``reselect``
    (ρ > τ) triggers a selection with P = min(b·T1, steps per epoch), b = ``pool_multiplier``,
    T1 being the interval in use at that check. Without a monitor the sampler reselects every
    ``reselect_every`` steps (default 20) with P = ``num_pools``: each coreset is used 4 times
    and the callback sees 5·r examples per 20 steps; ``reselect_every=num_pools`` gives a
    fresh coreset at every step.

    **Steps and prefetch.** A "step" of the sampler is a batch *yielded*, not trained. With
    ``num_workers > 0`` the DataLoader asks for ``prefetch_factor · num_workers`` batches ahead,
    so the selection (callback, anchor) and the checks for batch j see the model after about
    j − prefetch training steps. The weights cannot go stale: each index carries the weight of
    its own batch (read it with :class:`WithWeights`), and :meth:`weights_for` looks a batch up
    by its exact indices.

    **Dropping learned examples** (§4, on by default). Losses are observed at every selection
    (when the callback returns ``(proxies, losses)``, or is a
    :class:`~coreset_sampler.gradients.GradientProxyCallback`) and whenever the loop calls
    :meth:`report_losses`. Observations are stamped with the sampler's step (batches yielded).
    An example is dropped at an observation at step s with loss < α (``drop_threshold``) when
    its observations have all been < α since step s0 ≤ s − T2 (T2 = ``drop_window``), s0 being
    the first observation of that run below α: any observation ≥ α (or NaN) ends the run. At
    most ``floor(max_drop_fraction · N)`` examples are ever dropped; after that, no more. Dropped
    examples are never drawn again (the current coresets keep them until the next selection);
    see :attr:`dropped_indices`.

    **State.** :meth:`state_dict` holds the epoch and step, the random streams, the active set
    and loss tracking, the current coresets, weights and cycle position, P, the counters since
    the last check and selection, the telemetry counters and the monitor's state (captured right
    after each anchor and check, so the call stays cheap). After :meth:`load_state_dict` the
    next ``__iter__`` continues the saved epoch with the identical batches and weights, calling
    the callback only for selections not made before the save.

    **Lightning.** Lightning re-creates custom batch samplers as
    ``type(bs)(sampler, batch_size=..., drop_last=...)`` only when it injects a
    ``DistributedSampler`` (multi-device runs) or predicts. That cannot carry the callback (a
    required keyword) and a CREST sampler cannot draw its pools from another sampler, so it is
    not supported: on several devices pass ``Trainer(use_distributed_sampler=False)`` (the
    sampler shards itself, below). On one device nothing is re-created.

    **Distributed.** With ``num_replicas`` R (default: the process group's world size) every
    rank yields ``ceil(budget·N / (batch_size·R))`` batches per epoch, so the R ranks together
    spend the budget. Each rank draws its own pools (its random streams are keyed by its rank;
    pools of different ranks may overlap, as pools of one rank may) and selects its own
    coresets, so the global batch is the union of the ranks' coresets. All ranks check and
    reselect on the same steps: after each anchor they take the smallest T1 of any rank, and
    at each check they reselect when any rank's ρ exceeds τ (one small all-reduce each, on a
    gloo group of the sampler's own, so it never interleaves with DDP's gradient all-reduces).
    Construct the sampler at the same point on every rank (creating that group is collective),
    and give it the unwrapped model's callback and monitor (:class:`GradientProxyCallback` and
    :class:`QuadraticLossMonitor` unwrap ``DistributedDataParallel`` themselves). Dropping is
    per rank. A state saved with one world size or rank is refused by another.

    Args:
        data_source: the dataset (anything with ``len``) or its size N. Not a sampler.
        batch_size: m, the coreset size; every batch has exactly this many indices.
        callback: ``callback(indices) -> [n, d]`` proxies or ``(proxies, losses)``, see
            :class:`ProxyCallback`. It runs in the main process; it is never pickled.
        budget: fraction of a full-data epoch's batches to yield, in (0, 1].
        labels: optional class label of every example (length N) for stratified pools.
        monitor: optional :class:`SelectionMonitor` that decides when to reselect.
        pool_size: r, examples per pool (default ``max(ceil(0.01·N), batch_size)``).
        num_pools: P of the first selection (and of every selection without a monitor).
        pool_multiplier: b in P = min(b·T1, steps per epoch).
        check_size: examples in the monitor's check sample V_r (default ``pool_size``, as in
            the paper). Each check evaluates them once: a smaller sample makes checks cheaper
            and ρ noisier.
        reselect_every: steps between selections without a monitor (default 20).
        warmup_steps: uniform random batches before the first selection.
        similarity: facility-location similarity (``"neg_distance"``: C − ‖g_i − g_j‖, the
            paper's; ``"exp"``: the authors' released code; ``"cosine"``, ``"dot"``).
        drop_learned: drop learned examples (§4).
        drop_threshold: α.
        drop_window: T2, in sampler steps.
        max_drop_fraction: at most this fraction of N is ever dropped, in [0, 1).
        drop_last: round ``budget · N / batch_size`` down instead of up.
        seed: seed of the random streams (0 when neither ``seed`` nor ``generator`` is given).
        generator: a :class:`torch.Generator` to draw the seed from (once, at construction).
        history_size: batches remembered by :meth:`weights_for`.
        telemetry_size: records kept in :attr:`telemetry` (the counters are never truncated).
        num_replicas: processes of a distributed run (default: the process group's world size,
            1 without one); ``len(sampler)`` is ``ceil(budget·N / (batch_size·num_replicas))``.
        rank: this process's rank (default: its rank in the process group, 0 without one).

    Raises:
        TypeError: on arguments of the wrong type (including ``True`` where an int is meant).
        ValueError: on invalid values, naming the argument and the value.

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> g = torch.Generator().manual_seed(0)
        >>> ds = TensorDataset(torch.randn(200, 3, generator=g), torch.randint(0, 2, (200,)))
        >>> proxies = torch.randn(200, 4, generator=g)
        >>> sampler = CrestBatchSampler(
        ...     ds, batch_size=10, callback=lambda idx: proxies[idx], budget=0.5, seed=0
        ... )
        >>> loader = DataLoader(WithWeights(ds), batch_sampler=sampler, num_workers=0)
        >>> batches = [(x, y, w) for x, y, w in loader]
        >>> len(batches), len(sampler), tuple(batches[0][2].shape)
        (10, 10, (10,))
        >>> round(float(batches[0][2].mean()), 6), sampler.telemetry.num_selections
        (1.0, 1)
    """

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 128,
        *,
        callback: ProxyCallback,
        budget: float = 0.1,
        labels: Sequence[int] | Tensor | npt.NDArray[Any] | None = None,
        monitor: SelectionMonitor | None = None,
        pool_size: int | None = None,
        num_pools: int = 5,
        pool_multiplier: int = 5,
        check_size: int | None = None,
        reselect_every: int | None = None,
        warmup_steps: int = 0,
        similarity: Similarity = "neg_distance",
        drop_learned: bool = True,
        drop_threshold: float = 0.1,
        drop_window: int = 20,
        max_drop_fraction: float = 0.2,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        history_size: int = 4096,
        telemetry_size: int = 1000,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(
            data_source,
            batch_size,
            budget=budget,
            drop_last=drop_last,
            seed=seed,
            generator=generator,
            num_replicas=num_replicas,
            rank=rank,
        )
        self._group = _agreement_group(self.num_replicas)
        n = self.num_samples
        if not callable(callback):
            raise TypeError(f"callback should be callable, but got {type(callback).__name__}")
        self.callback = callback
        self._call: Any = (
            callback.proxies_and_losses if isinstance(callback, GradientProxyCallback) else callback
        )
        if monitor is not None and not all(
            hasattr(monitor, a) for a in ("anchor", "check", "interval")
        ):
            raise TypeError(
                "monitor should provide anchor(), check() and interval (e.g. a "
                f"QuadraticLossMonitor), but got {type(monitor).__name__}"
            )
        self.monitor = monitor
        if monitor is not None and reselect_every is not None:
            raise ValueError(
                f"pass either monitor or reselect_every, not both (got reselect_every="
                f"{reselect_every!r} and a monitor that decides when to reselect)"
            )
        self.reselect_every = check_positive_int(
            "reselect_every", 20 if reselect_every is None else reselect_every
        )
        self.num_pools = check_positive_int("num_pools", num_pools)
        self.pool_multiplier = check_positive_int("pool_multiplier", pool_multiplier)
        self.warmup_steps = check_nonnegative_int("warmup_steps", warmup_steps)
        if isinstance(similarity, bool) or similarity not in _SIMILARITIES:
            raise ValueError(
                f"similarity should be one of {_SIMILARITIES}, but got similarity={similarity!r}"
            )
        self.similarity: Similarity = similarity
        if not isinstance(drop_learned, bool):
            raise TypeError(
                f"drop_learned should be a boolean value, but got drop_learned={drop_learned!r}"
            )
        self.drop_learned = drop_learned
        self.drop_threshold = check_finite("drop_threshold", drop_threshold)
        self.drop_window = check_positive_int("drop_window", drop_window)
        frac = check_finite("max_drop_fraction", max_drop_fraction)
        if not 0.0 <= frac < 1.0:
            raise ValueError(
                f"max_drop_fraction should be in [0, 1), but got "
                f"max_drop_fraction={max_drop_fraction!r}"
            )
        self.max_drop_fraction = frac
        self._max_dropped = math.floor(frac * n) if drop_learned else 0
        min_active = n - self._max_dropped
        if self.batch_size > min_active:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the smallest active set: "
                f"num_samples={n} minus up to {self._max_dropped} dropped examples "
                f"(max_drop_fraction={max_drop_fraction!r}) leaves {min_active}; lower "
                "max_drop_fraction or pass drop_learned=False"
            )
        self.pool_size = _resolve_pool_size(
            pool_size,
            self.batch_size,
            n,
            min_active,
            unit="coreset",
            over=(
                f"exceeds the smallest active set: num_samples={n} minus up to "
                f"{self._max_dropped} dropped examples leaves {min_active}; lower pool_size "
                "or max_drop_fraction"
            ),
        )
        if check_size is None:
            check_size = self.pool_size
        self.check_size = check_positive_int("check_size", check_size)
        if self.check_size > min_active:
            raise ValueError(
                f"check_size={self.check_size} exceeds the smallest active set: "
                f"num_samples={n} minus up to {self._max_dropped} dropped examples leaves "
                f"{min_active}; lower check_size or max_drop_fraction"
            )
        self._labels = _check_labels(labels, n)
        self.history_size = check_positive_int("history_size", history_size)
        self.telemetry_size = check_positive_int("telemetry_size", telemetry_size)

        self._step = 0  # batches yielded, all epochs
        self._rngs = self._make_rngs(0)
        self._active = np.ones(n, dtype=bool)
        self._active_cache: IntArray | None = None
        self._low_since = np.full(n, -1, dtype=np.int64)
        self._dropped: list[int] = []
        self._coresets: list[list[int]] = []
        self._weights: list[list[float]] = []
        self._order: list[int] = []
        self._position = 0
        self._next_num_pools = self.num_pools
        self._interval: int | None = None
        self._steps_since_check = 0
        self._steps_since_selection = 0
        self._monitor_state: Any = None
        self._history: OrderedDict[tuple[int, ...], list[float]] = OrderedDict()
        self._selections: deque[SelectionRecord] = deque(maxlen=self.telemetry_size)
        self._checks: deque[CheckRecord] = deque(maxlen=self.telemetry_size)
        self._counters: dict[str, float] = dict.fromkeys(
            (
                "num_selections",
                "num_checks",
                "callback_seconds",
                "kernel_seconds",
                "selection_seconds",
                "anchor_seconds",
                "check_seconds",
            ),
            0.0,
        )

    # -- public API -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[list[int]]:
        if not self._begin_pass():
            self._rngs = self._make_rngs(self._epoch)
        while self._step_in_epoch < self._num_steps:
            yield self._next_batch()
        self._end_pass()

    @property
    def dropped_indices(self) -> list[int]:
        """Examples removed from the active set, in increasing order."""
        return sorted(self._dropped)

    @property
    def num_active(self) -> int:
        """Size of the active set."""
        return self.num_samples - len(self._dropped)

    @property
    def coresets(self) -> list[list[int]]:
        """The current P coresets (copies; empty before the first selection)."""
        return [list(c) for c in self._coresets]

    @property
    def coreset_weights(self) -> list[Tensor]:
        """The current coresets' weights, mean 1 each (fresh float32 tensors)."""
        return [torch.tensor(w, dtype=torch.float32) for w in self._weights]

    @property
    def telemetry(self) -> SamplerTelemetry:
        """Per-selection and per-check records and running totals (a fresh snapshot)."""
        c = self._counters
        return SamplerTelemetry(
            selections=list(self._selections),
            checks=list(self._checks),
            num_steps=self._step,
            num_selections=int(c["num_selections"]),
            num_checks=int(c["num_checks"]),
            num_dropped=len(self._dropped),
            callback_seconds=c["callback_seconds"],
            kernel_seconds=c["kernel_seconds"],
            anchor_seconds=c["anchor_seconds"],
            check_seconds=c["check_seconds"],
            selection_seconds=c["selection_seconds"],
        )

    def weights_for(self, indices: Sequence[int] | Tensor) -> Tensor:
        """The float32 weights of a recently yielded batch, looked up by its exact indices.

        For loops whose dataset returns indices instead of going through :class:`WithWeights`.
        The last ``history_size`` distinct batches are remembered; a batch yielded again (a
        coreset reused by the cycle, or an identical coreset from a later selection) maps to
        its latest weights.

        Raises:
            KeyError: if the batch is not among the remembered ones.
        """
        if isinstance(indices, Tensor):
            key = tuple(int(i) for i in indices.reshape(-1).tolist())
        else:
            key = tuple(int(i) for i in indices)
        try:
            return torch.tensor(self._history[key], dtype=torch.float32)
        except KeyError:
            raise KeyError(
                f"weights_for: no batch with these {len(key)} indices among the last "
                f"{self.history_size} yielded (first indices {list(key[:5])}); pass the batch's "
                "indices in the order they were yielded, or raise history_size"
            ) from None

    def report_losses(
        self, indices: Sequence[int] | Tensor, losses: Sequence[float] | Tensor
    ) -> None:
        """Report per-sample training losses (optional; feeds learned-example dropping).

        Call it from the training loop with the unweighted per-sample losses of a batch (e.g.
        ``F.cross_entropy(out, y, reduction="none")``) and the batch's indices (see
        ``WithWeights(..., return_index=True)``). The observation is stamped with the
        sampler's current step (batches yielded so far). Losses of already dropped examples are
        ignored; an index reported twice in one call counts with its largest loss.

        Raises:
            ValueError: on lengths that differ or indices outside ``[0, num_samples)``.
        """
        idx = _as_index_array(indices, self.num_samples, "report_losses")
        if isinstance(losses, Tensor):
            values = losses.detach().reshape(-1).to("cpu", torch.float64).numpy()
        else:
            values = np.asarray(losses, dtype=np.float64).reshape(-1)
        if values.shape[0] != idx.shape[0]:
            raise ValueError(
                f"report_losses: got {idx.shape[0]} indices but {values.shape[0]} losses"
            )
        self._observe(idx, values)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the batch stream exactly (plain Python values).

        Lists, ints, floats, strings and dicts of them, except the monitor's own state (which
        may hold tensors). Cheap enough to call at every step (StatefulDataLoader does).
        """
        low = np.flatnonzero(self._low_since >= 0)
        return {
            "version": _STATE_VERSION,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "seed": self.seed,
            "epoch": self._epoch,
            "step_in_epoch": self._step_in_epoch,
            "step": self._step,
            "rng": {name: _rng_state(g) for name, g in self._rngs.items()},
            "dropped": list(self._dropped),
            "low_since": [low.tolist(), self._low_since[low].tolist()],
            "coresets": [list(c) for c in self._coresets],
            "weights": [list(w) for w in self._weights],
            "order": list(self._order),
            "position": self._position,
            "next_num_pools": self._next_num_pools,
            "interval": self._interval,
            "steps_since_check": self._steps_since_check,
            "steps_since_selection": self._steps_since_selection,
            "counters": dict(self._counters),
            "monitor": self._monitor_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next ``__iter__`` continues the saved epoch.

        The attached monitor (if any) gets the monitor state of the save.

        Raises:
            ValueError: on missing keys, or a state saved for another dataset size or batch
                size, or with a monitor state when no monitor is attached (and vice versa).
        """
        keys = (
            "seed", "epoch", "step_in_epoch", "step", "rng", "dropped", "low_since",
            "coresets", "weights", "order", "position", "next_num_pools", "interval",
            "steps_since_check", "steps_since_selection", "counters", "monitor",
        )  # fmt: skip
        _check_state(state, self, keys)
        monitor_state = state["monitor"]
        if monitor_state is not None and self.monitor is None:
            raise ValueError("state holds a monitor state but this sampler has no monitor")
        if (
            monitor_state is None
            and state["coresets"]
            and callable(getattr(self.monitor, "load_state_dict", None))
        ):
            raise ValueError(
                "state holds coresets but no monitor state, and this sampler has a monitor: "
                "it was saved by a sampler without a monitor"
            )
        if monitor_state is not None and self.monitor is not None:
            load = getattr(self.monitor, "load_state_dict", None)
            if callable(load):
                load(monitor_state)
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._step_in_epoch = int(state["step_in_epoch"])
        self._step = int(state["step"])
        self._rngs = {name: _rng_from_state(state["rng"][name]) for name in _STREAMS}
        self._active = np.ones(self.num_samples, dtype=bool)
        self._dropped = [int(i) for i in state["dropped"]]
        self._active[self._dropped] = False
        self._active_cache = None
        self._low_since = np.full(self.num_samples, -1, dtype=np.int64)
        low_idx, low_step = state["low_since"]
        self._low_since[np.asarray(low_idx, dtype=np.int64)] = np.asarray(low_step, np.int64)
        self._coresets = [[int(i) for i in c] for c in state["coresets"]]
        self._weights = [[float(w) for w in ws] for ws in state["weights"]]
        self._order = [int(i) for i in state["order"]]
        self._position = int(state["position"])
        self._next_num_pools = int(state["next_num_pools"])
        interval = state["interval"]
        self._interval = None if interval is None else int(interval)
        self._steps_since_check = int(state["steps_since_check"])
        self._steps_since_selection = int(state["steps_since_selection"])
        self._counters = {
            **dict.fromkeys(self._counters, 0.0),
            **{k: float(v) for k, v in state["counters"].items()},
        }
        self._monitor_state = monitor_state
        self._resume = True

    # -- the schedule ---------------------------------------------------------------------

    def _make_rngs(self, epoch: int) -> dict[str, np.random.Generator]:
        return {name: self._rng(epoch, k, per_rank=True) for k, name in enumerate(_STREAMS)}

    def _agree(self, value: float, op: str) -> float:
        """The max (or min) of ``value`` over all ranks; ``value`` itself without a group."""
        if self._group is None:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        reduce = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN
        dist.all_reduce(t, op=reduce, group=self._group)
        return float(t.item())

    def _next_batch(self) -> list[int]:
        if self._step < self.warmup_steps:
            chosen = self._rngs["warmup"].choice(
                self._active_indices(), size=self.batch_size, replace=False
            )
            batch: list[int] = [WeightedIndex(int(i), 1.0) for i in chosen]
            weights: list[float] = [1.0] * self.batch_size
        else:
            self._maybe_select()
            if self._position >= len(self._order):
                self._order = self._rngs["shuffle"].permutation(len(self._coresets)).tolist()
                self._position = 0
            p = self._order[self._position]
            self._position += 1
            weights = self._weights[p]
            batch = [WeightedIndex(i, w) for i, w in zip(self._coresets[p], weights, strict=True)]
            self._steps_since_check += 1
            self._steps_since_selection += 1
        self._remember(batch, weights)
        self._step += 1
        self._step_in_epoch += 1
        return batch

    def _maybe_select(self) -> None:
        if not self._coresets:
            self._select("initial")
            return
        if self.monitor is None:
            if self._steps_since_selection >= self.reselect_every:
                self._select("interval")
            return
        interval = self._interval if self._interval is not None else int(self.monitor.interval)
        if self._steps_since_check < interval:
            return
        start = time.perf_counter()
        report = self.monitor.check()
        seconds = time.perf_counter() - start
        self._steps_since_check = 0
        self._capture_monitor_state()
        # every rank reselects when any rank's model error exceeds the threshold
        reselect = bool(self._agree(float(bool(report.reselect)), "max"))
        record = CheckRecord(
            step=self._step,
            seconds=seconds,
            rho=float(report.rho),
            reselect=reselect,
            interval=interval,
        )
        self._checks.append(record)
        self._counters["num_checks"] += 1
        self._counters["check_seconds"] += seconds
        logger.debug("check at step %d: %s", self._step, record)
        if reselect:
            self._next_num_pools = min(self.pool_multiplier * interval, self._num_steps)
            self._select("check")

    def _select(self, reason: str) -> None:
        start = time.perf_counter()
        active = self._active_indices()
        num_pools = self._next_num_pools
        pools = self._draw_pools(active, num_pools)
        flat = np.concatenate(pools)
        unique, positions = _first_appearance(flat)
        selection = int(self._counters["num_selections"])
        call = f"callback(indices) at selection {selection} (step {self._step})"

        t0 = time.perf_counter()
        out = self._call(unique.tolist())
        callback_seconds = time.perf_counter() - t0
        proxies, losses = _read_callback(out, unique, call)

        t0 = time.perf_counter()
        coresets, weights = self._solve(pools, positions.reshape(num_pools, -1), proxies)
        kernel_seconds = time.perf_counter() - t0

        if losses is not None:
            self._observe(unique, losses)
        self._coresets, self._weights = coresets, weights
        self._order = self._rngs["shuffle"].permutation(num_pools).tolist()
        self._position = 0
        self._steps_since_selection = 0
        self._steps_since_check = 0

        anchor_seconds = 0.0
        if self.monitor is not None:
            check = self._rngs["checks"].choice(
                self._active_indices(), size=self.check_size, replace=False
            )
            t0 = time.perf_counter()
            self.monitor.anchor(
                coresets,
                [torch.tensor(w, dtype=torch.float32) for w in weights],
                check.tolist(),
            )
            anchor_seconds = time.perf_counter() - t0
            # all ranks check on the same steps: the smallest T1 of any rank
            self._interval = int(self._agree(float(self.monitor.interval), "min"))
            self._capture_monitor_state()

        record = SelectionRecord(
            step=self._step,
            epoch=self._epoch,
            reason=reason,
            num_pools=num_pools,
            pool_size=self.pool_size,
            interval=self._interval,
            active_size=int(active.shape[0]),
            num_proxies=int(unique.shape[0]),
            callback_seconds=callback_seconds,
            kernel_seconds=kernel_seconds,
            anchor_seconds=anchor_seconds,
            seconds=time.perf_counter() - start,
        )
        self._selections.append(record)
        c = self._counters
        c["num_selections"] += 1
        c["callback_seconds"] += callback_seconds
        c["kernel_seconds"] += kernel_seconds
        c["selection_seconds"] += record.seconds
        c["anchor_seconds"] += anchor_seconds
        logger.info("selection %d (%s): %s", selection, reason, record)

    def _draw_pools(self, active: IntArray, num_pools: int) -> list[IntArray]:
        rng = self._rngs["pools"]
        r = self.pool_size
        if self._labels is None:
            return [rng.choice(active, size=r, replace=False) for _ in range(num_pools)]
        classes = self._labels[active]
        members = [active[classes == c] for c in range(int(self._labels.max()) + 1)]
        quotas = _largest_remainder(r, np.array([len(m) for m in members], dtype=np.int64))
        return [
            np.concatenate(
                [
                    rng.choice(m, size=int(q), replace=False)
                    for m, q in zip(members, quotas, strict=True)
                    if q
                ]
            )
            for _ in range(num_pools)
        ]

    def _solve(
        self, pools: list[IntArray], positions: IntArray, proxies: Tensor
    ) -> tuple[list[list[int]], list[list[float]]]:
        """All pools (and per-class subproblems) in one greedy facility-location call."""
        m = self.batch_size
        problems: list[tuple[int, IntArray, int]] = []  # (pool, rows within the pool, k)
        for p, pool in enumerate(pools):
            if self._labels is None:
                problems.append((p, np.arange(len(pool), dtype=np.int64), m))
                continue
            classes = self._labels[pool]
            present = np.unique(classes)
            groups = [np.flatnonzero(classes == c).astype(np.int64) for c in present]
            ks = _largest_remainder(m, np.array([len(g) for g in groups], dtype=np.int64))
            problems.extend((p, g, int(k)) for g, k in zip(groups, ks, strict=True) if k > 0)
        width = max(len(rows) for _, rows, _ in problems)
        gather = np.zeros((len(problems), width), dtype=np.int64)
        mask = np.zeros((len(problems), width), dtype=bool)
        for b, (p, rows, _) in enumerate(problems):
            gather[b, : len(rows)] = positions[p, rows]
            mask[b, : len(rows)] = True
        device = proxies.device
        features = proxies[torch.from_numpy(gather).to(device)]
        k = torch.tensor([k for _, _, k in problems], dtype=torch.long, device=device)
        result = greedy_facility_location(
            features, k, mask=torch.from_numpy(mask).to(device), similarity=self.similarity
        )
        picks = result.indices.cpu().numpy()
        sizes = result.weights.detach().to("cpu", torch.float64).numpy()
        coresets: list[list[int]] = [[] for _ in pools]
        gammas: list[list[float]] = [[] for _ in pools]
        for b, (p, rows, kb) in enumerate(problems):
            coresets[p].extend(pools[p][rows[picks[b, :kb]]].tolist())
            gammas[p].extend(sizes[b, :kb].tolist())
        weights = []
        for g in gammas:
            total = math.fsum(g)
            weights.append([m * x / total for x in g])
        return coresets, weights

    # -- dropping ------------------------------------------------------------------------

    def _active_indices(self) -> IntArray:
        if self._active_cache is None:
            self._active_cache = np.flatnonzero(self._active).astype(np.int64)
        return self._active_cache

    def _observe(self, indices: IntArray, losses: npt.NDArray[np.float64]) -> None:
        if not self.drop_learned or indices.size == 0:
            return
        uniq, inverse = np.unique(indices, return_inverse=True)
        if uniq.shape[0] != indices.shape[0]:
            worst = np.full(uniq.shape[0], -np.inf)
            np.maximum.at(worst, inverse, np.where(np.isnan(losses), np.inf, losses))
            indices, losses = uniq, worst
        keep = self._active[indices]
        indices, losses = indices[keep], losses[keep]
        low = losses < self.drop_threshold  # NaN counts as not learned
        self._low_since[indices[~low]] = -1
        low_idx = indices[low]
        since = self._low_since[low_idx]
        fresh = since < 0
        self._low_since[low_idx[fresh]] = self._step
        ready = low_idx[~fresh & (self._step - since >= self.drop_window)]
        room = self._max_dropped - len(self._dropped)
        if ready.size == 0 or room <= 0:
            return
        ready = ready[:room]
        self._active[ready] = False
        self._low_since[ready] = -1
        self._active_cache = None
        self._dropped.extend(ready.tolist())
        logger.info(
            "dropped %d learned examples at step %d (%d dropped in all, active set %d)",
            ready.size,
            self._step,
            len(self._dropped),
            self.num_active,
        )

    # -- helpers -------------------------------------------------------------------------

    def _remember(self, batch: list[int], weights: list[float]) -> None:
        key = tuple(int(i) for i in batch)
        self._history[key] = weights  # a tensor is built only when weights_for asks
        self._history.move_to_end(key)
        while len(self._history) > self.history_size:
            self._history.popitem(last=False)

    def _capture_monitor_state(self) -> None:
        get = getattr(self.monitor, "state_dict", None)
        self._monitor_state = get() if callable(get) else None


# --------------------------------------------------------------------------- helpers


def _num_samples(data_source: Any) -> int:
    if isinstance(data_source, bool):
        raise TypeError(
            f"data_source should be a dataset or its size (int), but got "
            f"data_source={data_source!r}"
        )
    if isinstance(data_source, Sampler):
        raise TypeError(
            f"data_source should be the dataset or its size, not a sampler (got "
            f"{type(data_source).__name__}): CREST draws its own pools. Under Lightning, pass "
            "Trainer(use_distributed_sampler=False) so that it does not re-create the batch "
            "sampler around a DistributedSampler"
        )
    if isinstance(data_source, int):
        n = data_source
    elif isinstance(data_source, Sized):
        n = len(data_source)
    else:
        raise TypeError(
            f"data_source should be a dataset with __len__ or its size (int), but got "
            f"{type(data_source).__name__}"
        )
    if n <= 0:
        raise ValueError(f"data_source should hold at least one example, but got size {n}")
    return n


def _selection_only_telemetry(
    selections: Sequence[SelectionRecord], counters: Mapping[str, float], num_steps: int
) -> SamplerTelemetry:
    """Telemetry of a sampler without monitor checks or dropping (CRAIG, k-center)."""
    return SamplerTelemetry(
        selections=list(selections),
        checks=[],
        num_steps=num_steps,
        num_selections=int(counters["num_selections"]),
        num_checks=0,
        num_dropped=0,
        callback_seconds=counters["callback_seconds"],
        kernel_seconds=counters["kernel_seconds"],
        anchor_seconds=0.0,
        check_seconds=0.0,
        selection_seconds=counters["selection_seconds"],
    )


def _resolve_pool_size(
    pool_size: int | None, batch_size: int, num_samples: int, limit: int, *, unit: str, over: str
) -> int:
    """``pool_size`` (default ``max(ceil(0.01·N), batch_size)``, capped at ``limit``), checked.

    ``unit`` names what a pool must hold; ``over`` completes the message for a pool larger than
    ``limit``.
    """
    if pool_size is None:
        pool_size = min(max(math.ceil(0.01 * num_samples), batch_size), limit)
    pool_size = check_positive_int("pool_size", pool_size)
    if batch_size > pool_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than pool_size={pool_size}: "
            f"every pool must hold at least one {unit}"
        )
    if pool_size > limit:
        raise ValueError(f"pool_size={pool_size} {over}")
    return pool_size


def _resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``, from the default process group where not given."""
    grouped = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if grouped else 1
    if rank is None:
        rank = dist.get_rank() if grouped else 0
    check_positive_int("num_replicas", num_replicas)
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank should be an integer value, but got rank={rank!r}")
    if rank >= num_replicas or rank < 0:
        raise ValueError(
            f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]"
        )
    return num_replicas, rank


def _agreement_group(num_replicas: int) -> Any:
    """A gloo group for the sampler's own collectives (None: decide locally).

    Separate from the training's group, so that the sampler's small CPU all-reduces never
    interleave with DDP's gradient all-reduces (or need a CUDA tensor under NCCL). Creating it
    is itself collective: every rank constructs its sampler at the same point of the program.
    """
    if num_replicas == 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size() != num_replicas:
        raise ValueError(
            f"num_replicas={num_replicas} differs from the process group's world size "
            f"{dist.get_world_size()}"
        )
    return dist.new_group(backend="gloo")


def _resolve_seed(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is not None and generator is not None:
        raise ValueError(f"pass seed or generator, not both (got seed={seed!r} and a generator)")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator should be a torch.Generator, but got {type(generator).__name__}"
            )
        return int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    if seed is None:
        return 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed should be a non-negative integer value, but got seed={seed!r}")
    if seed < 0:
        raise ValueError(f"seed should be a non-negative integer value, but got seed={seed!r}")
    return seed


def _check_labels(labels: Any, n: int) -> IntArray | None:
    """Labels as dense class ids 0..C−1 (by increasing label value)."""
    if labels is None:
        return None
    if isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"labels should hold integers, but got a tensor of dtype {labels.dtype}"
            )
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"labels should hold integers, but got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"labels should have one entry per example (shape ({n},)), but got shape "
            f"{tuple(arr.shape)}"
        )
    _, ids = np.unique(arr, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def _largest_remainder(total: int, counts: IntArray) -> IntArray:
    """Split ``total`` in proportion to ``counts``: floors, then +1 by largest remainder.

    Ties go to the lower position. Exact integer arithmetic; never exceeds a count when
    ``total ≤ sum(counts)``.
    """
    s = int(counts.sum())
    scaled = total * counts
    out = scaled // s
    rem = scaled % s
    left = total - int(out.sum())
    order = np.lexsort((np.arange(counts.shape[0]), -rem))
    out[order[:left]] += 1
    return out.astype(np.int64)


def _first_appearance(flat: IntArray) -> tuple[IntArray, IntArray]:
    """Unique values in order of first appearance, and each element's position among them."""
    values, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return values[order].astype(np.int64), rank[inverse.reshape(-1)].astype(np.int64)


def _read_callback(
    out: Any, indices: IntArray, call: str
) -> tuple[Tensor, npt.NDArray[np.float64] | None]:
    n = int(indices.shape[0])
    losses: Any = None
    if isinstance(out, tuple):
        if len(out) != 2:
            raise TypeError(
                f"{call} should return proxies or a tuple (proxies, losses), but got a tuple of "
                f"length {len(out)}"
            )
        proxies, losses = out
    else:
        proxies = out
    if not isinstance(proxies, Tensor) or not proxies.is_floating_point():
        what = (
            f"a tensor of dtype {proxies.dtype}"
            if isinstance(proxies, Tensor)
            else (type(proxies).__name__)
        )
        raise TypeError(f"{call} should return a floating [n, d] tensor, but got {what}")
    if proxies.dim() != 2 or proxies.shape[0] != n or proxies.shape[1] == 0:
        raise ValueError(
            f"{call} returned proxies of shape {tuple(proxies.shape)} for {n} indices; "
            f"expected [{n}, d] with d >= 1"
        )
    proxies = proxies.detach()
    bad = ~torch.isfinite(proxies).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().reshape(-1).cpu().numpy()
        shown = indices[rows[:10]].tolist()
        more = f" and {rows.shape[0] - 10} more" if rows.shape[0] > 10 else ""
        raise ValueError(
            f"{call} returned NaN or inf proxies for {rows.shape[0]} of {n} examples: indices "
            f"{shown}{more}"
        )
    if losses is None:
        return proxies, None
    if not isinstance(losses, Tensor) or not losses.is_floating_point():
        what = (
            f"a tensor of dtype {losses.dtype}"
            if isinstance(losses, Tensor)
            else (type(losses).__name__)
        )
        raise TypeError(f"{call} should return losses as a floating [n] tensor, but got {what}")
    if tuple(losses.shape) != (n,):
        raise ValueError(
            f"{call} returned losses of shape {tuple(losses.shape)} for {n} indices; expected [{n}]"
        )
    return proxies, losses.detach().to("cpu", torch.float64).numpy()


def _as_index_array(indices: Any, n: int, where: str) -> IntArray:
    if isinstance(indices, Tensor):
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise TypeError(f"{where}: indices should be integers, but got dtype {indices.dtype}")
        arr = indices.detach().reshape(-1).cpu().numpy().astype(np.int64)
    else:
        arr = np.asarray([int(i) for i in indices], dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = arr[(arr < 0) | (arr >= n)][:5].tolist()
        raise ValueError(f"{where}: indices should be in [0, {n}), but got {bad}")
    return arr


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    state: Mapping[str, Any] = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": {k: int(v) for k, v in state["state"].items()},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def _rng_from_state(state: Mapping[str, Any]) -> np.random.Generator:
    bit = np.random.PCG64()
    full: dict[str, Any] = {
        "bit_generator": state["bit_generator"],
        "state": dict(state["state"]),
        "has_uint32": state["has_uint32"],
        "uinteger": state["uinteger"],
    }
    bit.state = full  # type: ignore[assignment]
    return np.random.Generator(bit)


def _check_state(state: Any, sampler: _BudgetedBatchSampler, keys: Sequence[str]) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"state should be a mapping, but got {type(state).__name__}")
    missing = sorted(set(keys) - set(state))
    if missing:
        raise ValueError(f"state is missing keys {missing}")
    for key in ("num_samples", "batch_size", "num_replicas", "rank"):
        if key in state and state[key] != getattr(sampler, key):
            hint = (
                " (resuming with another world size or rank is not supported)"
                if key in ("num_replicas", "rank")
                else ""
            )
            raise ValueError(
                f"state was saved with {key}={state[key]!r} but this sampler has "
                f"{key}={getattr(sampler, key)!r}{hint}"
            )
