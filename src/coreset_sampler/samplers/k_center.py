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
from collections.abc import Sequence, Sized
from functools import partial
from typing import Any

import numpy.typing as npt
import torch
from torch import Tensor

from coreset_sampler.proxies import ProxyCallback

from ._base import PoolSampler
from ._policy import EveryNSteps
from ._selection import PoolSelection, k_center_batches
from ._stream import BudgetedStream, CoresetCycle
from ._telemetry import Telemetry

__all__ = ["KCenterBatchSampler"]

logger = logging.getLogger(__name__)


class KCenterBatchSampler(PoolSampler):
    r"""Batch sampler whose batches are k-center greedy picks of random pools (unweighted).

    ``len(sampler) = ceil(budget · N / batch_size)`` batches every epoch (``drop_last=True``:
    floor). A **selection** draws P = ``num_pools`` pools of r = ``pool_size`` examples, each
    uniformly without replacement from the dataset (stratified by class with ``labels``, the
    centres being picked across classes), calls ``callback`` once on all pooled examples, and
    picks m = ``batch_size`` centres in every pool by farthest-point greedy on the proxies
    (first centre: the member nearest to the pool's mean), all pools in one batched
    :func:`~coreset_sampler.kernels.greedy_k_center` call; each pool's centres are one batch of
    :class:`~coreset_sampler.weights.WeightedIndex` with weight 1. The P batches are cycled,
    each pass in a fresh random order, and a new selection is made every ``reselect_every``
    steps, across epoch boundaries. :meth:`state_dict` / :meth:`load_state_dict` continue the
    stream exactly, without calling the callback for selections made before the save.

    Args:
        data_source: the dataset (anything with ``len``) or its size N. Not a sampler.
        batch_size: m, centres per pool; every batch has exactly this many indices.
        callback: ``callback(indices) -> [n, d]`` proxies or ``(proxies, losses)`` (losses are
            ignored), see :class:`~coreset_sampler.proxies.ProxyCallback`.
        budget: fraction of a full-data epoch's batches to yield, in (0, 1].
        labels: optional class label of every example (length N) for stratified pools.
        pool_size: r, examples per pool (default ``max(ceil(0.01·N), 2·batch_size)``).
        num_pools: P, pools (and batches) per selection.
        reselect_every: steps between selections.
        drop_last: round ``budget · N / batch_size`` down instead of up.
        seed: seed of the random streams (0 when neither ``seed`` nor ``generator`` is given).
        generator: a :class:`torch.Generator` to draw the seed from (once, at construction).
        telemetry_size: selection records kept in :attr:`telemetry`.
        record_coresets: keep each selection's chosen indices and weights in its
            :class:`~coreset_sampler.samplers.SelectionRecord` (``coresets``, ``weights``), a
            history of what was selected over time, at most ``telemetry_size`` selections.

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

    _kind = "KCenterBatchSampler"

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 128,
        *,
        callback: ProxyCallback | None = None,  # (required: None only to name what is missing)
        budget: float = 0.1,
        labels: Sequence[int] | Tensor | npt.NDArray[Any] | None = None,
        pool_size: int | None = None,
        num_pools: int = 5,
        reselect_every: int = 20,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        telemetry_size: int = 1000,
        record_coresets: bool = False,
    ) -> None:
        stream = BudgetedStream(
            data_source, batch_size, budget=budget, drop_last=drop_last, seed=seed,
            generator=generator, streams=("pools", "shuffle"),
        )  # fmt: skip
        n, m = stream.num_samples, stream.batch_size
        self._selection = PoolSelection(
            callback, n, m, labels=labels, pool_size=pool_size, limit=n,
            over=f"is larger than the dataset (num_samples={n})",
            solve=partial(k_center_batches, batch_size=m),
        )  # fmt: skip
        self._policy = EveryNSteps(reselect_every, num_pools)
        self._cycle = CoresetCycle(n)
        self._telemetry = Telemetry(
            telemetry_size, logger, "k-center ", record_coresets=record_coresets
        )
        self._compose(
            stream,
            {"policy": self._policy, "cycle": self._cycle, "telemetry": self._telemetry,
             "selection": self._selection},
        )  # fmt: skip
