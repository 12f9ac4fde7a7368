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
import math
import time
from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from coreset_sampler._checks import (
    check_callable,
    check_choice,
    check_in_interval,
    check_labels,
    check_optional_positive_int,
    check_positive_int,
)
from coreset_sampler._state import (
    FLOATS,
    INTS,
    OPTIONAL_INT,
    Stateful,
    finite_weights,
    indices_below,
)
from coreset_sampler.kernels import greedy_facility_location
from coreset_sampler.kernels.facility_location import NAIVE_MAX_N, Method, SimilarityName
from coreset_sampler.kernels.facility_location._problem import METHODS, SIMILARITIES
from coreset_sampler.proxies import ProxyCallback, call_proxies
from coreset_sampler.weights import WeightedIndex

from ._base import BudgetedSampler
from ._selection import labels_digest, largest_remainder, mean_one, warn_if_tied
from ._stream import BudgetedStream
from ._telemetry import SamplerTelemetry, SelectionRecord, Telemetry

__all__ = ["CraigBatchSampler"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
# random streams derived per epoch from (seed, epoch, stream)
_SHUFFLE, _SELECT = 0, 1
# elements of one [chunk_size, n] block of recomputed similarity rows when chunk_size is left
# automatic (16 MiB in float32; the kernel's temporaries add a few times that)
_ROW_ELEMENTS = 1 << 22


def _coreset_size(budget: float, num_samples: int) -> int:
    """``round(budget · N)``, halves rounded up; products within 1e-9 of an integer snap to it."""
    exact = budget * num_samples
    nearest = round(exact)
    if abs(exact - nearest) <= 1e-9 * max(1.0, exact):
        return int(nearest)
    return math.floor(exact + 0.5)


def _auto_chunk(n: int) -> int:
    """Rows per block of recomputed similarities: ``min(n, max(16, 2^22 // n))``."""
    return min(n, max(16, _ROW_ELEMENTS // n))


def _batch_positions(rng: np.random.Generator, size: int, m: int, steps: int) -> list[IntArray]:
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


class CraigBatchSampler(BudgetedSampler):
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
            ``"naive"`` (dense n×n: small classes only) or ``"lazy"`` (compiled, needs numba;
            one dense n×n float64 matrix per class).
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
        self._selection = _WholeSetSelection(
            callback, stream, labels=labels, reselect_every=reselect_every,
            callback_batch_size=callback_batch_size, similarity=similarity, method=method,
            epsilon=epsilon, chunk_size=chunk_size,
        )  # fmt: skip
        self._telemetry = Telemetry(
            telemetry_size, logger, "CRAIG ", record_coresets=record_coresets
        )
        self._compose(stream, {"coreset": self._selection, "telemetry": self._telemetry})

    def __iter__(self) -> Iterator[list[int]]:
        stream = self._stream
        skip = stream.step_in_epoch if stream.begin_pass() else 0
        epoch = stream.epoch
        if self._selection.due(epoch):
            self._select(epoch)
        coreset, weights = self._selection.coreset, self._selection.weights
        batches = _batch_positions(
            stream.rng(epoch, _SHUFFLE), self._selection.size, stream.batch_size, stream.num_steps
        )
        for k in range(skip, stream.num_steps):
            stream.advance()
            yield [WeightedIndex(coreset[p], weights[p]) for p in batches[k].tolist()]
        self._end_pass()

    def _select(self, epoch: int) -> None:
        start = time.perf_counter()
        index = self._telemetry.num_selections
        rng = self._stream.rng(epoch, _SELECT)
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
        of facility-location problems (classes with at least one pick), ``pool_size`` the size
        of the largest, ``interval`` is ``None`` and ``anchor_seconds`` 0; the check and
        dropping totals are 0 (CRAIG has neither).
        """
        return self._telemetry.snapshot(self._stream.step)


class _WholeSetSelection(Stateful):
    """CRAIG's coreset of the whole training set: proxies of every example (in chunks), one
    facility-location problem per class, K split by largest remainder; the coreset, its weights
    and the epoch of its selection are the state."""

    coreset: list[int]
    weights: list[float]
    selected_epoch: int | None

    def __init__(
        self, callback: Any, stream: BudgetedStream, *, labels: Any, reselect_every: int,
        callback_batch_size: int, similarity: str, method: str, epsilon: float,
        chunk_size: int | None,
    ) -> None:  # fmt: skip
        super().__init__()
        n = self.num_samples = stream.num_samples
        self.callback = check_callable("callback", callback)
        self.size = _coreset_size(stream.budget, n)
        if self.size < stream.batch_size:
            raise ValueError(
                f"the coreset, round(budget·num_samples) = {self.size} (budget={stream.budget!r},"
                f" num_samples={n}), is smaller than batch_size={stream.batch_size}: raise the "
                "budget or lower batch_size"
            )
        self.reselect_every = check_positive_int("reselect_every", reselect_every)
        self.callback_batch_size = check_positive_int("callback_batch_size", callback_batch_size)
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        self.method = check_choice("method", method, METHODS)
        self.epsilon = check_in_interval("epsilon", epsilon, "(0, 1)")
        self.chunk_size = check_optional_positive_int("chunk_size", chunk_size)
        self.labels = check_labels(labels, n)
        for name in ("size", "reselect_every", "similarity", "method", "epsilon"):
            self.add_config(f"coreset_{name}" if name == "size" else name, getattr(self, name))
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
            generator = torch.Generator(device=proxies.device)
            generator.manual_seed(int(rng.integers(0, 2**62)))
            result = greedy_facility_location(
                feats, k, similarity=self.similarity, method=self.method,  # type: ignore[arg-type]
                epsilon=self.epsilon, generator=generator, chunk_size=self._chunk(members.shape[0]),
                ties="share",
            )  # fmt: skip
            warn_if_tied(feats, result.indices, "the coreset's")
            picks = result.indices.cpu().numpy()
            coreset.extend(members[picks].tolist())
            gammas.extend(result.weights.detach().to("cpu", torch.float64).tolist())
        self.coreset, self.weights = coreset, mean_one(gammas, self.size)
        self.selected_epoch = epoch
        return callback_seconds, time.perf_counter() - t0, groups

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
        """(examples, picks) of each facility-location problem; picks sum to K."""
        if self.labels is None:
            return [(np.arange(self.num_samples, dtype=np.int64), self.size)]
        members = [
            np.flatnonzero(self.labels == c).astype(np.int64)
            for c in range(int(self.labels.max()) + 1)
        ]
        ks = largest_remainder(self.size, np.array([m.shape[0] for m in members], dtype=np.int64))
        return [(m, int(k)) for m, k in zip(members, ks, strict=True) if k > 0]

    def _chunk(self, n: int) -> int | None:
        # "auto" solves small problems with the dense naive greedy, which needs no chunk (and
        # the kernel does not build its matrix when given one); "naive" is dense by definition
        if self.method in ("naive", "lazy") or (self.method == "auto" and n <= NAIVE_MAX_N):
            return None
        return self.chunk_size or _auto_chunk(n)
