"""``method="triton"``: greedy facility location in Triton kernels, for CUDA tensors.

Two designs, by problem size:

* **fused** (``n ≤ FUSED_MAX_N``): one program per problem computes the ``n×n`` similarity on
  chip (distances accumulated in float64 over the features, with no fused multiply-adds, and
  rounded once to the working dtype, as the PyTorch paths do), runs all ``k`` greedy steps
  (gains, the tie rule of the exact methods, the coverage update) and the cluster sizes
  (``ties="lowest"`` or ``"share"``) without returning to the host: one launch for CREST's
  whole selection.
* **tiled** (larger ``n``): per greedy step, one kernel computes every candidate's gain
  ``Σ_i relu(s(i, j) − cur_i)`` by tiles of rows and columns, recomputing the similarities
  from the features (no ``n×n`` matrix), and a second one per problem finds the pick and
  updates the coverage: two launches per step instead of a dozen PyTorch operations.

Both pick as :mod:`._naive` does (lowest index among the gains within the tie tolerance of the
best) and return the same fields. Named similarities only (``neg_distance``, ``exp``, ``dot``,
``cosine``). Triton is optional; it is imported on first use. With ``TRITON_INTERPRET=1`` the
kernels run on CPU tensors in Triton's interpreter (slowly: for tests).
"""

from __future__ import annotations

import functools
import math
import os
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ._problem import FacilityLocationResult, Problem
from ._torch import cluster_sizes, max_distance, prepare

__all__ = ["FUSED_MAX_N", "available", "fits", "interpreting", "k_center", "solve"]

# Largest problem solved by the fused kernel (its n×n similarity lives in registers).
FUSED_MAX_N = 128
# Rows and columns of a tile of the tiled gain kernel; the chunk of the pick kernel.
_TILE = 64
_CHUNK = 256
_SIMILARITY = {"neg_distance": 0, "exp": 1, "dot": 2, "cosine": 3}


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton() -> Any:
    try:
        import triton
        import triton.language
    except ImportError:
        return None
    return triton


def available() -> bool:
    """Whether Triton imports."""
    return _triton() is not None


def fits(p: Problem) -> bool:
    """Whether ``method="auto"`` runs these kernels on ``p``: CUDA float32 features with a
    named similarity, no ``chunk_size``, at most ``FUSED_MAX_N`` points (the fused kernel:
    one launch instead of a dozen per step; the tiled one does k·n²·d work where the
    incremental greedy does a few n²·d, and neither has been timed on a GPU yet), and Triton
    installed."""
    return (
        p.features is not None
        and p.n <= FUSED_MAX_N
        and p.device.type == "cuda"
        and p.chunk_size is None
        and p.dtype == torch.float32
        and available()
    )


def check_usable(p: Problem) -> None:
    """Refuse, with the reason, a call the kernels cannot run."""
    if not available():
        raise ImportError(
            "method='triton' needs Triton: pip install triton (PyTorch's CUDA wheels on Linux "
            "bring it)"
        )
    if p.features is None:
        raise ValueError(
            "method='triton' works from features with a named similarity, not a precomputed "
            "similarity tensor (use method='naive' or 'incremental')"
        )
    if p.chunk_size is not None:
        raise ValueError("method='triton' takes no chunk_size (its tiles are fixed)")
    if p.dtype != torch.float32:
        raise ValueError(
            "method='triton' computes in float32; for float64 features use method='lazy', "
            "'naive' or 'incremental' (or pass float32 features)"
        )
    if p.device.type == "cuda":
        return
    if p.device.type == "cpu" and interpreting():
        return
    raise ValueError(
        f"method='triton' runs on CUDA tensors, but the features are on {p.device} (use "
        "method='auto'; TRITON_INTERPRET=1 runs the kernels on CPU tensors in Triton's "
        "interpreter, for tests)"
    )


def solve(problem: Problem, *, share: bool = False) -> FacilityLocationResult:
    """Greedy facility location of a described call in the Triton kernels; weights with the
    ``ties`` rule (``share``: 1/t to each of t tied picks)."""
    check_usable(problem)
    p = problem
    kern = _kernels(interpreting() and p.device.type == "cpu")
    if p.n <= FUSED_MAX_N:
        indices, weights, gains, objective = _fused(kern, p, share)
    else:
        indices, weights, gains, objective = _tiled(kern, p, share)
    lead = p.lead
    return FacilityLocationResult(
        indices=indices.reshape(*lead, -1),
        weights=weights.reshape(*lead, -1),
        gains=gains.reshape(*lead, -1),
        objective=objective.to(torch.float32).reshape(lead),
    )


def _fused(kern: Any, p: Problem, share: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One launch: every problem in one program."""
    batch, dev, kmax = p.batch, p.device, p.kmax
    feats = p.flat().detach()
    if feats.dtype != torch.float32:
        feats = feats.to(torch.float32)  # (half precision: computed in float32)
    indices = torch.empty(batch, kmax, dtype=torch.int64, device=dev)
    weights = torch.empty(batch, kmax, dtype=torch.float32, device=dev)
    gains = torch.empty(batch, kmax, dtype=torch.float32, device=dev)
    objective = torch.empty(batch, dtype=torch.float64, device=dev)
    bad = torch.zeros(batch, dtype=torch.int32, device=dev)
    # (the kernels read the mask and the budgets as contiguous rows: a transposed mask or a
    # strided k is copied first; without a mask, a placeholder that is never read)
    mask = p.mask.contiguous() if p.mask is not None else bad
    budgets = p.budgets().contiguous()
    block = max(16, _next_pow2(p.n))
    kern.fused[(batch,)](
        feats, mask, budgets, indices, weights, gains, objective, bad,
        p.n, feats.shape[-1], *feats.stride(), mask.stride(0), kmax,
        KP=max(2, _next_pow2(kmax)), BN=block, SIM=_SIMILARITY[p.kind],
        SHARE=share, HAS_MASK=p.mask is not None, num_warps=4 if block <= 64 else 8,
        enable_fp_fusion=False,
    )  # fmt: skip
    if bool(bad.any()):  # non-finite features or similarities: the PyTorch checks name them
        prepare(p, "stochastic")
        raise ValueError("the features give non-finite similarities in float32")
    return indices, weights, gains, objective


def _tiled(kern: Any, p: Problem, share: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per greedy step, a gain kernel over tiles and a pick kernel per problem."""
    working = prepare(p, "stochastic")  # checked, float32, padding zeroed, cosine normalised
    feats = working.features
    assert feats is not None
    batch, n, dev, kmax = p.batch, p.n, p.device, p.kmax
    mask = working.mask.contiguous()
    budgets = working.k.contiguous()
    base = torch.zeros(batch, dtype=torch.float64, device=dev)
    if p.kind == "neg_distance":
        base = -max_distance(feats, mask, None)
    cur = torch.where(mask, base[:, None], 0.0).to(torch.float32)
    taken = (~mask).to(torch.int8)
    g = torch.empty(batch, n, dtype=torch.float64, device=dev)
    tol = torch.zeros(batch, dtype=torch.float64, device=dev)
    count = mask.sum(1).double()
    indices = torch.empty(batch, kmax, dtype=torch.int64, device=dev)
    gains = torch.empty(batch, kmax, dtype=torch.float32, device=dev)
    sim = 2 if p.kind == "cosine" else _SIMILARITY[p.kind]  # (cosine: normalised, so dot)
    stride = (n * feats.shape[-1], feats.shape[-1], 1)
    feats = feats.contiguous()
    tiles = (n + _TILE - 1) // _TILE
    for step in range(kmax):
        kern.gains[(batch, tiles)](
            feats, mask, cur, taken, g, n, feats.shape[-1], *stride, n, n,
            BI=_TILE, BJ=_TILE, SIM=sim, HAS_MASK=True, enable_fp_fusion=False,
        )  # fmt: skip
        kern.pick[(batch,)](
            feats, mask, budgets, cur, taken, g, tol, count, indices, gains,
            n, feats.shape[-1], *stride, n, n, kmax, step,
            BLOCK=_CHUNK, SIM=sim, HAS_MASK=True, enable_fp_fusion=False,
        )  # fmt: skip
    weights = cluster_sizes(working, indices, share=share).to(torch.float32)
    objective = torch.where(mask, cur.double() - base[:, None], 0.0).sum(1)
    return indices, weights, gains, objective


def k_center(x: Tensor, dist: Tensor, first: Tensor, k: Tensor, kmax: int) -> tuple[Tensor, Tensor]:
    """Farthest-point greedy of :func:`~coreset_sampler.kernels.greedy_k_center` in one launch.

    ``x`` ``[B, n, d]`` float32 (padding zeroed), ``dist`` ``[B, n]`` float32: each point's
    distance to the initial centres (+inf without any), −inf for initial centres and padding
    (overwritten); ``first`` ``[B]`` int64: the first pick of problems without initial centres,
    −1 for the others; ``k`` ``[B]`` int64 budgets. Returns ``(indices, radii)``, ``[B, kmax]``.
    """
    if not available():
        raise ImportError("method='triton' needs Triton: pip install triton")
    if x.dtype != torch.float32:
        raise ValueError("method='triton' computes in float32 (pass float32 features)")
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        raise ValueError(
            f"method='triton' runs on CUDA tensors, but the features are on {x.device} "
            "(TRITON_INTERPRET=1 runs the kernels on CPU tensors in Triton's interpreter)"
        )
    kern = _kernels(interpreting() and x.device.type == "cpu")
    batch, n, d = x.shape
    x = x.contiguous()
    dist = dist.contiguous()
    indices = torch.empty(batch, kmax, dtype=torch.int64, device=x.device)
    radii = torch.empty(batch, kmax, dtype=torch.float32, device=x.device)
    kern.k_center[(batch,)](
        x, dist, first.contiguous(), k.contiguous(), indices, radii, n, d, *x.stride(),
        dist.stride(0), kmax, BLOCK=min(_CHUNK, max(16, _next_pow2(n))), enable_fp_fusion=False,
    )  # fmt: skip
    return indices, radii


def _next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


@functools.cache
def _kernels(interpret: bool) -> SimpleNamespace:
    """The kernels, compiled by Triton for CUDA or wrapped for its CPU interpreter."""
    triton = _triton()
    if triton is None:  # pragma: no cover - check_usable refused first
        raise ImportError("method='triton' needs Triton: pip install triton")
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        wrap: Any = InterpretedFunction
    else:
        wrap = triton.jit
    from . import _triton_kernels as src

    return SimpleNamespace(
        fused=wrap(src.fused),
        gains=wrap(src.gains),
        pick=wrap(src.pick),
        k_center=wrap(src.k_center),
    )
