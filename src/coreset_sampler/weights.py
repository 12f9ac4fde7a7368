"""Weights that travel with their batch: :class:`WeightedIndex` and :class:`WithWeights`.

A DataLoader with workers asks its batch sampler for batches ahead of training, so "the
current coreset's weights" may already be newer than the batch the loop holds. Here each index
the sampler yields carries the weight computed for its own batch, and the dataset wrapper reads
it back next to the sample, in the worker, however far the loader prefetches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from coreset_sampler._checks import check_bool

__all__ = ["WeightedIndex", "WithWeights"]


class WeightedIndex(int):
    """An example index (an ``int``) that carries the weight of the batch it was yielded in.

    The samplers of this module yield lists of these. They index datasets, tensors and arrays
    exactly like the ``int`` they equal, pickle with their weight (so they reach DataLoader
    workers), and :class:`WithWeights` reads the weight back next to the sample. Arithmetic on
    them returns plain ints.

    Examples:
        >>> import pickle
        >>> i = WeightedIndex(7, 0.5)
        >>> i == 7, i.weight, pickle.loads(pickle.dumps(i)).weight
        (True, 0.5, 0.5)
    """

    weight: float

    def __new__(cls, index: int, weight: float = 1.0) -> WeightedIndex:
        obj = super().__new__(cls, index)
        obj.weight = float(weight)
        return obj

    def __reduce__(self) -> tuple[type[WeightedIndex], tuple[int, float]]:
        return (WeightedIndex, (int(self), self.weight))

    def __repr__(self) -> str:
        return f"WeightedIndex({int(self)}, weight={self.weight!r})"


class WithWeights(Dataset[tuple[Any, ...]]):
    """Opt-in dataset wrapper that returns each sample together with its coreset weight.

    ``WithWeights(ds)[i]`` is ``(*ds[i], w)`` when ``ds[i]`` is a tuple and ``(ds[i], w)``
    otherwise (a list, dict or tensor item is kept whole), with ``w = i.weight`` for a
    :class:`WeightedIndex` and ``1.0`` for a plain int, as a 0-d float32 tensor (so the default
    collate gives a float32 ``[batch]`` tensor). With ``return_index=True`` the example index is
    appended after the weight (for
    :meth:`~coreset_sampler.CrestBatchSampler.report_losses`). Because the weight rides on the
    index the worker receives, it is always the weight computed for *that* batch,
    however far the loader prefetches. Wrapped datasets that define ``__getitems__`` keep using
    it.

    Args:
        dataset: a map-style dataset.
        return_index: also return the example index (as a 0-d int64 tensor).

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = WithWeights(TensorDataset(torch.arange(4.0), torch.tensor([0, 1, 0, 1])))
        >>> x, y, w = ds[WeightedIndex(2, 1.5)]
        >>> float(x), int(y), float(w)
        (2.0, 0, 1.5)
    """

    def __init__(self, dataset: Any, *, return_index: bool = False) -> None:
        if not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"dataset should be a map-style dataset (with __getitem__), but got "
                f"{type(dataset).__name__}"
            )
        self.dataset = dataset
        self.return_index = check_bool("return_index", return_index)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        _check_index(index)
        return _join(self.dataset[index], self._extras([index])[0])

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, ...]]:
        for i in indices:
            _check_index(i)
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(indices) if callable(getitems) else [self.dataset[i] for i in indices]
        extras = self._extras(indices)
        return [_join(item, extra) for item, extra in zip(items, extras, strict=True)]

    def _extras(self, indices: list[Any]) -> list[tuple[Tensor, ...]]:
        """The weight (and index) to append to each of ``indices``' items: 0-d views of one
        tensor per call (a tensor made per example cost 3 µs each here, 0.37 ms of a batch of
        128, more than the batch's images)."""
        weights = torch.tensor(
            [float(getattr(i, "weight", 1.0)) for i in indices], dtype=torch.float32
        ).unbind(0)
        if not self.return_index:
            return [(w,) for w in weights]
        ids = torch.tensor([int(i) for i in indices], dtype=torch.int64).unbind(0)
        return list(zip(weights, ids, strict=True))


def _join(item: Any, extra: tuple[Any, ...]) -> tuple[Any, ...]:
    """``(*item, *extra)`` for a tuple item, ``(item, *extra)`` for any other."""
    if isinstance(item, tuple):
        return (*item, *extra)
    return (item, *extra)


def _check_index(index: Any) -> None:
    """Refuse a whole batch where an index belongs: a batch sampler given as ``sampler=``."""
    if isinstance(index, (list, tuple)) and any(isinstance(i, WeightedIndex) for i in index):
        raise TypeError(
            f"WithWeights got a batch of {len(index)} indices where one index belongs: the "
            "DataLoader was given a batch sampler as sampler=...; pass it as "
            "DataLoader(dataset, batch_sampler=sampler)"
        )
