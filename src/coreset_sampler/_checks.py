"""Argument checks, in one place and one message style.

Every message names the argument and the value, as ``torch.utils.data`` does: "batch_size
should be a positive integer value, but got batch_size=0". ``True`` is not an int here. Each
check returns the value in the form the caller keeps (an ``int``, a ``float``, a NumPy array).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence, Sized
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")


def _is_int(value: Any) -> bool:
    """A Python or NumPy integer (as torch accepts them), never a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_positive_int(name: str, value: Any) -> int:
    """An ``int`` > 0."""
    if not _is_int(value):
        raise TypeError(f"{name} should be a positive integer value, but got {name}={value!r}")
    if value <= 0:
        raise ValueError(f"{name} should be a positive integer value, but got {name}={value!r}")
    return int(value)


def check_nonnegative_int(name: str, value: Any) -> int:
    """An ``int`` ≥ 0."""
    if not _is_int(value):
        raise TypeError(f"{name} should be a non-negative integer value, but got {name}={value!r}")
    if value < 0:
        raise ValueError(f"{name} should be a non-negative integer value, but got {name}={value!r}")
    return int(value)


def check_optional_positive_int(name: str, value: Any) -> int | None:
    """``None`` or an ``int`` > 0."""
    return None if value is None else check_positive_int(name, value)


def check_bool(name: str, value: Any) -> bool:
    """A ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be a boolean value, but got {name}={value!r}")
    return value


def check_real(name: str, value: Any, *, low: float, strict: bool = False) -> float:
    """A finite real number ≥ ``low`` (> ``low`` when ``strict``), returned as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} should be a real number, but got {name}={value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or (strict and v == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} should be a finite number {bound}, but got {name}={value!r}")
    return v


def check_finite(name: str, value: Any) -> float:
    """A finite real number, returned as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} should be a real number, but got {name}={value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} should be finite, but got {name}={value!r}")
    return float(value)


def check_in_interval(
    name: str, value: Any, interval: str, *, low: float = 0.0, high: float = 1.0
) -> float:
    """A real number in ``interval``, written as ``"(0, 1]"``, ``"[0, 1)"``, ``"(0, 1)"`` or
    ``"[0, 1]"`` with the bounds ``low`` and ``high``; returned as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} should be a number in {interval}, but got {name}={value!r}")
    v = float(value)
    above = v > low if interval[0] == "(" else v >= low
    below = v < high if interval[-1] == ")" else v <= high
    if not (above and below):  # (NaN fails both)
        raise ValueError(f"{name} should be in {interval}, but got {name}={value!r}")
    return v


def check_choice(name: str, value: Any, choices: Sequence[T]) -> T:
    """One of ``choices`` (compared with ``==``; ``True`` never matches)."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} should be one of {tuple(choices)}, but got {name}={value!r}")
    found: T = value
    return found


def check_callable(name: str, value: Any) -> Any:
    """A callable (returned as it is)."""
    if value is None:
        hint = " (e.g. GradientProxyCallback(model, dataset))" if name == "callback" else ""
        raise TypeError(f"{name} is required{hint}")
    if not callable(value):
        raise TypeError(f"{name} should be callable, but got {type(value).__name__}")
    return value


def check_seed_or_generator(seed: Any, generator: Any) -> torch.Generator | None:
    """``seed`` (a non-negative int) or ``generator`` (a :class:`torch.Generator`), not both;
    the generator, if given."""
    if seed is not None and generator is not None:
        raise ValueError(f"pass seed or generator, not both (got seed={seed!r} and a generator)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator should be a torch.Generator, but got {type(generator).__name__}"
        )
    if seed is not None:
        check_nonnegative_int("seed", seed)
    return generator


def check_seed(seed: Any, generator: Any) -> int:
    """The seed of a sampler's random streams: ``seed``, one draw from ``generator``, or 0."""
    gen = check_seed_or_generator(seed, generator)
    if gen is not None:
        return int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
    return 0 if seed is None else int(seed)


def check_replicas(num_replicas: Any, rank: Any) -> tuple[int, int]:
    """``(num_replicas, rank)``, from the default process group where not given (as
    :class:`~torch.utils.data.DistributedSampler` does)."""
    grouped = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if grouped else 1
    if rank is None:
        rank = dist.get_rank() if grouped else 0
    check_positive_int("num_replicas", num_replicas)
    if not _is_int(rank):
        raise TypeError(f"rank should be an integer value, but got rank={rank!r}")
    if rank >= num_replicas or rank < 0:
        raise ValueError(
            f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]"
        )
    return int(num_replicas), int(rank)


def check_num_samples(data_source: Any) -> int:
    """N, from a sized dataset or an ``int``; never a sampler."""
    if isinstance(data_source, bool):
        raise TypeError(
            f"data_source should be a dataset or its size (int), but got "
            f"data_source={data_source!r}"
        )
    if isinstance(data_source, Sampler):
        raise TypeError(
            f"data_source should be the dataset or its size, not a sampler (got "
            f"{type(data_source).__name__}): the sampler draws its own examples. Under "
            "Lightning, pass Trainer(use_distributed_sampler=False) so that it does not "
            "re-create the batch sampler around a DistributedSampler"
        )
    if _is_int(data_source):
        n = int(data_source)
    elif isinstance(data_source, Sized):
        n = len(data_source)
    else:
        raise TypeError(
            f"data_source should be a dataset with __len__ or its size (int), but got "
            f"{type(data_source).__name__}"
        )
    if n <= 0:
        raise ValueError(f"data_source should hold at least one example, but got size {n}")
    return n


def check_labels(labels: Any, n: int) -> IntArray | None:
    """Labels (one per example) as dense class ids 0..C−1, by increasing label value."""
    if labels is None:
        return None
    if isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"labels should hold integers, but got a tensor of dtype {labels.dtype}"
            )
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"labels should hold integers, but got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"labels should have one entry per example (shape ({n},)), but got shape "
            f"{tuple(arr.shape)}"
        )
    _, ids = np.unique(arr, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def check_indices(indices: Any) -> list[int]:
    """A 1-D sequence (or integer tensor) of example indices, as a list of ``int``."""
    if isinstance(indices, Tensor):
        if indices.ndim != 1 or indices.is_floating_point():
            raise TypeError(
                f"indices should be a 1-D sequence of ints, but got a tensor of shape "
                f"{tuple(indices.shape)} and dtype {indices.dtype}"
            )
        return [int(i) for i in indices.tolist()]
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
        raise TypeError(f"indices should be a sequence of ints, but got {type(indices).__name__}")
    out = list(indices)
    for i in out:
        # ints and numpy / torch integer scalars (through __index__); never bools
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(f"indices should hold ints, but got {i!r}")
    return [int(i) for i in out]


def index_array(indices: Any, n: int, where: str) -> IntArray:
    """Example indices in ``[0, n)`` as an int64 array (``where`` names the call)."""
    if isinstance(indices, Tensor):
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise TypeError(f"{where}: indices should be integers, but got dtype {indices.dtype}")
        arr = indices.detach().reshape(-1).cpu().numpy().astype(np.int64)
    else:
        arr = np.asarray([int(i) for i in indices], dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = arr[(arr < 0) | (arr >= n)][:5].tolist()
        raise ValueError(f"{where}: indices should be in [0, {n}), but got {bad}")
    return arr


def loss_arrays(indices: Any, losses: Any, n: int, where: str) -> tuple[IntArray, FloatArray]:
    """Per-sample losses reported with their example indices, as int64 and float64 arrays of
    the same length (``where`` names the call)."""
    idx = index_array(indices, n, where)
    if isinstance(losses, Tensor):
        values = losses.detach().reshape(-1).to("cpu", torch.float64).numpy()
    else:
        try:
            values = np.asarray(losses, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{where}: losses should be numbers (a tensor or a sequence of floats), but "
                f"got {losses!r:.80}"
            ) from err
    if values.shape[0] != idx.shape[0]:
        raise ValueError(f"{where}: got {idx.shape[0]} indices but {values.shape[0]} losses")
    return idx, values


def check_tensor(name: str, x: Any, *, ndim: int | None = None, floating: bool = False) -> Tensor:
    """A tensor, of ``ndim`` dimensions and a floating dtype where asked."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} should be a Tensor, but got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} should be a floating-point tensor, but got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} should be {ndim}-D, but got shape {tuple(x.shape)}")
    return x
