"""The budgeted batch stream: epochs of ``len`` batches, seeds, sharding, and the coreset cycle.

:class:`BudgetedStream` is the clock every sampler runs on: the budget arithmetic (the one place
of it), the epoch and the position in it, the batches yielded in all, the seed and the random
streams derived from ``(seed, epoch, stream[, rank])``, and resuming mid-epoch.
:class:`CoresetCycle` yields the current coresets in turn, each pass over them in a fresh random
order. :func:`agreement_group` and :func:`agree` make the ranks of a distributed run decide
alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sized
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from coreset_sampler._checks import (
    check_bool,
    check_in_interval,
    check_num_samples,
    check_positive_int,
    check_replicas,
    check_seed,
)
from coreset_sampler._state import (
    FLOAT_LISTS,
    INT,
    INT_LISTS,
    INTS,
    RNGS,
    Stateful,
    finite_weights,
    indices_below,
)

__all__ = [
    "BudgetedStream", "CoresetCycle", "agree", "agreement_group", "snap_to_integer",
    "steps_per_epoch",
]  # fmt: skip


def steps_per_epoch(
    budget: float, num_samples: int, batch_size: int, drop_last: bool, num_replicas: int = 1
) -> int:
    """Batches per epoch (per replica): ceil(budget·N / (m·replicas)), floor with drop_last.

    A product within 1e-9 (relative) of an integer is that integer, so that float rounding of
    ``budget·N`` (0.07·100 = 7.000000000000001) does not add a step.
    """
    exact = snap_to_integer(budget * num_samples / (batch_size * num_replicas))
    return math.floor(exact) if drop_last else math.ceil(exact)


def snap_to_integer(x: float) -> float:
    """``x``, or the integer within 1e-9 (relative) of it: float rounding of a product
    (0.07·100 = 7.000000000000001) does not move it past the integer."""
    nearest = round(x)
    return float(nearest) if abs(x - nearest) <= 1e-9 * max(1.0, abs(x)) else x


class BudgetedStream(Stateful):
    """Epochs of ``num_steps`` batches, their position, seeds and random streams.

    ``streams`` names the random streams kept in the state (drawn afresh from
    ``(seed, epoch, k, rank)`` at the start of each epoch and continued after a resume);
    :meth:`rng` gives other per-epoch streams, regenerated from the seed.
    """

    # declared state (add_state below), annotated as torchmetrics annotates its states
    seed: int
    epoch: int
    step_in_epoch: int
    step: int
    rngs: dict[str, np.random.Generator]

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
        streams: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.num_replicas, self.rank = check_replicas(num_replicas, rank)
        self.num_samples = check_num_samples(data_source)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.drop_last = check_bool("drop_last", drop_last)
        if self.batch_size > self.num_samples:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the dataset "
                f"(num_samples={self.num_samples}): the sampler needs at least one full batch"
            )
        self.budget = check_in_interval("budget", budget, "(0, 1]")
        self.num_steps = steps_per_epoch(
            self.budget, self.num_samples, self.batch_size, self.drop_last, self.num_replicas
        )
        if self.num_steps == 0:
            per = self.budget * self.num_samples / (self.batch_size * self.num_replicas)
            raise ValueError(
                f"budget={budget!r} gives 0 steps per epoch: budget·num_samples/"
                f"(batch_size·num_replicas) = {per:.4g} rounds down to 0 with "
                f"drop_last=True; raise the budget or use drop_last=False"
            )
        # the most an epoch can have; a sampler whose epochs vary (InfoBatch's pruned epochs)
        # sets ``num_steps`` per epoch, at most this
        self.max_steps = self.num_steps
        for name in ("num_samples", "batch_size", "budget", "drop_last", "num_replicas", "rank"):
            self.add_config(name, getattr(self, name))
        self.streams = streams
        self.add_state("seed", INT, check_seed(seed, generator))
        self.add_state("epoch", INT, 0)
        self.add_state("step_in_epoch", INT, 0)
        self.add_state("step", INT, 0)  # batches yielded, all epochs
        if streams:
            self.add_state("rngs", RNGS, self.epoch_rngs(0), check=self._same_streams)
        self.resume = False  # a loaded state continues its epoch at the next __iter__

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next pass, from its start; the epoch it is in is a no-op (so a
        loaded state continues, and a framework that sets the epoch once the pass has begun
        does not restart it)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch should be a non-negative integer, but got epoch={epoch!r}")
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self.step_in_epoch = 0
        self.resume = False

    def begin_pass(self) -> bool:
        """Start an ``__iter__``; True when it continues a resumed pass mid-epoch (with the
        saved random streams), else the epoch's streams are drawn afresh."""
        if self.resume:
            self.resume = False
            if 0 < self.step_in_epoch < self.num_steps:
                return True
            # a state saved at an epoch boundary: the epoch starts afresh, as it would have
        if self.step_in_epoch > 0:
            # the last pass was left without its end being observed (a loop that broke out,
            # or a state saved after its last batch): like torch's samplers, a new pass gives
            # new batches, those of the next epoch
            self.epoch += 1
        self.step_in_epoch = 0
        if self.streams:
            self.rngs = self.epoch_rngs(self.epoch)
        return False

    def end_pass(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0

    def advance(self) -> None:
        """One batch yielded."""
        self.step += 1
        self.step_in_epoch += 1

    def rng(self, epoch: int, stream: int, *, per_rank: bool = False) -> np.random.Generator:
        """The stream ``(seed, epoch, stream)``, or ``(…, rank)`` for a rank's own stream."""
        key: tuple[int, ...] = (epoch, stream)
        if per_rank and self.num_replicas > 1:
            key = (epoch, stream, self.rank)
        seq = np.random.SeedSequence(self.seed, spawn_key=key)
        return np.random.Generator(np.random.PCG64(seq))

    def epoch_rngs(self, epoch: int) -> dict[str, np.random.Generator]:
        return {name: self.rng(epoch, k, per_rank=True) for k, name in enumerate(self.streams)}

    def _same_streams(self, rngs: dict[str, Any]) -> str | None:
        if sorted(rngs) != sorted(self.streams):
            return f"should hold the random streams {list(self.streams)}, but holds {sorted(rngs)}"
        return None

    def _check_together(self, values: Mapping[str, Any]) -> str | None:
        if not 0 <= values["step_in_epoch"] <= self.max_steps:
            return (
                f"holds step_in_epoch={values['step_in_epoch']}, outside the epoch's "
                f"[0, {self.max_steps}] steps"
            )
        return None

    def _after_load(self) -> None:
        self.resume = True
        if self.step_in_epoch == self.num_steps:
            # saved after the epoch's last batch: what comes next is the next epoch, from its
            # start (and ``epoch`` says so, for a loop that resumes at ``sampler.epoch``)
            self.epoch += 1
            self.step_in_epoch = 0


class CoresetCycle(Stateful):
    """The current coresets and their weights, yielded in turn; each pass over them in a fresh
    random order."""

    coresets: list[list[int]]
    weights: list[list[float]]
    order: list[int]
    position: int

    def __init__(self, num_samples: int) -> None:
        super().__init__()
        self.add_state("coresets", INT_LISTS, [], check=indices_below(num_samples))
        self.add_state("weights", FLOAT_LISTS, [], check=finite_weights)
        self.add_state("order", INTS, [])
        self.add_state("position", INT, 0)
        self.add_state("passes", INT, 0)  # passes over the current coresets begun (uses)

    def _check_together(self, values: Mapping[str, Any]) -> str | None:
        coresets, weights, order = values["coresets"], values["weights"], values["order"]
        if [len(w) for w in weights] != [len(c) for c in coresets]:
            return "holds weights that do not match its coresets (one weight per index)"
        if sorted(order) != list(range(len(coresets))):
            return f"holds an order {order[:10]} that is not a permutation of its coresets"
        if not 0 <= values["position"] <= len(order):
            return f"holds position={values['position']} outside [0, {len(order)}]"
        if values["passes"] < (1 if coresets else 0):
            return f"holds passes={values['passes']} over {len(coresets)} coresets"
        return None

    def replace(
        self, coresets: list[list[int]], weights: list[list[float]], rng: np.random.Generator
    ) -> None:
        """New coresets (from a selection), in a fresh random order."""
        self.coresets, self.weights = coresets, weights
        self.order = rng.permutation(len(coresets)).tolist()
        self.position = 0
        self.passes = 1

    def used_up(self, max_uses: int | None) -> bool:
        """Whether the next batch would begin pass ``max_uses + 1`` over the coresets."""
        return max_uses is not None and self.passes >= max_uses and self.position >= len(self.order)

    def next(self, rng: np.random.Generator) -> tuple[list[int], list[float]]:
        """The next coreset and its weights (a new random order after each pass)."""
        if self.position >= len(self.order):
            self.order = rng.permutation(len(self.coresets)).tolist()
            self.position = 0
            self.passes += 1
        p = self.order[self.position]
        self.position += 1
        return self.coresets[p], self.weights[p]


def agreement_group(num_replicas: int) -> Any:
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


def agree(group: Any, value: float, op: str) -> float:
    """The max (or min) of ``value`` over all ranks; ``value`` itself without a group."""
    if group is None:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    reduce = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN
    dist.all_reduce(t, op=reduce, group=group)
    return float(t.item())
