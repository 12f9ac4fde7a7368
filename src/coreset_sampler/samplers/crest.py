r"""CREST's mini-batch coresets as a batch sampler for any DataLoader.

CREST (Yang, Kang, Mirzasoleiman, "Towards Sustainable Learning: Coresets for Data-efficient Deep
Learning", ICML 2023, arXiv 2306.01244) trains on small weighted *mini-batch coresets*: at a
selection it draws P random pools V_1..V_P of r examples each, asks for one gradient proxy g_i
per pooled example, and in each pool picks S_p ⊆ V_p, |S_p| = m, by greedy facility location,

.. math::

    S_p = \operatorname*{arg\,max}_{|S| = m} \sum_{i ∈ V_p} \max_{j ∈ S} \bigl(C - \lVert g_i -
    g_j \rVert\bigr), \qquad γ_j = \bigl|\{i ∈ V_p : j = \operatorname*{arg\,max}_{j' ∈ S_p}
    s(i, j')\}\bigr|,

weighting each pick by its cluster size γ_j, rescaled to mean 1 within its coreset (this
library's default trains on the picks unweighted, ``weighting="uniform"``: it measured more
accurate; ``weighting="cluster_size"`` is the paper's). The coresets
are reused until a local quadratic model of the loss stops predicting the loss, and examples
whose loss stayed below α for T2 steps are dropped from the active set.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence, Sized
from functools import partial
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from coreset_sampler._checks import (
    check_choice,
    check_nonnegative_int,
    check_optional_positive_int,
    check_positive_int,
    loss_arrays,
)
from coreset_sampler.kernels.facility_location import SimilarityName
from coreset_sampler.kernels.facility_location._problem import SIMILARITIES
from coreset_sampler.proxies import ProxyCallback
from coreset_sampler.weights import WeightedIndex

from ._base import PoolSampler
from ._dropper import DropLearned, LearnedExampleDropper
from ._policy import EveryNSteps, MonitorChecks, SelectionMonitor
from ._selection import WEIGHTINGS, PoolSelection, Selected, facility_location_coresets
from ._stream import BudgetedStream, CoresetCycle, agree, agreement_group
from ._telemetry import Telemetry

__all__ = ["CrestBatchSampler"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]


class CrestBatchSampler(PoolSampler):
    r"""Batch sampler that yields CREST's mini-batch coresets (Yang et al., ICML 2023).

    Every epoch has ``len(sampler) = ceil(budget · N / batch_size)`` batches (N the dataset
    size; ``drop_last=True`` rounds down; divided among ``num_replicas``), each one whole coreset
    of exactly ``batch_size`` indices, as :class:`~coreset_sampler.weights.WeightedIndex` that
    carry their weight (read them with :class:`~coreset_sampler.weights.WithWeights`).

    A **selection** draws P pools of ``pool_size`` active examples (stratified by class with
    ``labels``), calls ``callback`` once on all of them, and selects a coreset in each by greedy
    facility location (with labels, per class, the batch split by largest remainder), each
    pick weighing 1 (or, ``weighting="cluster_size"``, the paper's cluster sizes of mean 1);
    the P coresets are then cycled, each pass in a fresh order.
    **Reselection**: with a ``monitor``, when its check (every T1 steps) finds ρ > τ, with
    P = min(``pool_multiplier`` · T1, steps per epoch); without, every ``reselect_every`` steps;
    and in both cases as soon as every coreset has been trained on ``max_uses`` times.
    **Dropping** (``drop_learned``): examples whose loss stayed below α for T2 steps are never
    drawn again. The first ``warmup_steps`` batches of the run are uniform random batches.
    **State**: :meth:`state_dict` / :meth:`load_state_dict` continue the stream exactly,
    without calling the callback for selections made before the save. With workers, the
    loader runs ahead of training: a selection for batch j sees the model after about
    j − prefetch steps; the weights cannot go stale (they ride on the indices). Details, and
    Lightning and distributed use: ``docs/sampler.md``.

    Args:
        data_source: the dataset (anything with ``len``) or its size N. Not a sampler.
        batch_size: m, the coreset size.
        callback: ``callback(indices) -> [n, d]`` proxies or ``(proxies, losses)``, see
            :class:`~coreset_sampler.proxies.ProxyCallback`; called in the main process.
        budget: fraction of a full-data epoch's batches to yield, in (0, 1].
        labels: optional class label of every example (length N) for stratified pools.
        monitor: optional :class:`SelectionMonitor` that decides when to reselect.
        pool_size: r, examples per pool (default ``3·batch_size``; the paper's is 1% of N,
            see ``docs/algorithm.md``).
        num_pools: P of the first selection (and of every selection without a monitor).
        pool_multiplier: b in P = min(b·T1, steps per epoch) (default 1: the paper's 5 spends
            five pools' forward passes per coreset that is used; see ``docs/algorithm.md``).
        max_uses: times each coreset is trained on before a fresh selection, at most
            (``None``: as long as the checks hold, the paper's rule; cycling a few coresets
            for long overfits them, see ``docs/algorithm.md``).
        check_size: examples in the monitor's check sample (default ``batch_size``; the
            paper's is ``pool_size``).
        reselect_every: steps between selections without a monitor (default 20; sooner when
            the coresets are used up first, see ``max_uses``).
        warmup_steps: uniform random batches before the first selection.
        similarity: ``"neg_distance"`` (C − ‖g_i − g_j‖, the paper's), ``"exp"`` (the
            authors' code), ``"cosine"`` or ``"dot"``.
        weighting: the coresets' weights: ``"uniform"`` (1 each, the default) or
            ``"cluster_size"`` (the paper's: each pick weighs the size of the cluster it
            covers in its pool, mean 1 per coreset). The picks are the same; unweighted
            coresets trained to a higher mean accuracy in the three configurations measured, see
            ``docs/algorithm.md``.
        drop_learned: ``True`` (the paper's rule, :class:`DropLearned` defaults), ``False``,
            or a :class:`DropLearned` with other α, T2 or cap.
        drop_last: round ``budget · N / batch_size`` down instead of up.
        seed: seed of the random streams (0 when neither ``seed`` nor ``generator`` is given).
        generator: a :class:`torch.Generator` to draw the seed from (once, at construction).
        history_size: batches remembered by :meth:`weights_for`.
        telemetry_size: records kept in :attr:`telemetry` (the totals are never truncated).
        record_coresets: keep each selection's chosen indices and weights in its
            :class:`~coreset_sampler.samplers.SelectionRecord` (``coresets``, ``weights``), a
            history of what was selected over time, at most ``telemetry_size`` selections.
        num_replicas: processes of a distributed run (default: the process group's size).
        rank: this process's rank (default: its rank in the process group, 0 without one).

    Raises:
        TypeError: on arguments of the wrong type (including ``True`` where an int is meant).
        ValueError: on invalid values, naming the argument and the value.

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from coreset_sampler import WithWeights
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

    _kind = "CrestBatchSampler"

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 128,
        *,
        callback: ProxyCallback | None = None,  # (required: None only to name what is missing)
        budget: float = 0.1,
        labels: Sequence[int] | Tensor | npt.NDArray[Any] | None = None,
        monitor: SelectionMonitor | None = None,
        pool_size: int | None = None,
        num_pools: int = 5,
        pool_multiplier: int = 1,
        max_uses: int | None = 4,
        check_size: int | None = None,
        reselect_every: int | None = None,
        warmup_steps: int = 0,
        similarity: SimilarityName = "neg_distance",
        weighting: Literal["uniform", "cluster_size"] = "uniform",
        drop_learned: bool | DropLearned = True,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        history_size: int = 4096,
        telemetry_size: int = 1000,
        record_coresets: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        stream = BudgetedStream(
            data_source, batch_size, budget=budget, drop_last=drop_last, seed=seed,
            generator=generator, num_replicas=num_replicas, rank=rank,
            streams=("pools", "checks", "shuffle", "warmup"),
        )  # fmt: skip
        n, m = stream.num_samples, stream.batch_size
        group = agreement_group(stream.num_replicas)
        if monitor is not None and reselect_every is not None:
            raise ValueError(
                f"pass either monitor or reselect_every, not both (got reselect_every="
                f"{reselect_every!r} and a monitor that decides when to reselect)"
            )
        self.warmup_steps = check_nonnegative_int("warmup_steps", warmup_steps)
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self._dropper = dropper = LearnedExampleDropper(n, drop_learned)
        least = dropper.min_active
        if m > least:
            raise ValueError(
                f"batch_size={m} exceeds the smallest active set: num_samples={n} minus up to "
                f"{dropper.max_dropped} dropped examples leaves {least}; drop fewer (a lower "
                "DropLearned.max_fraction) or pass drop_learned=False"
            )
        over = (
            f"exceeds the smallest active set: num_samples={n} minus up to "
            f"{dropper.max_dropped} dropped examples leaves {least}"
        )
        solve = partial(
            facility_location_coresets, batch_size=m, similarity=self.similarity,
            weighting=self.weighting,
        )  # fmt: skip
        self._selection = PoolSelection(
            callback, n, m, labels=labels, pool_size=pool_size, limit=least, over=over,
            solve=solve, default_pool=(3 * m, "3·batch_size"),
        )  # fmt: skip
        self._telemetry = Telemetry(
            telemetry_size, logger, "CREST ", record_coresets=record_coresets
        )
        self._policy: EveryNSteps | MonitorChecks
        if monitor is None:
            self._policy = EveryNSteps(20 if reselect_every is None else reselect_every, num_pools)
        else:
            self._policy = MonitorChecks(
                monitor, num_pools=num_pools, pool_multiplier=pool_multiplier,
                check_size=m if check_size is None else check_size,
                limit=least, over=over, steps_per_epoch=stream.num_steps,
                agree=partial(agree, group), telemetry=self._telemetry,
            )  # fmt: skip
        self._cycle = CoresetCycle(n)
        self._max_uses = check_optional_positive_int("max_uses", max_uses)
        self._history = _BatchHistory(history_size)
        self.monitor = monitor
        self._compose(
            stream,
            {"policy": self._policy, "cycle": self._cycle, "dropper": dropper,
             "telemetry": self._telemetry, "selection": self._selection},
            {"monitor": monitor is not None, "warmup_steps": self.warmup_steps,
             "similarity": self.similarity, "weighting": self.weighting,
             "max_uses": self._max_uses},
        )  # fmt: skip

    def _next_batch(self) -> list[int]:
        stream = self._stream
        if stream.step < self.warmup_steps:  # uniform random batches of the active set
            chosen = stream.rngs["warmup"].choice(
                self._dropper.active_indices(), size=stream.batch_size, replace=False
            )
            stream.advance()
            batch: list[int] = [WeightedIndex(int(i), 1.0) for i in chosen]
        else:
            batch = super()._next_batch()
        self._history.remember(batch)
        return batch

    def _active(self) -> IntArray:
        return self._dropper.active_indices()

    def _observe(self, chosen: Selected) -> None:
        if chosen.losses is not None:
            self._dropper.observe(chosen.examples, chosen.losses, self._stream.step)

    def _num_dropped(self) -> int:
        return len(self._dropper.dropped)

    def _dropping(self) -> int | None:
        return len(self._dropper.dropped) if self._dropper.rule is not None else None

    # -- what users read and report -------------------------------------------------------

    @property
    def max_uses(self) -> int | None:
        """Times each coreset of a selection is trained on, at most (``None``: no cap)."""
        return self._max_uses

    @property
    def check_size(self) -> int | None:
        """Examples in the monitor's check sample (``None`` without a monitor)."""
        return self._policy.check_size if isinstance(self._policy, MonitorChecks) else None

    @property
    def dropped_indices(self) -> list[int]:
        """Examples removed from the active set, in increasing order."""
        return sorted(self._dropper.dropped)

    @property
    def num_active(self) -> int:
        """Size of the active set."""
        return self._dropper.num_active

    @property
    def coreset_weights(self) -> list[Tensor]:
        """The current coresets' weights, mean 1 each (fresh float32 tensors)."""
        return [torch.tensor(w, dtype=torch.float32) for w in self._cycle.weights]

    def weights_for(self, indices: Sequence[int] | Tensor) -> Tensor:
        """The float32 weights of a recently yielded batch, looked up by its exact indices.

        For loops whose dataset returns indices instead of going through ``WithWeights``. The
        last ``history_size`` distinct batches are remembered; a batch yielded again maps to
        its latest weights.

        Raises:
            KeyError: if the batch is not among the remembered ones.
        """
        return self._history.weights_for(indices)

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
            TypeError: on losses that are not numbers.
            ValueError: on lengths that differ or indices outside ``[0, num_samples)``.
        """
        idx, values = loss_arrays(indices, losses, self.num_samples, "report_losses")
        self._dropper.observe(idx, values, self._stream.step)


class _BatchHistory:
    """The weights of the last ``size`` distinct batches yielded, by their exact indices."""

    def __init__(self, size: int) -> None:
        self.size = check_positive_int("history_size", size)
        self._weights: OrderedDict[tuple[int, ...], list[int]] = OrderedDict()

    def remember(self, batch: list[int]) -> None:
        # the batch itself (its indices carry their weights): a tensor only when asked
        key = tuple(map(int, batch))
        self._weights[key] = batch
        self._weights.move_to_end(key)
        while len(self._weights) > self.size:
            self._weights.popitem(last=False)

    def weights_for(self, indices: Sequence[int] | Tensor) -> Tensor:
        if isinstance(indices, Tensor):
            key = tuple(int(i) for i in indices.reshape(-1).tolist())
        else:
            key = tuple(int(i) for i in indices)
        try:
            batch = self._weights[key]
        except KeyError:
            raise KeyError(
                f"weights_for: no batch with these {len(key)} indices among the last "
                f"{self.size} yielded (first indices {list(key[:5])}); pass the batch's "
                "indices in the order they were yielded, or raise history_size"
            ) from None
        return torch.tensor([getattr(i, "weight", 1.0) for i in batch], dtype=torch.float32)
