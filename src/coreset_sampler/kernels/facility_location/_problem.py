"""The arguments of :func:`greedy_facility_location`, checked once into a problem description.

The problems are flattened to ``B`` rows. The description is cheap to build (no copy of the
features, no mask or budget tensor when the call has none), so that the compiled solver's
common call (CREST's selection) costs little more than the kernel itself; the solvers check
the values (finite, not too large) as they read them.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
from torch import Tensor

from coreset_sampler._checks import check_in_interval, check_optional_positive_int

SimilarityName = Literal["neg_distance", "exp", "cosine", "dot"]
Method = Literal["auto", "naive", "incremental", "stochastic", "lazy", "triton"]

SIMILARITIES: tuple[str, ...] = get_args(SimilarityName)
METHODS: tuple[str, ...] = get_args(Method)


class FacilityLocationResult(NamedTuple):
    """What :func:`greedy_facility_location` returns. Every field has the problems' leading shape.

    Attributes:
        indices: ``[..., k]`` int64, the selected points in selection order; ``-1`` past a
            problem's own budget.
        weights: ``[..., k]`` cluster sizes: how many valid points have the selected point as
            their most similar selected point (ties go to the lowest point index). They sum to
            the number of valid points of each problem; ``0`` where ``indices`` is ``-1``.
        gains: ``[..., k]`` marginal gain of each pick, ``F(S ∪ {j}) − F(S)``; non-increasing
            for the exact methods; ``0`` where ``indices`` is ``-1``.
        objective: ``[...]`` ``F(S)`` of the final selection.
    """

    indices: Tensor
    weights: Tensor
    gains: Tensor
    objective: Tensor


class Problem(NamedTuple):
    """A checked call: ``B`` problems of ``n`` points each."""

    features: Tensor | None  # [..., n, d] as given (not cast); None when precomputed
    matrix: Tensor | None  # [..., n, n] precomputed similarity as given, or None
    kind: str  # the similarity's name, or "precomputed"
    mask: Tensor | None  # [B, n] bool on the device; None: every point is valid
    k: int | Tensor  # one budget for all (an int, at most n, without a mask), or [B] int64
    kmax: int
    kmin: int
    lead: tuple[int, ...]  # the problems' leading shape
    n: int
    dtype: torch.dtype  # the working dtype: float64 for float64 input, float32 otherwise
    device: torch.device
    epsilon: float
    chunk_size: int | None

    @property
    def batch(self) -> int:
        return math.prod(self.lead)

    def budgets(self) -> Tensor:
        """Every problem's budget, ``[B]`` int64 on the device."""
        if isinstance(self.k, Tensor):
            return self.k
        return torch.full((self.batch,), self.k, dtype=torch.long, device=self.device)

    def flat(self) -> Tensor:
        """The features (or the precomputed similarity) as ``[B, n, ·]``, not cast."""
        src = self.features if self.features is not None else self.matrix
        assert src is not None
        return src.reshape(self.batch, self.n, src.shape[-1])

    def valid(self) -> Tensor:
        """The mask, ``[B, n]`` bool on the device (all true without one)."""
        if self.mask is not None:
            return self.mask
        return torch.ones(self.batch, self.n, dtype=torch.bool, device=self.device)


def describe(
    features: Tensor | None,
    k: int | Tensor,
    mask: Tensor | None,
    similarity: SimilarityName | Tensor,
    epsilon: float,
    chunk_size: int | None,
) -> Problem:
    """Check the arguments (types, shapes, ranges; not the values) and describe the call."""
    epsilon = check_in_interval("epsilon", epsilon, "(0, 1)")
    chunk_size = check_optional_positive_int("chunk_size", chunk_size)
    matrix: Tensor | None = None
    if isinstance(similarity, Tensor):
        if features is not None:
            raise ValueError(
                "pass either features or a precomputed similarity tensor, not both "
                "(use features=None with similarity=<[..., n, n] tensor>)"
            )
        src = matrix = similarity
        kind = "precomputed"
        lead, n = check_points(src, "similarity")
        if src.shape[-1] != n:
            raise ValueError(
                f"similarity should have shape [..., n, n], but got shape {tuple(src.shape)}"
            )
    else:
        if isinstance(similarity, bool) or similarity not in SIMILARITIES:
            raise ValueError(
                f"similarity should be one of {SIMILARITIES} or a [..., n, n] tensor, "
                f"but got similarity={similarity!r}"
            )
        if features is None:
            raise TypeError("features should be a tensor unless similarity is a precomputed tensor")
        kind, src = similarity, features
        lead, n = check_points(src, "features")
        if src.shape[-1] == 0:
            raise ValueError(
                f"features should have at least one feature per point (d ≥ 1), but got shape "
                f"{tuple(src.shape)}"
            )
    batch = math.prod(lead)
    device = src.device
    flat_mask = None if mask is None else valid_rows(mask, lead, n, device)
    if flat_mask is None and type(k) is int and 0 < k <= n:
        budget: int | Tensor = k  # the common call: nothing to build
        kmax = kmin = k
    else:
        counts = torch.full((batch,), n, device=device) if flat_mask is None else flat_mask.sum(1)
        budget = budgets(k, lead, counts)
        kmax = k if isinstance(k, int) else int(budget.max())
        kmin = k if isinstance(k, int) else int(budget.min())
    return Problem(
        features=None if matrix is not None else src,
        matrix=matrix,
        kind=kind,
        mask=flat_mask,
        k=budget,
        kmax=kmax,
        kmin=kmin,
        lead=lead,
        n=n,
        dtype=src.dtype if src.dtype in (torch.float32, torch.float64) else torch.float32,
        device=device,
        epsilon=epsilon,
        chunk_size=chunk_size,
    )


def problem_name(flat: int, lead: tuple[int, ...]) -> str:
    """Problem ``flat`` (a row of the flattened batch) by its index in the leading shape."""
    if len(lead) <= 1:
        return f"problem {flat}"
    idx = []
    for size in reversed(lead):
        idx.append(flat % size)
        flat //= size
    return f"problem {tuple(reversed(idx))}"


def raise_first_bad_row(row_ok: Tensor, lead: tuple[int, ...], name: str) -> None:
    """Raise for the first ``False`` of ``row_ok`` ``[B, n]``, naming the problem and row."""
    bad = (~row_ok).nonzero()
    if bad.numel():
        b, i = int(bad[0, 0]), int(bad[0, 1])
        raise ValueError(
            f"{name} of {problem_name(b, lead)} contain non-finite values (NaN or inf), "
            f"first in row {i}"
        )


def raise_too_large(flat: int, lead: tuple[int, ...], dtype: torch.dtype, limit: float) -> None:
    """The error for problem ``flat``'s points, whose squared norms exceed ``limit`` for
    similarities computed in ``dtype``."""
    name = str(dtype).removeprefix("torch.")
    hint = ", or pass float64 features" if dtype != torch.float64 else ""
    raise ValueError(
        f"features of {problem_name(flat, lead)} are too large for {name} similarities (a "
        f"squared norm above {limit:g}): rescale them{hint}"
    )


def check_points(src: Any, name: str) -> tuple[tuple[int, ...], int]:
    """Check a ``[..., n, d]`` floating tensor of at least one problem of at least one point;
    return the problems' leading shape and ``n``."""
    if not isinstance(src, Tensor):
        raise TypeError(f"{name} should be a torch.Tensor, but got {type(src).__name__}")
    if src.dim() < 2:
        what = "[..., n, n]" if name == "similarity" else "[..., n, d]"
        raise ValueError(f"{name} should have shape {what}, but got shape {tuple(src.shape)}")
    if not src.is_floating_point():
        raise TypeError(f"{name} should be a floating-point tensor, but got dtype={src.dtype}")
    check_not_meta(name, src)
    lead, n = tuple(src.shape[:-2]), src.shape[-2]
    if n == 0:
        raise ValueError(
            f"every problem needs at least one point, but got shape {tuple(src.shape)}"
        )
    if math.prod(lead) == 0:
        raise ValueError(f"got no problems: leading shape {lead}")
    return lead, n


def check_not_meta(name: str, value: Tensor) -> None:
    if value.is_meta:
        raise ValueError(
            f"{name} is on the meta device, which holds no values: move it to a real device "
            "(cpu or cuda)"
        )


def bool_rows(name: str, value: Any, lead: tuple[int, ...], n: int, device: torch.device) -> Tensor:
    """Check a boolean ``[*lead, n]`` argument; return it as ``[B, n]`` on ``device``."""
    if not isinstance(value, Tensor) or value.dtype != torch.bool:
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name} should be a boolean tensor, but got {got}")
    check_not_meta(name, value)
    if tuple(value.shape) != (*lead, n):
        raise ValueError(
            f"{name} should have shape {(*lead, n)} (the problems' shape and n), "
            f"but got shape {tuple(value.shape)}"
        )
    return value.to(device).reshape(math.prod(lead), n)


def valid_rows(mask: Any, lead: tuple[int, ...], n: int, device: torch.device) -> Tensor:
    """Check ``mask`` (boolean ``[*lead, n]``, selecting a point in every problem; ``None``:
    all) and return it as ``[B, n]`` on ``device``."""
    if mask is None:
        return torch.ones(math.prod(lead), n, dtype=torch.bool, device=device)
    flat_mask = bool_rows("mask", mask, lead, n, device)
    empty = (flat_mask.sum(1) == 0).nonzero()
    if empty.numel():
        raise ValueError(f"mask selects no points in {problem_name(int(empty[0]), lead)}")
    return flat_mask


def budgets(k: int | Tensor, lead: tuple[int, ...], counts: Tensor) -> Tensor:
    """Check ``k`` (an int or a ``lead``-shaped integer tensor) against the problems' valid
    counts; every problem's budget as ``[B]`` int64."""
    batch = counts.shape[0]
    device = counts.device
    if isinstance(k, (bool, np.bool_)):
        raise TypeError(f"k should be an int or an integer tensor, but got k={k!r}")
    if isinstance(k, (int, np.integer)):  # NumPy integers too, as torch accepts them
        k_vec = torch.full((batch,), int(k), dtype=torch.long, device=device)
    elif isinstance(k, Tensor):
        if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise TypeError(f"k should be an integer tensor, but got dtype={k.dtype}")
        check_not_meta("k", k)
        if k.dim() == 0:
            k_vec = k.to(device=device, dtype=torch.long).expand(batch).clone()
        elif tuple(k.shape) == lead:
            k_vec = k.to(device=device, dtype=torch.long).reshape(batch)
        else:
            raise ValueError(
                f"k should be an int or a tensor of the problems' shape {lead}, "
                f"but got shape {tuple(k.shape)}"
            )
    else:
        raise TypeError(f"k should be an int or an integer tensor, but got {type(k).__name__}")
    bad = (k_vec <= 0).nonzero()
    if bad.numel():
        b = int(bad[0])
        raise ValueError(
            f"k should be positive, but got k={int(k_vec[b])} for {problem_name(b, lead)}"
        )
    over = (k_vec > counts).nonzero()
    if over.numel():
        b = int(over[0])
        raise ValueError(
            f"k={int(k_vec[b])} exceeds the {int(counts[b])} valid points of "
            f"{problem_name(b, lead)}"
        )
    return k_vec
