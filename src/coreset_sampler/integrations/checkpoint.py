"""Every rank's sampler state in one checkpoint that only the main process writes.

In a distributed run each rank's sampler has its own state (its share of the batches, its own
coresets), but the frameworks write a checkpoint from the main process only: Accelerate's
``save_state`` (custom objects), Lightning's ``Trainer.save_checkpoint``, Hugging Face's
``Trainer``, and the usual ``if rank == 0: torch.save(...)``. :class:`AllRanksState` wraps a
sampler so that its ``state_dict`` holds the states of all ranks (gathered with
``torch.distributed.all_gather_object``, so every rank must call it, as the frameworks do) and
its ``load_state_dict`` gives each rank its own::

    accelerator.register_for_checkpointing(AllRanksState(sampler))
    accelerator.save_state(directory)   # on every process, as Accelerate asks
    accelerator.load_state(directory)   # every rank gets its own sampler state back

With one process it holds that process's state. Needs nothing beyond torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.distributed as dist

from coreset_sampler.samplers._base import BudgetedSampler

__all__ = ["AllRanksState"]

_KIND = "AllRanksState"


class AllRanksState:
    """A sampler's state for every rank, for a checkpoint written by one process.

    ``state_dict()`` returns ``{"kind": "AllRanksState", "num_replicas": R, "ranks": [state of
    rank 0, …, state of rank R−1]}``: in a distributed run with R > 1 it gathers the ranks'
    states (a collective: call it on every rank); without a process group, or with one rank, it
    holds this sampler's own state. ``load_state_dict`` restores this rank's entry, after
    checking that the checkpoint was written by as many ranks; a plain sampler state (a
    checkpoint of ``sampler.state_dict()``) is accepted for a single rank.

    Args:
        sampler: one of the library's batch samplers.

    Raises:
        TypeError: if ``sampler`` is not one of the library's batch samplers.
    """

    def __init__(self, sampler: BudgetedSampler) -> None:
        if not isinstance(sampler, BudgetedSampler):
            raise TypeError(
                "AllRanksState needs one of coreset_sampler's batch samplers, but got "
                f"{type(sampler).__name__}"
            )
        self.sampler = sampler

    def state_dict(self) -> dict[str, Any]:
        """Every rank's ``sampler.state_dict()``, indexed by rank (a collective when the
        sampler is one of several ranks of an initialised process group)."""
        own = self.sampler.state_dict()
        replicas = self.sampler.num_replicas
        if replicas == 1:
            states: list[Any] = [own]
        elif dist.is_available() and dist.is_initialized():
            if dist.get_world_size() != replicas:
                raise RuntimeError(
                    f"AllRanksState: the sampler has num_replicas={replicas} but the process "
                    f"group has {dist.get_world_size()} processes; they must agree to gather "
                    "every rank's state"
                )
            states = [None] * replicas
            dist.all_gather_object(states, (self.sampler.rank, own))
            states = [state for _, state in sorted(states)]
        else:
            raise RuntimeError(
                f"AllRanksState: the sampler is rank {self.sampler.rank} of {replicas} but no "
                "torch.distributed process group is initialised, so the other ranks' states "
                "cannot be gathered; save sampler.state_dict() on every rank instead"
            )
        return {"kind": _KIND, "num_replicas": replicas, "ranks": states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore this rank's entry of :meth:`state_dict` (or a single rank's plain sampler
        state).

        Raises:
            TypeError: if ``state`` is not a mapping.
            ValueError: if it was written by another number of ranks, or this rank's entry
                does not fit the sampler (see the sampler's ``load_state_dict``).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state should be a mapping, but got {type(state).__name__}")
        replicas, rank = self.sampler.num_replicas, self.sampler.rank
        if state.get("kind") != _KIND:  # a sampler's own state
            if replicas != 1:
                raise ValueError(
                    f"this state is one sampler's (kind {state.get('kind')!r}), not every "
                    f"rank's: it cannot restore rank {rank} of {replicas}; save "
                    "AllRanksState(sampler).state_dict()"
                )
            self.sampler.load_state_dict(state)
            return
        ranks = state.get("ranks")
        if not isinstance(ranks, (list, tuple)) or state.get("num_replicas") != len(ranks):
            raise ValueError(
                "an AllRanksState should hold 'num_replicas' and a list 'ranks' of as many states"
            )
        if len(ranks) != replicas:
            raise ValueError(
                f"this checkpoint holds the sampler states of {len(ranks)} ranks, but the "
                f"sampler is one of {replicas}; resume with {len(ranks)} processes"
            )
        self.sampler.load_state_dict(ranks[rank])
