r"""CRAIG's weighted coreset of the whole training set as a DataLoader batch sampler.

CRAIG (Mirzasoleiman, Bilmes, Leskovec, "Coresets for Data-efficient Training of Machine Learning
Models", ICML 2020) selects, once per epoch or every few epochs, one weighted subset S of the
whole training set V whose weighted gradient approximates the full gradient. With gradient
proxies g_i it maximises the facility-location function

.. math::

    S = \operatorname*{arg\,max}_{|S| = K} \sum_{i ∈ V} \max_{j ∈ S} \bigl(C - \lVert g_i -
    g_j \rVert\bigr), \qquad γ_j = \bigl|\{i ∈ V : j = \operatorname*{arg\,max}_{j' ∈ S}
    s(i, j')\}\bigr|,

greedily (a ``1 − 1/e`` approximation), one problem per class, and weights every pick by its
cluster size γ_j, so that :math:`\sum_{j∈S} γ_j ∇ℓ_j ≈ \sum_{i∈V} ∇ℓ_i` with an error bounded by
the facility-location cost :math:`\sum_i \min_{j∈S} \lVert g_i - g_j\rVert`. Training then runs
(weighted) SGD on S only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence, Sized
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from coreset_sampler._checks import (
    check_choice,
    check_in_interval,
    check_optional_positive_int,
)
from coreset_sampler.kernels import greedy_facility_location
from coreset_sampler.kernels.facility_location import NAIVE_MAX_N, Method, SimilarityName
from coreset_sampler.kernels.facility_location._problem import METHODS, SIMILARITIES
from coreset_sampler.proxies import ProxyCallback

from ._selection import warn_if_tied
from ._stream import BudgetedStream
from ._telemetry import Telemetry
from ._wholeset import WholeSetSampler, WholeSetSelection

__all__ = ["CraigBatchSampler"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
# elements of one [chunk_size, n] block of recomputed similarity rows when chunk_size is left
# automatic (16 MiB in float32; the kernel's temporaries add a few times that)
_ROW_ELEMENTS = 1 << 22


def _auto_chunk(n: int) -> int:
    """Rows per block of recomputed similarities: ``min(n, max(16, 2^22 // n))``."""
    return min(n, max(16, _ROW_ELEMENTS // n))


class CraigBatchSampler(WholeSetSampler):
    r"""Batch sampler that trains on CRAIG's weighted coreset (Mirzasoleiman et al., ICML 2020).

    **Budget.** ``len(sampler) = ceil(budget · N / batch_size)`` batches every epoch
    (``drop_last=True``: floor), the same arithmetic as
    :class:`~coreset_sampler.CrestBatchSampler` and
    :class:`~coreset_sampler.RandomBatchSampler`, so the full run's epoch count and
    learning-rate schedule spend ``budget`` of its optimizer steps.

    **Selection.** At the first epoch and then every ``reselect_every`` epochs, the callback is
    asked for the proxies of all N examples (in calls of ``callback_batch_size`` indices, in
    increasing index order), and a coreset of K = round(budget · N) examples is selected by greedy
    facility location (:func:`~coreset_sampler.kernels.greedy_facility_location`,
    default similarity C − ‖g_i − g_j‖). With ``labels``, K is split across the classes in
    proportion to their sizes, K_c = K · n_c / N rounded by largest remainder (so the K_c sum to
    K exactly), and each class is its own problem (the classes are solved one after the
    other, so memory is that of the largest class). Each pick j gets its cluster size γ_j (the
    examples of its class whose nearest pick it is), rescaled to mean 1 over the coreset:
    w_j = K · γ_j / Σ_{j'∈S} γ_{j'}, which is K · γ_j / N unless a class is too small to get a
    pick (its examples are then covered by no one).

    **Memory.** The kernel never builds an n×n matrix for a class of n > 128 examples: rows of
    the similarity are recomputed from the proxies in blocks of ``chunk_size`` rows (default
    ``max(16, 2^22 // n)``, blocks of about 2^22 elements), so a selection needs
    O(N·d + n·chunk_size) memory. ``method="stochastic"`` (stochastic greedy,
    ``1 − 1/e − epsilon`` in expectation) costs O(n²·d·ln(1/epsilon)) time whatever K is; the
    exact methods O(n²·d) for the first picks plus incremental corrections (measured numbers
    in ``docs/samplers.md``).

    **Yield.** Batches of exactly ``batch_size`` distinct indices, as
    :class:`~coreset_sampler.weights.WeightedIndex` carrying w_j (read them with
    :class:`~coreset_sampler.weights.WithWeights`). Each epoch shuffles the coreset afresh
    and yields consecutive slices of a stream of random permutations of it. When K is not a
    multiple of ``batch_size`` (or ``len`` batches hold more or fewer than K slots), batches do
    not stop short: a batch that reaches the end of a permutation is filled up with coreset
    examples from the start of the next one (never an example twice in a batch), and the next
    permutation continues with the rest. Every coreset example therefore appears
    ``floor`` or ``ceil`` of ``len · batch_size / K`` times per epoch; with ``drop_last=True``
    (fewer slots than K) some are left out of that epoch, different ones each epoch.

    **State.** :meth:`state_dict` holds the epoch, the position in it, the coreset, its weights
    and the epoch it was selected in. The batches of an epoch are regenerated from
    ``(seed, epoch)`` and the coreset, so after :meth:`load_state_dict` the next ``__iter__``
    continues with the identical batches without calling the callback again.

    Args:
        data_source: the dataset (anything with ``len``) or its size N. Not a sampler.
        batch_size: examples per batch, at most K.
        callback: ``callback(indices) -> [n, d]`` proxies or ``(proxies, losses)`` (losses are
            ignored), see :class:`~coreset_sampler.proxies.ProxyCallback`.
        budget: fraction of a full-data epoch's batches to yield, in (0, 1]; also the coreset
            fraction K / N.
        labels: optional class label of every example (length N): one problem per class.
        reselect_every: epochs between selections (1: every epoch).
        callback_batch_size: indices per callback call.
        similarity: ``"neg_distance"`` (C − ‖g_i − g_j‖, CRAIG's), ``"exp"``, ``"cosine"`` or
            ``"dot"``.
        method: the kernel's method: ``"auto"`` (exact), ``"incremental"``, ``"stochastic"``,
            ``"naive"`` (dense n×n: small classes only), ``"lazy"`` (compiled, needs numba;
            one dense n×n float64 matrix per class) or ``"triton"`` (CUDA proxies, Triton).
        epsilon: accuracy of ``method="stochastic"``, in (0, 1).
        chunk_size: rows per block of recomputed similarities (default ``max(16, 2^22 // n)``).
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
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from coreset_sampler import WithWeights
        >>> g = torch.Generator().manual_seed(0)
        >>> ds = TensorDataset(torch.randn(200, 3, generator=g), torch.randint(0, 2, (200,)))
        >>> proxies = torch.randn(200, 4, generator=g)
        >>> sampler = CraigBatchSampler(
        ...     ds, batch_size=16, callback=lambda idx: proxies[idx], budget=0.2,
        ...     labels=ds.tensors[1], seed=0,
        ... )
        >>> loader = DataLoader(WithWeights(ds), batch_sampler=sampler)
        >>> batches = [(x, y, w) for x, y, w in loader]
        >>> len(batches), len(sampler), sampler.coreset_size, tuple(batches[0][2].shape)
        (3, 3, 40, (16,))
        >>> round(float(sampler.coreset_weights.mean()), 6), sampler.telemetry.num_selections
        (1.0, 1)
    """

    _kind = "CraigBatchSampler"

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 128,
        *,
        callback: ProxyCallback | None = None,  # (required: None only to name what is missing)
        budget: float = 0.1,
        labels: Sequence[int] | Tensor | npt.NDArray[Any] | None = None,
        reselect_every: int = 1,
        callback_batch_size: int = 1024,
        similarity: SimilarityName = "neg_distance",
        method: Method = "auto",
        epsilon: float = 0.1,
        chunk_size: int | None = None,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        telemetry_size: int = 1000,
        record_coresets: bool = False,
    ) -> None:
        stream = BudgetedStream(
            data_source, batch_size, budget=budget, drop_last=drop_last, seed=seed,
            generator=generator,
        )  # fmt: skip
        selection = _CraigSelection(
            callback, stream, labels=labels, reselect_every=reselect_every,
            callback_batch_size=callback_batch_size, similarity=similarity, method=method,
            epsilon=epsilon, chunk_size=chunk_size,
        )  # fmt: skip
        telemetry = Telemetry(telemetry_size, logger, "CRAIG ", record_coresets=record_coresets)
        self._build(stream, selection, telemetry)


class _CraigSelection(WholeSetSelection):
    """CRAIG's rule for a class: greedy facility location, cluster sizes as weights."""

    def __init__(
        self, callback: Any, stream: BudgetedStream, *, labels: Any, reselect_every: int,
        callback_batch_size: int, similarity: str, method: str, epsilon: float,
        chunk_size: int | None,
    ) -> None:  # fmt: skip
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        self.method = check_choice("method", method, METHODS)
        self.epsilon = check_in_interval("epsilon", epsilon, "(0, 1)")
        self.chunk_size = check_optional_positive_int("chunk_size", chunk_size)
        settings = {"similarity": self.similarity, "method": self.method, "epsilon": self.epsilon}
        super().__init__(
            callback, stream, labels=labels, reselect_every=reselect_every,
            callback_batch_size=callback_batch_size, settings=settings,
        )  # fmt: skip

    def solve(
        self, feats: Tensor, k: int, rng: np.random.Generator
    ) -> tuple[IntArray, list[float]]:
        generator = torch.Generator(device=feats.device)
        generator.manual_seed(int(rng.integers(0, 2**62)))
        result = greedy_facility_location(
            feats, k, similarity=self.similarity, method=self.method,  # type: ignore[arg-type]
            epsilon=self.epsilon, generator=generator, chunk_size=self._chunk(feats.shape[0]),
            ties="share",
        )  # fmt: skip
        warn_if_tied(feats, result.indices, "the coreset's")
        picks: IntArray = result.indices.cpu().numpy()
        return picks, result.weights.detach().to("cpu", torch.float64).tolist()

    def _chunk(self, n: int) -> int | None:
        # "auto" solves small problems with the dense naive greedy, which needs no chunk (and
        # the kernel does not build its matrix when given one); "naive" is dense by definition
        # ("triton" takes no chunk: its tiles are fixed)
        if self.method in ("naive", "lazy", "triton") or (
            self.method == "auto" and n <= NAIVE_MAX_N
        ):
            return None
        return self.chunk_size or _auto_chunk(n)
