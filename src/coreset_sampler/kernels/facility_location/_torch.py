"""What the PyTorch solvers share: the working problem, similarities, picks and cluster sizes.

The PyTorch solvers (:mod:`._naive`, :mod:`._incremental`, :mod:`._stochastic`) run on any
device. :func:`prepare` checks the values of a described call (finite, not too large for the
working dtype) and builds the :class:`TorchProblem` they work on: the features cast to the
working dtype with padding rows zeroed, and the ``[B, n, n]`` similarity where it is small or
given. Each solver returns ``(indices [B, kmax], gains [B, kmax] float64, coverage [B, n]
float64)``; :func:`result` adds the cluster sizes and the objective.

Distances are computed from differences when ``d ≤ 32`` or the features are float64, otherwise
through a float64 matrix product: never from a float32 ``‖a‖² + ‖b‖² − 2ab``, whose rounding
changes picks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._problem import (
    FacilityLocationResult,
    Problem,
    raise_first_bad_row,
    raise_too_large,
)

# Up to this feature dimension (and always for float64 input), distances are computed from
# differences; above it from ‖a‖² + ‖b‖² − 2ab in float64, as accurate as float32 and faster.
_DIFF_MAX_DIM = 32
# Elements of one temporary [rows, n] block; bounds the extra memory of the chunked paths.
CHUNK_ELEMENTS = 1 << 18
# A dense [batch, n, n] similarity is materialised (by "auto" and "incremental") only below
# this many elements.
DENSE_MAX_ELEMENTS = 1 << 25
# Up to this many features the compiled kernel computes distances itself; above, for features
# that are not float64, they come from a float64 matrix product in PyTorch (faster there), when
# the [B, n, n] matrix has at most DENSE_MAX_ELEMENTS elements
LAZY_MAX_D = 64

Solution = tuple[Tensor, Tensor, Tensor]


class TorchProblem(NamedTuple):
    """The working form of a call, for the PyTorch solvers."""

    # [B, n, d] working dtype, padding rows zeroed but with method "lazy" (None if precomputed)
    features: Tensor | None
    dense: Tensor | None  # [B, n, n] similarity (given, or materialised for small problems)
    mask: Tensor  # [B, n] bool
    k: Tensor  # [B] int64
    kmax: int
    kmin: int  # smallest budget: until then every problem is active
    base: Tensor  # [B] float64: the floor b (or −C for neg_distance, see pairwise)
    kind: str  # similarity name, or "precomputed"
    lead_shape: tuple[int, ...]
    n: int
    dtype: torch.dtype
    device: torch.device
    chunk_size: int | None


def prepare(p: Problem, method: str) -> TorchProblem:
    """Check the values of ``p`` and build the working problem of ``method`` (``"naive"``
    always materialises the ``[B, n, n]`` similarity, ``"incremental"`` when it is small and
    no ``chunk_size`` is given, ``"stochastic"`` never, unless it is given)."""
    precomputed = p.matrix is not None
    flat = p.flat().to(p.dtype).detach()  # (the results never carry a graph, as with "lazy")
    flat_mask = p.valid()
    batch, n, lead = p.batch, p.n, p.lead
    finite = torch.isfinite(flat)
    if p.mask is not None or not bool(finite.all()):
        row_ok = finite.all(-1) | ~flat_mask
        if precomputed:
            # a padded row or column may hold anything
            row_ok = (finite | ~flat_mask[:, None, :]).all(-1) | ~flat_mask
        raise_first_bad_row(row_ok, lead, "similarity" if precomputed else "features")
    if not precomputed:
        _check_norms(flat, flat_mask, lead)

    keep = flat_mask[:, :, None]
    feats: Tensor | None = None
    dense: Tensor | None = None
    base = torch.zeros(batch, dtype=torch.float64, device=p.device)
    if precomputed:
        dense = torch.where(keep & flat_mask[:, None, :], flat, 0.0)
    else:
        feats = torch.where(keep, flat, 0.0)
        if p.kind == "cosine":
            feats = torch.nn.functional.normalize(feats, dim=-1)
        if materialises(p, method):
            dense = pairwise(feats, feats, p.kind)
            if p.mask is not None:
                # padding rows and columns hold 0, as for a precomputed matrix: the solvers rely
                # on it (s(padding, j) itself can be anything, e.g. exp(−‖0 − x_j‖/d) > 0)
                dense = dense.masked_fill_(~(keep & flat_mask[:, None, :]), 0.0)
        if p.kind == "neg_distance" and dense is not None:
            # base = −C, so that relu(−d_ij − cur_i) starts at C − d_ij, without adding C to
            # every similarity (which would cost precision). Without a dense matrix, the solver
            # finds C in its first pass over the rows.
            base = dense.amin(dim=(1, 2)).double()  # padding holds 0 ≥ −C
    return TorchProblem(
        features=feats,
        dense=dense,
        mask=flat_mask,
        k=p.budgets(),
        kmax=p.kmax,
        kmin=p.kmin,
        base=base,
        kind=p.kind,
        lead_shape=lead,
        n=n,
        dtype=p.dtype,
        device=p.device,
        chunk_size=p.chunk_size,
    )


def materialises(p: Problem, method: str) -> bool:
    """Whether :func:`prepare` builds (or is given) the dense ``[B, n, n]`` similarity."""
    return (
        p.matrix is not None
        or method == "naive"
        or (
            method == "incremental"
            and p.chunk_size is None
            and p.batch * p.n * p.n <= DENSE_MAX_ELEMENTS
        )
    )


def result(p: TorchProblem, solution: Solution) -> FacilityLocationResult:
    """The solver's picks, gains and coverage, with the cluster sizes and the objective, in
    the call's shape and dtype."""
    indices, gains, cover = solution
    weights = cluster_sizes(p, indices)
    lead = p.lead_shape
    return FacilityLocationResult(
        indices=indices.reshape(*lead, -1),
        weights=weights.to(p.dtype).reshape(*lead, -1),
        gains=gains.to(p.dtype).reshape(*lead, -1),
        objective=cover.sum(1).to(p.dtype).reshape(lead),
    )


def _check_norms(flat: Tensor, mask: Tensor, lead: tuple[int, ...]) -> None:
    """The PyTorch paths compute in the features' dtype: their squared distances
    (``‖x_i − x_j‖² ≤ 4·max ‖x‖²``), dot products and norms stay finite while every valid
    point's squared norm is at most a quarter of the dtype's largest value; else a
    ``ValueError`` naming the first problem where it is not (float32 overflows from norms of
    about 9e18 on)."""
    limit = torch.finfo(flat.dtype).max / 4
    sq_norm = torch.where(mask, flat.double().square().sum(-1), 0.0)  # [B, n]
    too_large = sq_norm.amax(-1) > limit
    if bool(too_large.any()):
        raise_too_large(int(too_large.nonzero()[0, 0]), lead, flat.dtype, limit)


def distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances ``[..., p, q]`` between rows of ``a`` and ``b``, accurately: in
    float64, rounded once to ``a``'s dtype (a float32 squared difference underflows below
    about 1e-19 per coordinate, which made tiny features all equidistant)."""
    if a.dtype == torch.float64:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    if a.shape[-1] <= _DIFF_MAX_DIM:
        exact = torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")
        return exact.to(a.dtype)
    a64, b64 = a.double(), b.double()
    b_sq = (b64 * b64).sum(-1).unsqueeze(-2)
    if a64.dim() == 2:
        sq = torch.addmm(b_sq, a64, b64.T, beta=1.0, alpha=-2.0)
    else:
        sq = torch.baddbmm(b_sq, a64, b64.transpose(-1, -2), beta=1.0, alpha=-2.0)
    sq.add_((a64 * a64).sum(-1).unsqueeze(-1)).clamp_min_(0.0)
    return sq.sqrt_().to(a.dtype)


def pairwise(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Similarity ``s(a_i, b_j)`` of ``kind``, in the form the greedy works with.

    ``"neg_distance"`` returns ``−‖a_i − b_j‖``: the constant ``C`` lives in the floor instead.
    """
    if kind == "neg_distance":
        return distances(a, b).neg_()
    if kind == "exp":
        return distances(a, b).div_(-float(a.shape[-1])).exp_()
    # "cosine" features are already normalised
    return a @ b.transpose(-1, -2)


def dot_products(a: Tensor, b: Tensor) -> Tensor:
    """Dot products ``[..., p, q]`` of the rows of ``a`` and ``b`` in float64, rounded once to
    ``a``'s dtype, each pair summed in the same order wherever it sits in the output (as the
    compiled kernel sums them: two features at a time). A matrix product rounds a pair
    differently by its place in the output on some CPUs, so that two identical picks were
    not equally similar to a point, and the exact methods assigned the points tied between
    them differently; :func:`cluster_sizes` uses this (the greedy's gains, compared with a
    tolerance, keep the fast product: this costs 5 to 20 times as much)."""
    a64, b64 = a.double().unsqueeze(-2), b.double().unsqueeze(-3)  # [..., p, 1, d], [..., 1, q, d]
    d = a.shape[-1]
    out: Tensor | None = None
    for t in range(0, d - 1, 2):
        pair = a64[..., t] * b64[..., t] + a64[..., t + 1] * b64[..., t + 1]
        out = pair if out is None else out.add_(pair)
    if d % 2:
        last = a64[..., d - 1] * b64[..., d - 1]
        out = last if out is None else out.add_(last)
    assert out is not None  # (d ≥ 1)
    return out.to(a.dtype)


def max_distance(feats: Tensor, mask: Tensor, chunk_size: int | None) -> Tensor:
    """Largest distance between two valid points of each problem, float64 ``[B]``."""
    batch, n, _ = feats.shape
    out = torch.zeros(batch, dtype=torch.float64, device=feats.device)
    rows = chunk_size or max(1, CHUNK_ELEMENTS // max(1, batch * n))
    for start in range(0, n, rows):
        block = distances(feats[:, start : start + rows], feats)
        valid = mask[:, start : start + rows, None] & mask[:, None, :]
        block = torch.where(valid, block, 0.0)
        out = torch.maximum(out, block.amax(dim=(1, 2)).double())
    return out


def initial_state(p: TorchProblem) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    batch = p.mask.shape[0]
    cur = torch.where(p.mask, p.base[:, None], math.inf)
    indices = torch.full((batch, p.kmax), -1, dtype=torch.long, device=p.device)
    gains = torch.zeros(batch, p.kmax, dtype=torch.float64, device=p.device)
    available = p.mask.clone()  # valid and not yet selected
    return cur, indices, gains, available


def coverage(p: TorchProblem, cur: Tensor) -> Tensor:
    """Each valid point's term of the objective, ``max(b, max_{j∈S} s(i, j)) − b``."""
    return torch.where(p.mask, cur - p.base[:, None], 0.0)


def tie_tolerance(p: TorchProblem, first: Tensor) -> Tensor:
    """Gains closer than this to the best count as tied: rounding cannot order them.

    ``first`` is each problem's largest gain (the first pick's), so ``first / n`` is the size of
    one term of a gain; a sum of ``n`` such terms is uncertain to about ``sqrt(n)`` roundings.
    """
    count = p.mask.sum(1).double()
    return 16.0 * torch.finfo(p.dtype).eps * first.abs().double() / count.sqrt()


def first_near_best(gains: Tensor, tol: Tensor) -> Tensor:
    """Lowest index whose gain is within ``tol`` of the row's best: ``[B]``."""
    best = gains.max(1, keepdim=True).values
    near = gains >= best - tol[:, None].to(gains.dtype)
    return near.to(torch.uint8).argmax(1)


def column(p: TorchProblem, pick: Tensor) -> Tensor:
    """``s(i, pick_b)`` for every point ``i`` of every problem: ``[B, n]`` float64."""
    if p.dense is not None:
        return p.dense.gather(2, pick.view(-1, 1, 1).expand(-1, p.n, 1)).squeeze(2).double()
    assert p.features is not None
    arange = torch.arange(pick.shape[0], device=p.device)
    chosen = p.features[arange, pick].unsqueeze(1)  # [B, 1, d]
    return pairwise(p.features, chosen, p.kind).squeeze(-1).double()


def commit_pick(
    p: TorchProblem,
    step: int,
    pick: Tensor,
    col: Tensor,
    cur: Tensor,
    indices: Tensor,
    gains: Tensor,
    available: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Record ``pick`` (for problems whose budget is not spent) and return (new cur, active).

    ``active`` is None when every problem is still within its budget.
    """
    if step < p.kmin:
        gains[:, step] = (col - cur).clamp_min_(0.0).sum(1)  # padding: col − inf → 0
        indices[:, step] = pick
        available.scatter_(1, pick[:, None], False)
        return torch.maximum(cur, col), None
    active = step < p.k
    exact_gain = torch.clamp_min(col - cur, 0.0).sum(1)  # padding: col − inf → clamp 0
    gains[:, step] = torch.where(active, exact_gain, 0.0)
    indices[:, step] = torch.where(active, pick, -1)
    arange = torch.arange(pick.shape[0], device=p.device)
    available[arange[active], pick[active]] = False
    new_cur = torch.where(active[:, None], torch.maximum(cur, col), cur)
    return new_cur, active


def gains_of(p: TorchProblem, cur: Tensor, cand: Tensor) -> Tensor:
    """Exact gains ``Σ_i relu(s(i, c) − cur_i)`` of candidates ``cand`` ``[B, T]``, float64."""
    batch, count = cand.shape
    arange = torch.arange(batch, device=p.device)
    if p.dense is not None:
        cols = p.dense[
            arange[:, None, None], torch.arange(p.n, device=p.device)[:, None], cand[:, None, :]
        ]  # [B, n, T]
        return torch.clamp_min(cols.double() - cur[:, :, None], 0.0).sum(1)
    assert p.features is not None
    out = torch.zeros(batch, count, dtype=torch.float64, device=p.device)
    rows = p.chunk_size or max(1, CHUNK_ELEMENTS // max(1, batch * count))
    chosen = p.features[arange[:, None], cand]  # [B, T, d]
    for start in range(0, p.n, rows):
        s = pairwise(p.features[:, start : start + rows], chosen, p.kind).double()
        out += torch.clamp_min(s - cur[:, start : start + rows, None], 0.0).sum(1)
    return out


def compact(p: TorchProblem, solve: Callable[[TorchProblem], Solution]) -> Solution:
    """Solve a single problem on its valid points only, then map the answer back."""
    valid = p.mask[0]
    if bool(valid.all()):
        return solve(p)
    keep = valid.nonzero().squeeze(1)
    n = keep.numel()
    sub = p._replace(
        features=None if p.features is None else p.features[:, keep],
        dense=None if p.dense is None else p.dense[:, keep][:, :, keep],
        mask=p.mask[:, keep],
        n=n,
    )
    idx, gains, cover = solve(sub)
    idx = torch.where(idx >= 0, keep[idx.clamp_min(0)], -1)
    full = torch.zeros(1, p.n, dtype=cover.dtype, device=p.device)
    full[:, keep] = cover
    return idx, gains, full


def per_problem(p: TorchProblem, solve: Callable[[TorchProblem], Solution]) -> Solution:
    assert p.features is not None
    parts = []
    for b in range(p.features.shape[0]):
        kb = int(p.k[b])
        sub = p._replace(
            features=p.features[b : b + 1],
            mask=p.mask[b : b + 1],
            k=p.k[b : b + 1],
            kmax=kb,
            kmin=kb,
            base=p.base[b : b + 1],
        )
        idx, gain, cur = compact(sub, solve)
        pad = p.kmax - kb
        parts.append(
            (
                torch.nn.functional.pad(idx, (0, pad), value=-1),
                torch.nn.functional.pad(gain, (0, pad), value=0.0),
                cur,
            )
        )
    return (
        torch.cat([q[0] for q in parts]),
        torch.cat([q[1] for q in parts]),
        torch.cat([q[2] for q in parts]),
    )


def cluster_sizes(p: TorchProblem, indices: Tensor, *, share: bool = False) -> Tensor:
    """How many valid points have each pick as their most similar pick (ties: lowest index;
    ``share``: a point equally similar to several picks counts 1/t for each of its t)."""
    batch, kmax = indices.shape
    picked = indices >= 0
    # sort picks by point index so that argmax's first-occurrence rule means lowest index
    keyed = torch.where(picked, indices, p.n)
    sorted_idx, order = keyed.sort(dim=1)
    sorted_ok = sorted_idx < p.n
    all_picked = p.kmin == kmax
    safe = sorted_idx if all_picked else torch.where(sorted_ok, sorted_idx, 0)
    arange = torch.arange(batch, device=p.device)
    assign = torch.empty(batch, p.n, dtype=torch.long, device=p.device)
    shared = torch.zeros(batch, kmax, dtype=torch.float64, device=p.device)
    rows = max(1, CHUNK_ELEMENTS // max(1, batch * kmax))
    # ties are decided exactly here: dot products in one order per pair (dot_products)
    exact_dot = (
        p.features is not None
        and p.kind in ("dot", "cosine")
        and p.features.shape[-1] <= _DIFF_MAX_DIM
    )
    for start in range(0, p.n, rows):
        stop = min(p.n, start + rows)
        if p.dense is not None and not exact_dot:
            s = p.dense[:, start:stop].gather(2, safe[:, None, :].expand(-1, stop - start, -1))
        else:
            assert p.features is not None
            chosen = p.features[arange[:, None], safe]  # [B, kmax, d]
            rows_feats = p.features[:, start:stop]
            s = (
                dot_products(rows_feats, chosen)
                if exact_dot
                else pairwise(rows_feats, chosen, p.kind)
            )
        if not all_picked:
            s = s.masked_fill(~sorted_ok[:, None, :], -math.inf)
        if share:
            tied = (s == s.amax(2, keepdim=True)).double()
            valid = p.mask[:, start:stop, None].double()
            shared += (tied * (valid / tied.sum(2, keepdim=True))).sum(1)
        else:
            assign[:, start:stop] = s.argmax(2)
    counts = torch.zeros(batch, kmax, dtype=torch.float64, device=p.device)
    if share:
        counts = shared
    else:
        counts.scatter_add_(1, assign, p.mask.double())
    # back to selection order: position `order[b, r]` of the selection is sorted rank r
    out = torch.zeros_like(counts)
    out.scatter_(1, order, counts)
    return out if all_picked else torch.where(picked, out, 0.0)


def compiled_route(p: Problem, dense_max: int = DENSE_MAX_ELEMENTS) -> bool:
    """Whether ``p`` is a problem for the compiled kernel, numba aside (decided without
    importing it): CPU features with a named similarity, no ``chunk_size``, at most
    ``LAZY_MAX_D`` features or the matrix-product route (:func:`from_products`)."""
    return (
        p.features is not None
        and p.chunk_size is None
        and p.device.type == "cpu"
        and (p.features.shape[-1] <= LAZY_MAX_D or from_products(p, dense_max))
    )


def from_products(p: Problem, dense_max: int = DENSE_MAX_ELEMENTS) -> bool:
    """Whether the compiled kernel's distances come from a float64 matrix product: more than
    ``LAZY_MAX_D`` features, not float64 (whose distances come from differences), and a
    ``[B, n, n]`` matrix of at most ``dense_max`` elements."""
    assert p.features is not None
    return (
        p.features.shape[-1] > LAZY_MAX_D
        and p.features.dtype != torch.float64
        and p.batch * p.n * p.n <= dense_max
    )
