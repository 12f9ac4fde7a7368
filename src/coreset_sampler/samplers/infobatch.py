"""InfoBatch (Qin et al., ICLR 2024): each epoch, prune part of the low-loss examples and
rescale the rest, from the losses the training steps report; no extra forward pass."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import Tensor

from coreset_sampler._checks import check_in_interval, check_positive_int, loss_arrays
from coreset_sampler._checks import index_array as _index_array
from coreset_sampler._state import FLOAT, INT, INTS, Codec, Stateful, indices_below
from coreset_sampler.weights import WeightedIndex

from ._base import BudgetedSampler
from ._stream import BudgetedStream, agreement_group, snap_to_integer
from ._telemetry import SamplerTelemetry, Telemetry

__all__ = ["InfoBatchSampler"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class LossPruning(Stateful):
    """The loss table (the latest reported loss of each example, NaN where none) and the
    current epoch's plan: the kept examples in the order they are yielded, and which of them
    are kept low-loss examples with the rescaled weight."""

    scores: FloatArray
    plan_epoch: int
    order: list[int]
    scaled: list[int]
    rescale: float
    num_low: int

    def __init__(self, num_samples: int, num_epochs: int, prune_ratio: float, delta: float):
        super().__init__()
        self.num_samples = num_samples
        self.num_epochs = check_positive_int("num_epochs", num_epochs)
        self.prune_ratio = check_in_interval("prune_ratio", prune_ratio, "[0, 1)")
        self.delta = check_in_interval("delta", delta, "[0, 1]")
        for name in ("num_epochs", "prune_ratio", "delta"):
            self.add_config(name, getattr(self, name))
        below = indices_below(num_samples)
        scores = Codec(_sparse_scores, self._dense_scores)
        self.add_state("scores", scores, np.full(num_samples, np.nan))
        self.add_state("plan_epoch", INT, -1)  # the epoch the plan is for (-1: none yet)
        self.add_state("order", INTS, [], check=below)
        self.add_state("scaled", INTS, [], check=below)
        self.add_state("rescale", FLOAT, 1.0)
        self.add_state("num_low", INT, 0)
        self.weights = np.ones(num_samples)
        self.version = 0  # reports so far (not saved): a plan drawn before the last is stale
        self.planned_version = 0

    @property
    def num_pruned(self) -> int:
        """Examples left out of the planned epoch."""
        return self.num_samples - len(self.order) if self.plan_epoch >= 0 else 0

    def prunes(self, epoch: int) -> bool:
        """Whether ``epoch`` is pruned: before ``delta · num_epochs`` (the annealing; a product
        within rounding of an integer is that integer: 0.55 · 100 is 55)."""
        return epoch < snap_to_integer(self.delta * self.num_epochs)

    def observe(self, indices: IntArray, losses: FloatArray) -> None:
        """The latest losses of ``indices`` (an index given twice: its last loss); a
        non-finite loss forgets the example's score, which keeps it unpruned."""
        rev = slice(None, None, -1)
        uniq, last = np.unique(indices[rev], return_index=True)
        values = losses[rev][last]
        self.scores[uniq] = np.where(np.isfinite(values), values, np.nan)
        self.version += 1

    def plan(self, epoch: int, rng: np.random.Generator, min_kept: int) -> None:
        """Draw ``epoch``'s kept set from the loss table: of the examples whose loss is below
        the mean of the reported losses, ``prune_ratio · n_low`` (rounded half up; at most
        ``n_low − 1``, and so that ``min_kept`` examples stay) chosen uniformly at random are
        left out and the others weigh ``n_low / n_kept``, so that the expected weighted sum of
        any per-example quantity over the epoch is the full data's."""
        scores = self.scores
        seen = np.isfinite(scores)
        low = np.empty(0, dtype=np.int64)
        if self.prunes(epoch) and seen.any():
            mean = scores[seen].mean()
            # below the mean beyond its rounding (equal losses: none is below)
            low = np.flatnonzero(seen & (scores < mean - 1e-12 * abs(mean)))
        n_low = int(low.shape[0])
        num_pruned = min(
            math.floor(self.prune_ratio * n_low + 0.5),
            max(n_low - 1, 0),
            max(self.num_samples - min_kept, 0),
        )
        keep = np.ones(self.num_samples, dtype=bool)
        pruned = rng.choice(low, num_pruned, replace=False) if num_pruned else low[:0]
        keep[pruned] = False
        kept = np.flatnonzero(keep)
        self.order = kept[rng.permutation(kept.shape[0])].tolist()
        self.scaled = low[keep[low]].tolist() if num_pruned else []
        self.rescale = n_low / (n_low - num_pruned) if num_pruned else 1.0
        self.num_low = n_low
        self.plan_epoch = epoch
        self.planned_version = self.version
        self._set_weights()

    def _set_weights(self) -> None:
        self.weights = np.ones(self.num_samples)
        self.weights[self.scaled] = self.rescale

    def _dense_scores(self, value: Any, where: str) -> FloatArray:
        try:
            idx = np.asarray(value[0], dtype=np.int64)
            losses = np.asarray(value[1], dtype=np.float64)
        except (TypeError, ValueError, IndexError, KeyError):
            raise ValueError(
                f"{where} should be [indices, losses], but got {value!r:.80}"
            ) from None
        if (
            len(value) != 2
            or idx.ndim != 1
            or idx.shape != losses.shape
            or (idx.size and (idx.min() < 0 or idx.max() >= self.num_samples))
            or not np.isfinite(losses).all()
        ):
            raise ValueError(
                f"{where} should be [indices, losses]: examples in [0, {self.num_samples}) "
                "and finite losses, as many of each"
            )
        out = np.full(self.num_samples, np.nan)
        out[idx] = losses
        return out

    def _check_together(self, values: Mapping[str, Any]) -> str | None:
        order, scaled = values["order"], values["scaled"]
        if values["plan_epoch"] < -1:
            return f"holds plan_epoch={values['plan_epoch']}, below -1"
        if len(set(order)) != len(order) or (values["plan_epoch"] >= 0 and not order):
            return "holds a plan whose kept examples are empty or repeated"
        if not set(scaled) <= set(order):
            return "holds rescaled examples that are not among the kept ones"
        rescale, num_low = values["rescale"], values["num_low"]
        if not 0 <= num_low <= self.num_samples:
            return f"holds num_low={num_low} outside [0, {self.num_samples}]"
        num_pruned = self.num_samples - len(order) if values["plan_epoch"] >= 0 else 0
        expected = num_low / len(scaled) if scaled else 1.0
        if len(scaled) != (num_low - num_pruned if num_pruned else 0) or not math.isclose(
            rescale, expected, rel_tol=1e-12
        ):
            return (
                f"holds a plan that does not add up: {num_pruned} pruned of num_low={num_low}, "
                f"{len(scaled)} rescaled by rescale={rescale!r} (expected {expected!r})"
            )
        return None

    def _after_load(self) -> None:
        self._set_weights()
        # a loaded plan counts as drawn before the latest report: one not yet begun is drawn
        # again from the loaded losses (the same plan if it was up to date, the right one if
        # ``len()`` drew it before the losses of the batches in flight came)
        self.planned_version = self.version - 1


def _sparse_scores(scores: FloatArray) -> list[list[Any]]:
    seen = np.flatnonzero(np.isfinite(scores))
    return [seen.tolist(), scores[seen].tolist()]


class InfoBatchSampler(BudgetedSampler):
    r"""InfoBatch's batches (Qin et al., ICLR 2024): each epoch, a random part of the examples
    whose last loss is below the mean is left out, and the kept ones of them are up-weighted.

    The loop reports its per-sample training losses with :meth:`report_losses` (the indices
    come from ``WithWeights(ds, return_index=True)``); no extra forward pass is made. Each
    epoch is planned when its first batch is drawn (``len()`` before that plans it
    provisionally) from the latest losses: of the ``n_low`` examples whose loss is below the
    mean of the reported losses, ``prune_ratio · n_low`` (rounded half up; see
    :meth:`LossPruning.plan` for the bounds) drawn uniformly at random are
    left out, and the kept ones weigh ``n_low / n_kept`` (:math:`1/(1-r)` up to rounding),
    which keeps the epoch's expected weighted gradient equal to the full data's. Examples
    without a reported loss are never pruned. Epochs from ``delta · num_epochs`` on (the
    annealing) are not pruned, and all weights are 1. The kept examples are shuffled and cut
    into batches of ``batch_size``.

    ``len(sampler)`` follows the planned epoch, so it changes from epoch to epoch (after a pass
    left early it is still that epoch's until the next pass begins or ``set_epoch`` is called,
    as the epoch itself is; with ``num_replicas > 1`` a pruned epoch keeps at least one batch
    per rank): a scheduler
    that needs the total number of steps in advance should be driven by the fraction of the
    epoch instead (``docs/samplers.md`` shows how). With ``budget < 1`` an epoch stops after
    ``ceil(budget · N / batch_size)`` batches at most. With ``num_replicas > 1`` the ranks share
    each epoch's batches as :class:`~coreset_sampler.RandomBatchSampler`'s (every rank yields
    the same number of full batches, wrapping around the kept set if needed) and
    :meth:`report_losses` is collective: every rank calls it at the same steps.

    Differences from the authors' code: the threshold is the mean over examples with a reported
    loss (the authors give unseen examples a score of 3, which enters the mean); the weight is
    ``n_low / n_kept`` exactly (theirs ``1 / (1 - r)`` with the kept count rounded down); the
    randomness comes from ``seed`` and the epoch only, never from NumPy's global state; nothing
    is patched.

    Args:
        data_source: the dataset (anything with ``len``) or its size ``N``.
        batch_size: examples per batch.
        num_epochs: the epochs the training runs, for the annealing.
        prune_ratio: r, the fraction of the low-loss examples left out of a pruned epoch, in
            [0, 1) (the authors' default 0.5).
        delta: epochs before ``delta · num_epochs`` are pruned, in [0, 1] (the authors'
            0.875).
        budget: at most this fraction of a full epoch's batches per epoch, in (0, 1].
        drop_last: drop an epoch's last, incomplete batch.
        seed: seed of the random streams (0 when neither ``seed`` nor ``generator`` is given).
        generator: a :class:`torch.Generator` to draw the seed from, instead of ``seed``.
        num_replicas: the number of ranks sharing each epoch (default: the process group's).
        rank: this process's rank (default: the process group's).

    Examples:
        >>> sampler = InfoBatchSampler(100, batch_size=10, num_epochs=4, seed=0)
        >>> len(sampler)  # no losses reported yet: a full epoch
        10
        >>> for batch in sampler:
        ...     sampler.report_losses(batch, [0.1 if i < 50 else 1.0 for i in batch])
        >>> len(sampler), sampler.num_pruned, sorted({i.weight for b in sampler for i in b})
        (8, 25, [1.0, 2.0])
    """

    _kind = "InfoBatchSampler"

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 128,
        *,
        num_epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        budget: float = 1.0,
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
        self._pruning = LossPruning(stream.num_samples, num_epochs, prune_ratio, delta)
        self._group = agreement_group(stream.num_replicas)
        self._warned_alone = False
        self._telemetry = Telemetry(1, logger, "InfoBatch ", selects=False)
        self._compose(stream, {"pruning": self._pruning})

    def __len__(self) -> int:
        """Batches of the epoch the sampler is in (planning it if it is not yet)."""
        self._ensure_plan()
        return self._stream.num_steps

    def __iter__(self) -> Iterator[list[int]]:
        stream = self._stream
        skip = stream.step_in_epoch if stream.begin_pass() else 0
        self._ensure_plan()
        order = np.asarray(self._pruning.order, dtype=np.int64)
        weights = self._pruning.weights
        m, replicas, k = stream.batch_size, stream.num_replicas, order.shape[0]
        short = replicas == 1 and not stream.drop_last  # the last batch may be short
        for step in range(skip, stream.num_steps):
            start = (step * replicas + stream.rank) * m
            positions = np.arange(start, min(start + m, k) if short else start + m)
            chunk = order[positions % k]
            stream.advance()
            yield [WeightedIndex(int(i), float(weights[i])) for i in chunk]
        self._end_pass()

    def _ensure_plan(self) -> None:
        """Plan the epoch the sampler is in, unless it is planned and either begun or planned
        after the latest report (a plan drawn by ``len()`` before more losses came is drawn
        again when the pass begins)."""
        stream, pruning = self._stream, self._pruning
        if pruning.plan_epoch == stream.epoch and (
            stream.step_in_epoch > 0 or pruning.planned_version == pruning.version
        ):
            return
        # (an epoch keeps at least one batch per rank: never a batch of repeated examples)
        pruning.plan(
            stream.epoch, stream.rng(stream.epoch, 0), stream.batch_size * stream.num_replicas
        )
        stream.num_steps = self._steps(len(pruning.order))
        if pruning.num_pruned:
            logger.info(
                "InfoBatch epoch %d: %d of the %d examples below the mean loss pruned (%.1f%% "
                "of %d), the %d kept weigh %.4g; %d batches",
                stream.epoch, pruning.num_pruned, pruning.num_low,
                100 * pruning.num_pruned / stream.num_samples, stream.num_samples,
                pruning.num_low - pruning.num_pruned, pruning.rescale, stream.num_steps,
            )  # fmt: skip
        else:
            why = (
                "annealing" if not pruning.prunes(stream.epoch)
                else "no losses reported yet" if not np.isfinite(pruning.scores).any()
                else "no losses below the mean"
            )  # fmt: skip
            logger.info(
                "InfoBatch epoch %d: not pruned (%s); %d batches", stream.epoch, why,
                stream.num_steps,
            )  # fmt: skip

    def _steps(self, num_kept: int) -> int:
        """Batches (per replica) of an epoch of ``num_kept`` examples."""
        stream = self._stream
        per = stream.batch_size * stream.num_replicas
        steps = num_kept // per if stream.drop_last else math.ceil(num_kept / per)
        return min(max(steps, 1), stream.max_steps)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the loss table and the epoch's plan included); the next
        ``__iter__`` continues the saved epoch. A state that does not fit raises ``TypeError``
        or ``ValueError`` (as :meth:`~coreset_sampler.CrestBatchSampler.load_state_dict`) and
        changes nothing."""
        values = self._state.read(state)
        pruning, stream = values["pruning"], values["stream"]
        steps = self._stream.max_steps
        if stream["step_in_epoch"] > 0 and pruning["plan_epoch"] != stream["epoch"]:
            raise ValueError(
                f"state['stream'] holds step_in_epoch={stream['step_in_epoch']} of epoch "
                f"{stream['epoch']}, but state['pruning'] holds no plan of that epoch"
            )
        if pruning["plan_epoch"] == stream["epoch"]:
            steps = self._steps(len(pruning["order"]))
            if stream["step_in_epoch"] > steps:
                raise ValueError(
                    f"state['stream'] holds step_in_epoch={stream['step_in_epoch']}, beyond "
                    f"its planned epoch's {steps} batches"
                )
        self._stream.num_steps = steps  # (read by the stream when it is restored)
        self._state.apply(values)

    def report_losses(
        self, indices: Sequence[int] | Tensor, losses: Sequence[float] | Tensor
    ) -> None:
        """Report per-sample training losses: the unweighted losses of a batch (e.g.
        ``F.cross_entropy(out, y, reduction="none")``) and its indices (see
        ``WithWeights(..., return_index=True)``). Each example's latest loss is kept; a
        non-finite loss forgets it (the example is not pruned until a finite one comes).
        Collective with ``num_replicas > 1``: every rank calls it at the same steps.

        Raises:
            TypeError: on losses that are not numbers.
            ValueError: on lengths that differ or indices outside ``[0, num_samples)``.
        """
        idx, values = loss_arrays(indices, losses, self.num_samples, "report_losses")
        if self._group is None and self.num_replicas > 1:
            self._check_alone()
        if self._group is not None:
            gathered: list[Any] = [None] * self.num_replicas
            dist.all_gather_object(gathered, (idx, values), group=self._group)
            idx = np.concatenate([g[0] for g in gathered])
            values = np.concatenate([g[1] for g in gathered])
        self._pruning.observe(idx, values)

    def _check_alone(self) -> None:
        """``num_replicas > 1`` without the sampler's group: refuse when a process group has
        come since (the losses would not be shared), else warn once."""
        if dist.is_available() and dist.is_initialized():
            raise RuntimeError(
                f"InfoBatchSampler(num_replicas={self.num_replicas}) was built before the "
                "process group was initialised, so report_losses cannot share the ranks' "
                "losses and their plans would differ; build the sampler after "
                "torch.distributed.init_process_group"
            )
        if not self._warned_alone:
            self._warned_alone = True
            warnings.warn(
                f"InfoBatchSampler(num_replicas={self.num_replicas}) without a process group: "
                "report_losses keeps this rank's losses only, so every rank must report the "
                "same losses for their plans to agree",
                UserWarning,
                stacklevel=3,
            )

    def weights_for(self, indices: Sequence[int] | Tensor) -> Tensor:
        """The float32 weights of examples in the planned epoch (1, or ``n_low / n_kept`` for
        kept low-loss examples), for loops that do not use ``WithWeights``."""
        idx = _index_array(indices, self.num_samples, "weights_for")
        return torch.tensor(self._pruning.weights[idx], dtype=torch.float32)

    @property
    def num_epochs(self) -> int:
        return self._pruning.num_epochs

    @property
    def prune_ratio(self) -> float:
        return self._pruning.prune_ratio

    @property
    def delta(self) -> float:
        return self._pruning.delta

    @property
    def num_pruned(self) -> int:
        """Examples left out of the planned epoch (0 before it is planned)."""
        return self._pruning.num_pruned

    @property
    def scores(self) -> Tensor:
        """Each example's latest reported loss (NaN where none), float64, a copy."""
        return torch.from_numpy(self._pruning.scores.copy())

    @property
    def telemetry(self) -> SamplerTelemetry:
        """Running totals (a fresh snapshot): batches yielded, and as ``num_dropped`` the
        examples pruned from the planned epoch; no selection or check."""
        return self._telemetry.snapshot(self._stream.step, self.num_pruned)
