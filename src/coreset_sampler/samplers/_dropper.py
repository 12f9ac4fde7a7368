"""Dropping learned examples (CREST §4): an example whose loss stayed low is never drawn again."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from coreset_sampler._checks import check_finite, check_in_interval, check_positive_int
from coreset_sampler._state import INTS, Codec, Stateful, indices_below

__all__ = ["DropLearned", "LearnedExampleDropper"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class DropLearned:
    """When an example counts as learned and is dropped from the active set (CREST §4).

    An example is dropped at an observation at step s with loss < ``threshold`` (α) when its
    observations have all been < α since step s0 ≤ s − ``window`` (T2, in sampler steps), s0
    being the first observation of that run below α: any observation ≥ α (or NaN) ends the
    run. At most ``floor(max_fraction · N)`` examples are ever dropped.

    Args:
        threshold: α, the loss below which an example counts as learned.
        window: T2, steps over which its losses must stay below α.
        max_fraction: at most this fraction of the dataset is ever dropped, in [0, 1).

    Examples:
        >>> DropLearned(window=40)
        DropLearned(threshold=0.1, window=40, max_fraction=0.2)
    """

    threshold: float = 0.1
    window: int = 20
    max_fraction: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_finite("threshold", self.threshold))
        object.__setattr__(self, "window", check_positive_int("window", self.window))
        fraction = check_in_interval("max_fraction", self.max_fraction, "[0, 1)")
        object.__setattr__(self, "max_fraction", fraction)


class LearnedExampleDropper(Stateful):
    """The active set and the loss observations that shrink it (``rule=None``: nothing is
    dropped and nothing is tracked)."""

    dropped: list[int]
    low_since: IntArray

    def __init__(self, num_samples: int, rule: bool | DropLearned) -> None:
        super().__init__()
        if not isinstance(rule, (bool, DropLearned)):
            raise TypeError(
                f"drop_learned should be a boolean value or a DropLearned, but got "
                f"drop_learned={rule!r}"
            )
        self.rule = DropLearned() if rule is True else rule or None
        self.num_samples = num_samples
        self.max_dropped = math.floor(self.rule.max_fraction * num_samples) if self.rule else 0
        self.add_config("drop_learned", None if self.rule is None else repr(self.rule))
        self.add_state("dropped", INTS, [], check=self._check_dropped)
        # the step since which each example's observed losses are all below the threshold
        # (−1: not in such a run); saved sparsely
        low_since = Codec(_sparse, self._dense)
        self.add_state("low_since", low_since, np.full(num_samples, -1, dtype=np.int64))
        self._active = np.ones(num_samples, dtype=bool)
        self._active_cache: IntArray | None = None

    @property
    def min_active(self) -> int:
        """The smallest the active set can become."""
        return self.num_samples - self.max_dropped

    @property
    def num_active(self) -> int:
        return self.num_samples - len(self.dropped)

    def active_indices(self) -> IntArray:
        if self._active_cache is None:
            self._active_cache = np.flatnonzero(self._active).astype(np.int64)
        return self._active_cache

    def observe(self, indices: IntArray, losses: npt.NDArray[np.float64], step: int) -> None:
        """Losses of ``indices`` observed at ``step``; drop the examples that are learned."""
        rule = self.rule
        if rule is None or indices.size == 0:
            return
        uniq, inverse = np.unique(indices, return_inverse=True)
        if uniq.shape[0] != indices.shape[0]:
            worst = np.full(uniq.shape[0], -np.inf)
            np.maximum.at(worst, inverse, np.where(np.isnan(losses), np.inf, losses))
            indices, losses = uniq, worst
        keep = self._active[indices]
        indices, losses = indices[keep], losses[keep]
        low = losses < rule.threshold  # NaN counts as not learned
        self.low_since[indices[~low]] = -1
        low_idx = indices[low]
        since = self.low_since[low_idx]
        fresh = since < 0
        self.low_since[low_idx[fresh]] = step
        ready = low_idx[~fresh & (step - since >= rule.window)]
        room = self.max_dropped - len(self.dropped)
        if ready.size == 0 or room <= 0:
            return
        ready = ready[:room]
        self._active[ready] = False
        self.low_since[ready] = -1
        self._active_cache = None
        self.dropped.extend(ready.tolist())
        logger.debug(
            "dropped %d learned examples at step %d (%d dropped in all, active set %d)",
            ready.size,
            step,
            len(self.dropped),
            self.num_active,
        )

    def _dense(self, value: Any, where: str) -> IntArray:
        try:
            idx, steps = (np.asarray(v, dtype=np.int64) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} should be [indices, steps], but got {value!r}") from None
        if idx.shape != steps.shape or (
            idx.size and (idx.min() < 0 or idx.max() >= self.num_samples)
        ):
            raise ValueError(
                f"{where} should be [indices, steps] of examples in [0, {self.num_samples})"
            )
        out = np.full(self.num_samples, -1, dtype=np.int64)
        out[idx] = steps
        return out

    def _check_dropped(self, dropped: list[int]) -> str | None:
        problem = indices_below(self.num_samples)(dropped)
        if problem is None and (
            len(set(dropped)) != len(dropped) or len(dropped) > self.max_dropped
        ):
            problem = (
                f"holds {len(dropped)} examples; this sampler drops at most {self.max_dropped}, "
                "each once"
            )
        return problem

    def _after_load(self) -> None:
        self._active = np.ones(self.num_samples, dtype=bool)
        self._active[self.dropped] = False
        self._active_cache = None


def _sparse(low_since: IntArray) -> list[list[int]]:
    low = np.flatnonzero(low_since >= 0)
    return [low.tolist(), low_since[low].tolist()]
