"""Uniform random batches with CREST's budget: the baseline, on the same code path."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence, Sized

import torch
from torch import Tensor

from coreset_sampler.weights import WeightedIndex

from ._base import BudgetedSampler
from ._stream import BudgetedStream
from ._telemetry import SamplerTelemetry, Telemetry

__all__ = ["RandomBatchSampler"]

logger = logging.getLogger(__name__)


class RandomBatchSampler(BudgetedSampler):
    """Uniform random batches with CREST's budget: the baseline on the same code path.

    Each epoch yields ``len(sampler) = ceil(budget · N / batch_size)`` batches of exactly
    ``batch_size`` distinct indices, consecutive slices of random permutations of the dataset
    (a permutation whose remainder is shorter than a batch is replaced by a fresh one), shared
    among ``num_replicas`` ranks. Indices are
    :class:`~coreset_sampler.weights.WeightedIndex` with weight 1, so a loop written for
    :class:`~coreset_sampler.CrestBatchSampler` (``WithWeights``, weighted loss) runs
    unchanged. Randomness comes only from ``seed`` (or one draw from ``generator`` at
    construction), per epoch from ``(seed, epoch)``.

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

    _kind = "RandomBatchSampler"

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
        stream = BudgetedStream(
            data_source, batch_size, budget=budget, drop_last=drop_last, seed=seed,
            generator=generator, num_replicas=num_replicas, rank=rank,
        )  # fmt: skip
        self._telemetry = Telemetry(1, logger, "random batches ", selects=False)
        self._compose(stream, {})

    def __iter__(self) -> Iterator[list[int]]:
        stream = self._stream
        skip = stream.step_in_epoch if stream.begin_pass() else 0
        rng = stream.rng(stream.epoch, 0)  # the same permutations on every rank
        n, m, replicas = stream.num_samples, stream.batch_size, stream.num_replicas
        perm = rng.permutation(n)
        pos = 0
        for k in range(stream.num_steps * replicas):
            if pos + m > n:
                perm = rng.permutation(n)
                pos = 0
            chunk = perm[pos : pos + m]
            pos += m
            step, owner = divmod(k, replicas)  # rank r takes global batches r, r+R, r+2R, …
            if owner != stream.rank or step < skip:
                continue
            stream.advance()
            yield [WeightedIndex(int(i), 1.0) for i in chunk]
        self._end_pass()

    @property
    def telemetry(self) -> SamplerTelemetry:
        """Running totals (a fresh snapshot): batches yielded, and no selection or check."""
        return self._telemetry.snapshot(self._stream.step)

    def weights_for(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Weights of a batch: all ones (float32), as for
        :meth:`~coreset_sampler.CrestBatchSampler.weights_for`."""
        return torch.ones(len(indices), dtype=torch.float32)
