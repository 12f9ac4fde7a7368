r"""GradMatch's weighted subset of the whole training set as a DataLoader batch sampler.

GradMatch (Killamsetty, Sivasubramanian, Ramakrishnan, De and Iyer, "GRAD-MATCH: Gradient
Matching based Data Subset Selection for Efficient Deep Model Training", ICML 2021) selects,
every R epochs, a weighted subset S whose weighted sum of gradient proxies matches the sum over
the training set,

.. math::

    \min_{S, w ≥ 0,\ |S| ≤ k} \Bigl\lVert \sum_{j ∈ S} w_j g_j - \sum_{i ∈ V} g_i
    \Bigr\rVert^2 + λ \lVert w \rVert^2,

per class, by orthogonal matching pursuit with non-negative, ridge-regularised refits
(:func:`~coreset_sampler.kernels.nonnegative_omp`). Training then runs weighted SGD on S.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence, Sized
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from coreset_sampler._checks import check_bool, check_in_interval
from coreset_sampler.kernels import nonnegative_omp
from coreset_sampler.proxies import ProxyCallback

from ._selection import mean_one
from ._stream import BudgetedStream
from ._telemetry import Telemetry
from ._wholeset import SHUFFLE, WholeSetSampler, WholeSetSelection

__all__ = ["GradMatchBatchSampler"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]


class GradMatchBatchSampler(WholeSetSampler):
    r"""Batch sampler that trains on GradMatch's weighted subset (Killamsetty et al., ICML 2021).

    **Budget.** ``len(sampler) = ceil(budget · N / batch_size)`` batches every epoch
    (``drop_last=True``: floor), as every sampler of the library.

    **Selection.** At the first epoch and then every ``reselect_every`` epochs (the paper's R,
    20 by default), the callback is asked for the proxies of all N examples (in calls of
    ``callback_batch_size`` indices, in increasing index order). A subset of K = round(budget ·
    N) examples is chosen per class (K split in proportion to the class sizes by largest
    remainder; without ``labels``, one problem) by non-negative orthogonal matching pursuit
    with ridge weight ``lam`` (:func:`~coreset_sampler.kernels.nonnegative_omp`): the target
    of class c is the sum of its N_c proxies, each step adds the example whose proxy has the
    largest positive inner product with the residual and refits all weights (exactly, w ≥ 0).
    OMP stops early when the relative residual is below ``tol`` or no example correlates
    positively with it; picks whose refitted weight is 0 are dropped. The class's remaining
    slots are filled with random examples of the class with weight 1, as the authors' code
    (CORDS) does. The weights are then rescaled to mean 1 over the subset (one factor for all
    classes, so their ratios are OMP's).

    **Per batch** (``per_batch=True``, GradMatch-PB): the candidates are whole mini-batches, a
    random partition of the set into full batches of ``batch_size`` drawn at each selection (a
    remainder of fewer than ``batch_size`` examples sits out that selection, and out of the
    target), each represented by the sum of its members' proxies. OMP (over the whole set, not
    per class: ``labels`` must be ``None``) picks ``len(sampler)`` batches towards the sum of
    the partitioned examples' proxies, and random batches of weight 1 fill what it leaves. The
    subset then holds ``len(sampler) · batch_size`` examples (``coreset_size``) rather than
    round(budget · N); every member carries its batch's weight (mean 1 over the subset), and
    each epoch yields the chosen batches whole, in a fresh random order.

    **Yield, state and resume** are CRAIG's (:class:`~coreset_sampler.CraigBatchSampler`):
    batches of ``batch_size`` distinct indices as
    :class:`~coreset_sampler.weights.WeightedIndex`, consecutive slices of random permutations
    of the subset, regenerated from ``(seed, epoch)``; :meth:`state_dict` holds the epoch, the
    position in it, the subset, its weights and the epoch of its selection.

    **Cost.** Each OMP step is one product of the class's proxies with the residual, and one
    exact refit on the picks' Gram matrix (cubic in the number of picks in the worst case,
    warm-started: usually one solve); ``docs/benchmarks/end_to_end.md`` reports the measured
    cost per selection.

    Args:
        data_source: the dataset (anything with ``len``) or its size N. Not a sampler.
        batch_size: examples per batch, at most K.
        callback: ``callback(indices) -> [n, d]`` proxies or ``(proxies, losses)`` (losses are
            ignored), see :class:`~coreset_sampler.proxies.ProxyCallback`.
        budget: fraction of a full-data epoch's batches to yield, in (0, 1]; also K / N.
        labels: optional class label of every example (length N): one problem per class.
        reselect_every: epochs between selections (the paper's R).
        callback_batch_size: indices per callback call.
        lam: ridge weight λ ≥ 0 of the refits (0.5: the authors' default).
        tol: OMP stops when the relative residual falls below it, in [0, 1) (0: only when
            the class's picks are exhausted or nothing correlates positively).
        drop_last: round ``budget · N / batch_size`` down instead of up.
        seed: seed of the random streams (0 when neither ``seed`` nor ``generator`` is given).
        generator: a :class:`torch.Generator` to draw the seed from (once, at construction).
        telemetry_size: selection records kept in :attr:`telemetry`.
        record_coresets: keep each selection's chosen indices and weights in its
            :class:`~coreset_sampler.samplers.SelectionRecord`.
        per_batch: select whole mini-batches (above) instead of examples per class.

    Raises:
        TypeError: on arguments of the wrong type.
        ValueError: on invalid values, naming the argument and the value.

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from coreset_sampler import WithWeights
        >>> g = torch.Generator().manual_seed(0)
        >>> ds = TensorDataset(torch.randn(200, 3, generator=g), torch.randint(0, 2, (200,)))
        >>> proxies = torch.randn(200, 4, generator=g)
        >>> sampler = GradMatchBatchSampler(
        ...     ds, batch_size=16, callback=lambda idx: proxies[idx], budget=0.2,
        ...     labels=ds.tensors[1], seed=0,
        ... )
        >>> loader = DataLoader(WithWeights(ds), batch_sampler=sampler)
        >>> batches = [(x, y, w) for x, y, w in loader]
        >>> len(batches), sampler.coreset_size, round(float(sampler.coreset_weights.mean()), 6)
        (3, 40, 1.0)
    """

    _kind = "GradMatchBatchSampler"

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 128,
        *,
        callback: ProxyCallback | None = None,  # (required: None only to name what is missing)
        budget: float = 0.1,
        labels: Sequence[int] | Tensor | npt.NDArray[Any] | None = None,
        reselect_every: int = 20,
        callback_batch_size: int = 1024,
        lam: float = 0.5,
        tol: float = 1e-4,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        telemetry_size: int = 1000,
        record_coresets: bool = False,
        per_batch: bool = False,
    ) -> None:
        stream = BudgetedStream(
            data_source, batch_size, budget=budget, drop_last=drop_last, seed=seed,
            generator=generator,
        )  # fmt: skip
        selection = _OMPSelection(
            callback, stream, labels=labels, reselect_every=reselect_every,
            callback_batch_size=callback_batch_size, lam=lam, tol=tol, per_batch=per_batch,
        )  # fmt: skip
        telemetry = Telemetry(telemetry_size, logger, "GradMatch ", record_coresets=record_coresets)
        self._build(stream, selection, telemetry)

    def _batch_positions(self, epoch: int) -> Sequence[Sequence[int]]:
        """GradMatch-PB: the chosen mini-batches whole, in a fresh random order each epoch."""
        if not self._omp.per_batch:
            return super()._batch_positions(epoch)
        stream, size = self._stream, self._stream.batch_size
        order = stream.rng(epoch, SHUFFLE).permutation(stream.num_steps).tolist()
        return [range(at * size, at * size + size) for at in order]

    @property
    def per_batch(self) -> bool:
        """Whether whole mini-batches are selected (GradMatch-PB)."""
        return self._omp.per_batch

    @property
    def num_filled(self) -> int:
        """Examples of the current subset added at random (weight 1) because OMP stopped
        early in their class, at the last selection made in this process (0 before one)."""
        return self._omp.filled

    @property
    def _omp(self) -> _OMPSelection:
        assert isinstance(self._selection, _OMPSelection)
        return self._selection


class _OMPSelection(WholeSetSelection):
    """GradMatch's rule for a class: non-negative OMP towards the class's proxy sum, random
    fill-up with weight 1."""

    def __init__(
        self, callback: Any, stream: BudgetedStream, *, labels: Any, reselect_every: int,
        callback_batch_size: int, lam: float, tol: float, per_batch: bool,
    ) -> None:  # fmt: skip
        if isinstance(lam, bool) or not isinstance(lam, (int, float)):
            raise TypeError(f"lam should be a number, but got {type(lam).__name__}")
        if not lam >= 0 or lam == float("inf"):
            raise ValueError(f"lam should be a finite number ≥ 0, but got lam={lam!r}")
        self.lam = float(lam)
        self.tol = check_in_interval("tol", tol, "[0, 1)")
        self.per_batch = check_bool("per_batch", per_batch)
        self.filled = 0
        self.batch_size, self.num_steps = stream.batch_size, stream.num_steps
        size = None
        if self.per_batch:
            if labels is not None:
                raise ValueError(
                    "per_batch=True selects whole mini-batches of the whole set, not per class: "
                    "pass labels=None"
                )
            if self.num_steps > stream.num_samples // self.batch_size:
                raise ValueError(
                    f"per_batch=True selects {self.num_steps} of the "
                    f"{stream.num_samples // self.batch_size} full batches of {self.batch_size} "
                    "examples each epoch: lower the budget"
                )
            size = self.num_steps * self.batch_size
        settings = {"lam": self.lam, "tol": self.tol, "per_batch": self.per_batch}
        super().__init__(
            callback, stream, labels=labels, reselect_every=reselect_every,
            callback_batch_size=callback_batch_size, settings=settings, size=size,
        )  # fmt: skip

    def select(
        self, index: int, epoch: int, rng: np.random.Generator
    ) -> tuple[float, float, list[tuple[IntArray, int]]]:
        self.filled = 0
        if not self.per_batch:
            return super().select(index, epoch, rng)
        t0 = time.perf_counter()
        proxies = self._proxies(index)
        callback_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        n, size = self.num_samples, self.batch_size
        # the candidates: a random partition into full batches (a remainder of fewer than
        # batch_size examples sits out this selection), each with its summed proxies
        batches = rng.permutation(n)[: (n // size) * size].astype(np.int64).reshape(-1, size)
        feats = proxies[torch.from_numpy(batches).to(proxies.device)].sum(1)
        picks, gammas = self.solve(feats, self.num_steps, rng)
        self.coreset = batches[picks].reshape(-1).tolist()
        self.weights = mean_one([g for g in gammas for _ in range(size)], self.size)
        self.selected_epoch = epoch
        groups = [(np.arange(n, dtype=np.int64), self.num_steps)]
        return callback_seconds, time.perf_counter() - t0, groups

    def solve(
        self, feats: Tensor, k: int, rng: np.random.Generator
    ) -> tuple[IntArray, list[float]]:
        out = nonnegative_omp(feats, feats.sum(0), k, lam=self.lam, tol=self.tol)
        indices = out.indices.cpu().numpy()
        weights = out.weights.detach().to("cpu", torch.float64).numpy()
        keep = (indices >= 0) & (weights > 0)
        picks = indices[keep].astype(np.int64)
        gammas = weights[keep].tolist()
        missing = k - picks.shape[0]
        if missing > 0:  # random examples of the class, weight 1 (as the authors' code)
            rest = np.setdiff1d(np.arange(feats.shape[0], dtype=np.int64), picks)
            fill = rng.choice(rest, size=missing, replace=False).astype(np.int64)
            picks = np.concatenate([picks, fill])
            gammas.extend([1.0] * missing)
            self.filled += missing
        return picks, gammas
