"""Greedy facility location, batched over many independent problems, on any device.

Facility location scores a set ``S`` of selected points by how well it covers every point::

    F(S) = Σ_i max(base, max_{j∈S} s(i, j))

where ``base`` is 0 for similarities that are non-negative by construction (and floors the
others), and ``s`` is one of the similarities below. ``F`` is monotone submodular, so the greedy
algorithm (Nemhauser, Wolsey and Fisher, 1978), which adds the point of largest marginal gain at
each step, is within ``1 - 1/e`` of the optimum. CRAIG (Mirzasoleiman, Bilmes and Leskovec,
ICML 2020) and CREST (Yang, Kang and Mirzasoleiman, ICML 2023) select their coresets with it and
weight each selected point by the size of its cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple, get_args

import numpy as np
import torch
from torch import Tensor

from coreset_sampler import _lazy
from coreset_sampler._validation import check_positive_int

__all__ = ["FacilityLocationResult", "greedy_facility_location"]

SimilarityName = Literal["neg_distance", "exp", "cosine", "dot"]
Method = Literal["auto", "naive", "incremental", "stochastic", "lazy"]

_SIMILARITIES: tuple[str, ...] = get_args(SimilarityName)
_METHODS: tuple[str, ...] = get_args(Method)

# Up to this feature dimension (and always for float64 input), distances are computed from
# differences; above it from ‖a‖² + ‖b‖² − 2ab in float64, as accurate as float32 and faster.
_DIFF_MAX_DIM = 32
# Elements of one temporary [rows, n] block; bounds the extra memory of the chunked paths.
_CHUNK_ELEMENTS = 1 << 18
# A dense [batch, n, n] similarity is materialised by "auto" only below this many elements.
_DENSE_MAX_ELEMENTS = 1 << 25
# "auto" uses the naive dense greedy for problems up to this size, the incremental one above.
_NAIVE_MAX_N = 128
# Up to this many features the compiled greedy computes distances itself; above, for features
# that are not float64, they come from a float64 matrix product in PyTorch (faster there), when
# the [B, n, n] matrix has at most _DENSE_MAX_ELEMENTS elements; "auto" runs the compiled greedy
# in either case
_LAZY_MAX_D = 64


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


def greedy_facility_location(
    features: Tensor | None,
    k: int | Tensor,
    *,
    mask: Tensor | None = None,
    similarity: SimilarityName | Tensor = "neg_distance",
    method: Method = "auto",
    epsilon: float = 0.1,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> FacilityLocationResult:
    r"""Select ``k`` points per problem by greedy facility location, for many problems at once.

    Maximises :math:`F(S) = \sum_{i} \max(b, \max_{j \in S} s(i, j))` over :math:`|S| = k`,
    adding at each step the point of largest marginal gain (lowest index on ties). The problems
    are the leading dimensions of ``features``; all of them are solved in one call.

    Similarities (``s(i, j)``, and the floor ``b``):

    * ``"neg_distance"``: :math:`C - \lVert x_i - x_j \rVert` with ``C`` the largest distance
      between two valid points of the problem, ``b = 0``. The paper's and CRAIG's choice.
    * ``"exp"``: :math:`\exp(-\lVert x_i - x_j \rVert / d)`, ``b = 0`` (the CREST authors'
      released code).
    * ``"cosine"``: cosine similarity, ``b = 0`` (negative similarities count as 0).
    * ``"dot"``: :math:`x_i^\top x_j`, ``b = 0``.
    * a tensor ``[..., n, n]``: a precomputed similarity, ``similarity[..., i, j] = s(i, j)``
      (``i`` the covered point, ``j`` the candidate; need not be symmetric), ``b = 0``. Pass
      ``features=None`` then.

    Methods (``n`` points, ``k`` picks, ``d`` features, ``B`` problems):

    * ``"naive"``: materialises the ``[B, n, n]`` similarity and recomputes every gain at every
      step: ``O(B·k·n²)`` time, ``O(B·n²)`` memory. Fewest kernel launches; best for small
      problems such as CREST's mini-batch coresets.
    * ``"incremental"``: exact, same picks as naive. Keeps all gains and corrects them only for
      the points whose most similar pick changed, which in practice touches 2 to 5 times ``n``
      rows of the similarity in total instead of ``k·n``. Rows come from the dense matrix when it
      is small or given, and are otherwise recomputed from the features in chunks of
      ``chunk_size`` rows, so memory stays ``O(n·chunk_size + n·d)``.
    * ``"stochastic"``: stochastic greedy (Mirzasoleiman et al., "Lazier than lazy greedy",
      AAAI 2015): each step evaluates ``ceil(n/k · ln(1/epsilon))`` random candidates, so
      ``O(n²·d·ln(1/epsilon))`` time whatever ``k`` is, ``O(n·chunk)`` memory, and a
      ``1 − 1/e − epsilon`` guarantee in expectation. Uses ``generator`` (seed 0 when omitted;
      the global RNG is never touched).
    * ``"lazy"``: exact, same picks as naive, compiled (needs numba: ``pip install
      'coreset-sampler[fast]'``; CPU tensors and named similarities only). All problems are
      solved in one compiled call, one problem at a time, in float64. Up to 2048 points the
      ``n×n`` similarity is built first (each pair once, ``O(n²·d)``) and kept, ``O(n²)``
      memory, then the greedy with lazy evaluation (a candidate's gain, ``O(n)``, is recomputed
      only while its stale upper bound can still reach the best: on random 10-d data about
      ``n/5`` candidates per step at ``n = 50``, ``n/20`` at ``n = 500`` to ``1280``). Above
      2048 points nothing quadratic is stored: the greedy is incremental as above, similarity
      rows recomputed from the features (``O(n·d)`` each, about ``6·n`` rows in all on random
      10-d data), ``O(n·d)`` memory. With ``d > 64``, features that are not float64 and a
      ``[B, n, n]`` matrix of at most ``2**25`` elements, the distances (or dot products) come
      instead from one batched float64 matrix product in PyTorch, of the points centred on
      their mean (``O(B·n²)`` float64 memory), and the same greedy runs on the stored matrix,
      in one thread (lazy up to 2048 points, incremental with rows read from the matrix
      above). Otherwise, with ``torch.get_num_threads() > 1``, a batch with enough work (about
      1.5 ms) is split over that many threads, as are the passes of a problem above 2048 points
      (threads made for the call; the result does not depend on them). No per-step PyTorch
      overhead: the fastest method for CREST's many small problems, and for large ones. The
      first call in a process compiles the kernel (a few seconds; cached on disk after that).
    * ``"auto"``: on CPU with numba installed, lazy (named similarities, no ``chunk_size``)
      for ``d ≤ 64``, and above for features that are not float64 when the ``[B, n, n]``
      matrix has at most ``2**25`` elements; otherwise naive for ``n ≤ 128`` (unless
      ``chunk_size`` is given), else incremental.

    Distances are computed from differences when ``d ≤ 32`` or the features are float64, and
    otherwise through a float64 matrix product (``lazy`` above 64 features: of the points
    centred on their mean), never from a float32 ``‖a‖² + ‖b‖² − 2ab``, whose rounding changes
    picks.

    Args:
        features: ``[..., n, d]`` float tensor; half precision is computed in float32. ``None``
            when ``similarity`` is a tensor.
        k: picks per problem: an ``int``, or an integer tensor of the problems' leading shape.
        mask: optional boolean ``[..., n]``; ``False`` rows are padding: neither candidates nor
            counted, and their features may hold anything.
        similarity: a name from the list above or a precomputed ``[..., n, n]`` tensor.
        method: ``"auto"``, ``"naive"``, ``"incremental"``, ``"stochastic"`` or ``"lazy"``.
        epsilon: accuracy of the stochastic greedy, in ``(0, 1)``.
        generator: random stream of the stochastic greedy (on the features' device).
        chunk_size: rows per block when rows are recomputed from the features. Giving it makes
            ``"incremental"`` and ``"stochastic"`` never materialise an ``n×n`` matrix.

    Returns:
        A :class:`FacilityLocationResult` ``(indices, weights, gains, objective)``.

    Raises:
        TypeError: wrong argument types or dtypes.
        ValueError: wrong shapes, non-finite values, ``k`` out of range for a problem, a mask that
            selects nothing in a problem, an unknown similarity or method; points whose
            similarities would overflow (a squared norm above 1e300 where the compiled kernel
            computes in float64, above a quarter of the dtype's largest value elsewhere: about
            8.5e37 for float32).
            Messages name the argument, the problem index and the value.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.2], [9.0]])
        >>> result = greedy_facility_location(x, 2)
        >>> result.indices.tolist()
        [2, 0]
        >>> result.weights.tolist()
        [3.0, 2.0]

        Many problems at once, with ragged sizes:

        >>> pools = torch.randn(5, 50, 10, generator=torch.Generator().manual_seed(0))
        >>> valid = torch.ones(5, 50, dtype=torch.bool)
        >>> valid[1, 40:] = False
        >>> out = greedy_facility_location(pools, 13, mask=valid)
        >>> out.indices.shape, out.weights.sum(-1).tolist()
        (torch.Size([5, 13]), [50.0, 40.0, 50.0, 50.0, 50.0])
    """
    if method in ("auto", "lazy") and mask is None:
        quick = _quick_lazy(features, k, similarity, epsilon, chunk_size)
        if quick is not None:
            return quick
    if method == "auto" and _lazy_fits(features, similarity, chunk_size):
        method = "lazy"
    problem = _prepare(features, k, mask, similarity, method, epsilon, chunk_size)
    if method == "lazy":
        return _lazy_result(problem)
    if method == "auto":
        small = problem.n <= _NAIVE_MAX_N and problem.dense is not None
        method = "naive" if small else "incremental"
    if method == "stochastic":
        gen = generator
        if gen is None:
            gen = torch.Generator(device=problem.device).manual_seed(0)
        indices, gains, cover = _stochastic(problem, epsilon, gen)
    elif method == "naive":
        indices, gains, cover = _naive(problem)
    else:
        indices, gains, cover = _incremental(problem)
    weights = _cluster_sizes(problem, indices)
    objective = cover.sum(1)
    lead = problem.lead_shape
    out_dtype = problem.dtype
    return FacilityLocationResult(
        indices=indices.reshape(*lead, -1),
        weights=weights.to(out_dtype).reshape(*lead, -1),
        gains=gains.to(out_dtype).reshape(*lead, -1),
        objective=objective.to(out_dtype).reshape(lead),
    )


def _lazy_fits(
    features: Tensor | None, similarity: SimilarityName | Tensor, chunk_size: int | None
) -> bool:
    """Whether ``method="auto"`` runs the compiled lazy greedy."""
    return (
        isinstance(features, Tensor)
        and isinstance(similarity, str)
        and chunk_size is None
        and features.device.type == "cpu"
        and features.dim() >= 2
        and (features.shape[-1] <= _LAZY_MAX_D or _from_products(features))
        and _lazy.available()
    )


def _from_products(features: Tensor) -> bool:
    """Whether ``method="lazy"`` gets its distances from a float64 matrix product: more than
    ``_LAZY_MAX_D`` features, not float64 (whose distances come from differences, as in
    :func:`_distances`), and a ``[B, n, n]`` matrix of at most ``_DENSE_MAX_ELEMENTS``."""
    shape = features.shape
    return (
        shape[-1] > _LAZY_MAX_D
        and features.dtype != torch.float64
        and math.prod(shape[:-1]) * shape[-2] <= _DENSE_MAX_ELEMENTS
    )


def _lazy_result(p: _Problem) -> FacilityLocationResult:
    """``method="lazy"``: every problem in one compiled call (see :mod:`._lazy`)."""
    if p.features is None:
        raise ValueError(
            "method='lazy' works from features with a named similarity, not a precomputed "
            "similarity tensor (use method='naive' or 'incremental')"
        )
    if p.device.type != "cpu":
        raise ValueError(
            f"method='lazy' runs on the CPU, but the features are on {p.device} (use "
            "method='auto', 'naive' or 'incremental' there)"
        )
    if _from_products(p.features):
        raw, dim, eps = _raw_products(p), p.features.shape[-1], torch.finfo(p.dtype).eps
        indices, gains, weights, cover = _lazy.solve_matrix(
            raw.numpy(), p.mask.numpy(), p.k.numpy(), p.kmax, p.kind, dim, eps
        )
        return _lazy_output(indices, gains, weights, cover, p.lead_shape, p.dtype)
    return _solve_features(
        p.features.detach().numpy(), p.mask.numpy(), p.k.numpy(), p.kmax, p.kind, p.dtype,
        p.lead_shape,
    )  # fmt: skip


def _quick_lazy(
    features: Tensor | None,
    k: int | Tensor,
    similarity: SimilarityName | Tensor,
    epsilon: float,
    chunk_size: int | None,
) -> FacilityLocationResult | None:
    """The compiled kernel's most common call (CREST's selection: float32 or float64 CPU
    features with at most ``_LAZY_MAX_D`` features, an ``int`` budget that every problem can
    afford, no mask, a named similarity other than ``cosine``) without building the PyTorch
    problem description: a few tens of µs of a 0.5 ms call. ``None`` for anything else
    (including every input that :func:`_prepare` would reject), which then takes the general
    path; the kernel's own checks (non-finite rows, overflow) raise the same errors."""
    if not (
        isinstance(features, Tensor)
        and _lazy_fits(features, similarity, chunk_size)
        and features.shape[-1] <= _LAZY_MAX_D  # (not the matrix-product route)
        and features.dtype in (torch.float32, torch.float64)
        and similarity in ("neg_distance", "exp", "dot")
        and type(k) is int
        and 0 < k <= features.shape[-2]
        and type(epsilon) in (int, float)
        and 0.0 < epsilon < 1.0
    ):
        return None
    lead = tuple(features.shape[:-2])
    n, d = features.shape[-2:]
    batch = math.prod(lead)
    if batch == 0:
        return None
    return _solve_features(
        features.detach().numpy().reshape(batch, n, d), np.ones((batch, n), dtype=np.bool_),
        np.full(batch, k, dtype=np.int64), k, str(similarity), features.dtype, lead,
    )  # fmt: skip


def _solve_features(
    feats: np.ndarray,
    mask: np.ndarray,
    k: np.ndarray,
    kmax: int,
    kind: str,
    dtype: torch.dtype,
    lead: tuple[int, ...],
) -> FacilityLocationResult:
    """:func:`_lazy.solve` on ``[B, n, d]`` features in ``dtype`` (its errors raised as
    :func:`_prepare` would raise them), as the result's tensors."""
    indices, gains, weights, cover, bad = _lazy.solve(
        feats, mask, k, kmax, kind, torch.finfo(dtype).eps, threads=torch.get_num_threads()
    )
    _raise_kernel_error(bad, tuple(mask.shape), lead)
    return _lazy_output(indices, gains, weights, cover, lead, dtype)


def _raise_kernel_error(bad: int, shape: tuple[int, ...], lead: tuple[int, ...]) -> None:
    """The error for :func:`_lazy.solve`'s ``bad`` code, if any (``shape``: ``[B, n]``)."""
    if bad <= -2:
        _raise_too_large(-2 - bad, lead)
    if bad >= 0:  # the kernel checked finiteness (of valid rows) in place of _prepare
        row_ok = torch.ones(math.prod(shape), dtype=torch.bool)
        row_ok[bad] = False
        _raise_first_bad_row(row_ok.reshape(shape), lead, "features")


def _lazy_output(
    indices: np.ndarray,
    gains: np.ndarray,
    weights: np.ndarray,
    cover: np.ndarray,
    lead: tuple[int, ...],
    dtype: torch.dtype,
) -> FacilityLocationResult:
    """The kernel's outputs as the result's tensors."""
    # (casts and reshapes in NumPy: they cost less than PyTorch's at this size)
    out = np.float32 if dtype == torch.float32 else np.float64
    return FacilityLocationResult(
        indices=torch.from_numpy(indices.reshape(*lead, -1)),
        weights=torch.from_numpy(weights.astype(out, copy=False).reshape(*lead, -1)),
        gains=torch.from_numpy(gains.astype(out, copy=False).reshape(*lead, -1)),
        objective=torch.from_numpy(cover.sum(1).astype(out, copy=False).reshape(lead)),
    )


def _raise_too_large(
    flat: int,
    lead: tuple[int, ...],
    dtype: torch.dtype = torch.float64,
    limit: float = _lazy._NORM_MAX,
) -> None:
    """The error for problem ``flat``'s points, whose squared norms exceed ``limit`` for
    similarities computed in ``dtype`` (by default the compiled kernel's float64 and limit)."""
    name = str(dtype).removeprefix("torch.")
    hint = ", or pass float64 features" if dtype != torch.float64 else ""
    raise ValueError(
        f"features of {_problem_name(flat, lead)} are too large for {name} similarities (a "
        f"squared norm above {limit:g}): rescale them{hint}"
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
        _raise_too_large(int(too_large.nonzero()[0, 0]), lead, flat.dtype, limit)


def _raw_products(p: _Problem) -> Tensor:
    """For :func:`_lazy.solve_matrix`: float64 ``[B, n, n]`` distances (zero diagonal; kinds
    ``neg_distance``, ``exp``) or dot products, from one batched matrix product, padding rows
    zeroed; for distances the points are first centred on their problem's mean (the product's
    rounding grows with the norms, the distances do not). Checks that the valid rows are
    finite, as the compiled kernel does. (The features are float32 here: their float64
    squared norms stay far below the kernel's ``_lazy._NORM_MAX``.)"""
    assert p.features is not None and p.features.dtype == torch.float32
    feats = p.features.detach()
    row_ok = torch.isfinite(feats).all(-1) | ~p.mask
    if not bool(row_ok.all()):
        _raise_first_bad_row(row_ok, p.lead_shape, "features")
    keep = p.mask[..., None]
    x = torch.where(keep, feats, 0.0).double()
    if p.kind in ("cosine", "dot"):
        return torch.bmm(x, x.transpose(-1, -2))
    counts = p.mask.sum(-1, keepdim=True).unsqueeze(-1)  # [B, 1, 1]
    x = torch.where(keep, x - x.sum(-2, keepdim=True) / counts, 0.0)
    sq_norm = (x * x).sum(-1)
    raw = torch.baddbmm(sq_norm.unsqueeze(-2), x, x.transpose(-1, -2), beta=1.0, alpha=-2.0)
    raw.add_(sq_norm.unsqueeze(-1)).clamp_min_(0.0)
    raw.diagonal(dim1=-2, dim2=-1).zero_()  # (the product's rounding leaves tiny values there)
    return raw.sqrt_()


# --------------------------------------------------------------------------------------------
# Input checking and the flattened problem description
# --------------------------------------------------------------------------------------------


class _Problem(NamedTuple):
    # [B, n, d] working dtype, padding rows zeroed but with method "lazy" (None if precomputed)
    features: Tensor | None
    dense: Tensor | None  # [B, n, n] similarity (given, or materialised for small problems)
    mask: Tensor  # [B, n] bool
    k: Tensor  # [B] int64
    kmax: int
    kmin: int  # smallest budget: until then every problem is active
    base: Tensor  # [B] float64: the floor b (or −C for neg_distance, see _pairwise)
    kind: str  # similarity name, or "precomputed"
    lead_shape: tuple[int, ...]
    n: int
    dtype: torch.dtype
    device: torch.device
    chunk_size: int | None


def _problem_name(flat: int, lead: tuple[int, ...]) -> str:
    if len(lead) <= 1:
        return f"problem {flat}"
    idx = []
    for size in reversed(lead):
        idx.append(flat % size)
        flat //= size
    return f"problem {tuple(reversed(idx))}"


def _bool_rows(
    name: str, value: object, lead: tuple[int, ...], n: int, device: torch.device
) -> Tensor:
    """Validate a boolean ``[*lead, n]`` argument and return it as ``[B, n]`` on ``device``."""
    if not isinstance(value, Tensor) or value.dtype != torch.bool:
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name} must be a boolean tensor, but got {got}")
    if tuple(value.shape) != (*lead, n):
        raise ValueError(
            f"{name} must have shape {(*lead, n)} (the problems' shape and n), "
            f"but got shape {tuple(value.shape)}"
        )
    return value.to(device).reshape(math.prod(lead), n)


def _flat_mask(mask: Tensor | None, lead: tuple[int, ...], n: int, device: torch.device) -> Tensor:
    """Validate ``mask`` ``[*lead, n]`` and return it as ``[B, n]`` (all True when None)."""
    if mask is None:
        return torch.ones(math.prod(lead), n, dtype=torch.bool, device=device)
    flat_mask = _bool_rows("mask", mask, lead, n, device)
    empty = (flat_mask.sum(1) == 0).nonzero()
    if empty.numel():
        raise ValueError(f"mask selects no points in {_problem_name(int(empty[0]), lead)}")
    return flat_mask


def _raise_first_bad_row(row_ok: Tensor, lead: tuple[int, ...], name: str) -> None:
    """Raise for the first ``False`` of ``row_ok`` ``[B, n]``, naming the problem and row."""
    bad = (~row_ok).nonzero()
    if bad.numel():
        b, i = int(bad[0, 0]), int(bad[0, 1])
        raise ValueError(
            f"{name} of {_problem_name(b, lead)} contain non-finite values (NaN or inf), "
            f"first in row {i}"
        )


def _budgets(
    k: int | Tensor, lead: tuple[int, ...], counts: Tensor, counts_min: int | None = None
) -> Tensor:
    """Validate ``k`` (an int or a ``lead``-shaped integer tensor) against the valid counts.

    ``counts_min``, when known, is the smallest count (it spares a device sync).
    """
    batch = counts.shape[0]
    device = counts.device
    if counts_min is None:
        counts_min = -1
    if isinstance(k, bool):
        raise TypeError(f"k must be an int or an integer tensor, but got k={k!r}")
    if isinstance(k, int):
        if k <= 0:
            raise ValueError(f"k must be positive, but got k={k} for {_problem_name(0, lead)}")
        k_vec = torch.full((batch,), k, dtype=torch.long, device=device)
        if k <= counts_min:
            return k_vec
    elif isinstance(k, Tensor):
        if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise TypeError(f"k must be an integer tensor, but got dtype={k.dtype}")
        if k.dim() == 0:
            k_vec = k.to(device=device, dtype=torch.long).expand(batch).clone()
        elif tuple(k.shape) == lead:
            k_vec = k.to(device=device, dtype=torch.long).reshape(batch)
        else:
            raise ValueError(
                f"k must be an int or a tensor of the problems' shape {lead}, "
                f"but got shape {tuple(k.shape)}"
            )
    else:
        raise TypeError(f"k must be an int or an integer tensor, but got {type(k).__name__}")
    bad = (k_vec <= 0).nonzero()
    if bad.numel():
        b = int(bad[0])
        raise ValueError(
            f"k must be positive, but got k={int(k_vec[b])} for {_problem_name(b, lead)}"
        )
    over = (k_vec > counts).nonzero()
    if over.numel():
        b = int(over[0])
        raise ValueError(
            f"k={int(k_vec[b])} exceeds the {int(counts[b])} valid points of "
            f"{_problem_name(b, lead)}"
        )
    return k_vec


def _prepare(
    features: Tensor | None,
    k: int | Tensor,
    mask: Tensor | None,
    similarity: SimilarityName | Tensor,
    method: str,
    epsilon: float,
    chunk_size: int | None,
) -> _Problem:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, but got method={method!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a float in (0, 1), but got epsilon={epsilon!r}")
    if not 0.0 < float(epsilon) < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), but got epsilon={epsilon!r}")
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)

    precomputed: Tensor | None = None
    if isinstance(similarity, Tensor):
        if features is not None:
            raise ValueError(
                "pass either features or a precomputed similarity tensor, not both "
                "(use features=None with similarity=<[..., n, n] tensor>)"
            )
        precomputed = similarity
        kind = "precomputed"
        src = precomputed
        if src.dim() < 2 or src.shape[-1] != src.shape[-2]:
            raise ValueError(
                f"similarity must have shape [..., n, n], but got shape {tuple(src.shape)}"
            )
    else:
        if isinstance(similarity, bool) or similarity not in _SIMILARITIES:
            raise ValueError(
                f"similarity must be one of {_SIMILARITIES} or a [..., n, n] tensor, "
                f"but got similarity={similarity!r}"
            )
        kind = similarity
        if features is None:
            raise TypeError("features must be a tensor unless similarity is a precomputed tensor")
        if not isinstance(features, Tensor):
            raise TypeError(f"features must be a torch.Tensor, but got {type(features).__name__}")
        src = features
        if src.dim() < 2:
            raise ValueError(
                f"features must have shape [..., n, d], but got shape {tuple(src.shape)}"
            )
    if not src.is_floating_point():
        name = "similarity" if precomputed is not None else "features"
        raise TypeError(f"{name} must be a floating-point tensor, but got dtype={src.dtype}")

    lead = tuple(src.shape[:-2])
    n = src.shape[-2]
    if n == 0:
        raise ValueError(
            f"every problem needs at least one point, but got shape {tuple(src.shape)}"
        )
    device = src.device
    dtype = src.dtype if src.dtype in (torch.float32, torch.float64) else torch.float32
    batch = math.prod(lead)
    if batch == 0:
        raise ValueError(f"got no problems: leading shape {lead}")

    flat_mask = _flat_mask(mask, lead, n, device)
    if mask is None:
        k_vec = _budgets(k, lead, torch.full((batch,), n, device=device), counts_min=n)
    else:
        k_vec = _budgets(k, lead, flat_mask.sum(1))
    kmax = k if isinstance(k, int) else int(k_vec.max())

    flat = src.reshape(batch, n, src.shape[-1]).to(dtype)
    if method == "lazy" and precomputed is None:
        # the compiled kernel reads only the valid rows and checks that they are finite
        return _Problem(
            features=torch.nn.functional.normalize(flat, dim=-1) if kind == "cosine" else flat,
            dense=None,
            mask=flat_mask,
            k=k_vec,
            kmax=kmax,
            kmin=kmax if isinstance(k, int) else int(k_vec.min()),
            base=torch.zeros(batch, dtype=torch.float64),
            kind=kind,
            lead_shape=lead,
            n=n,
            dtype=dtype,
            device=device,
            chunk_size=chunk_size,
        )
    finite = torch.isfinite(flat)
    if mask is not None or not bool(finite.all()):
        row_ok = finite.all(-1) | ~flat_mask
        if precomputed is not None:
            # a padded row or column may hold anything
            row_ok = (finite | ~flat_mask[:, None, :]).all(-1) | ~flat_mask
        _raise_first_bad_row(row_ok, lead, "similarity" if precomputed is not None else "features")
    if precomputed is None:
        _check_norms(flat, flat_mask, lead)

    keep = flat_mask[:, :, None]
    feats: Tensor | None = None
    dense: Tensor | None = None
    if precomputed is not None:
        dense = torch.where(keep & flat_mask[:, None, :], flat, 0.0)
        base = torch.zeros(batch, dtype=torch.float64, device=device)
    else:
        feats = torch.where(keep, flat, 0.0)
        if kind == "cosine":
            feats = torch.nn.functional.normalize(feats, dim=-1)
        base = torch.zeros(batch, dtype=torch.float64, device=device)
        materialise = method == "naive" or (
            method in ("auto", "incremental")
            and chunk_size is None
            and batch * n * n <= _DENSE_MAX_ELEMENTS
        )
        if materialise:
            dense = _pairwise(feats, feats, kind)
            if mask is not None:
                # padding rows and columns hold 0, as for a precomputed matrix: the solvers rely
                # on it (s(padding, j) itself can be anything, e.g. exp(−‖0 − x_j‖/d) > 0)
                dense = dense.masked_fill_(~(keep & flat_mask[:, None, :]), 0.0)
        if kind == "neg_distance" and dense is not None:
            # base = −C, so that relu(−d_ij − cur_i) starts at C − d_ij, without adding C to
            # every similarity (which would cost precision). Without a dense matrix, the solver
            # finds C in its first pass over the rows.
            base = dense.amin(dim=(1, 2)).double()  # padding holds 0 ≥ −C
    return _Problem(
        features=feats,
        dense=dense,
        mask=flat_mask,
        k=k_vec,
        kmax=kmax,
        kmin=kmax if isinstance(k, int) else int(k_vec.min()),
        base=base,
        kind=kind,
        lead_shape=lead,
        n=n,
        dtype=dtype,
        device=device,
        chunk_size=chunk_size,
    )


# --------------------------------------------------------------------------------------------
# Similarities
# --------------------------------------------------------------------------------------------


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances ``[..., p, q]`` between rows of ``a`` and ``b``, accurately."""
    if a.shape[-1] <= _DIFF_MAX_DIM or a.dtype == torch.float64:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    a64, b64 = a.double(), b.double()
    b_sq = (b64 * b64).sum(-1).unsqueeze(-2)
    if a64.dim() == 2:
        sq = torch.addmm(b_sq, a64, b64.T, beta=1.0, alpha=-2.0)
    else:
        sq = torch.baddbmm(b_sq, a64, b64.transpose(-1, -2), beta=1.0, alpha=-2.0)
    sq.add_((a64 * a64).sum(-1).unsqueeze(-1)).clamp_min_(0.0)
    return sq.to(a.dtype).sqrt_()


def _pairwise(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Similarity ``s(a_i, b_j)`` of ``kind``, in the form the greedy works with.

    ``"neg_distance"`` returns ``−‖a_i − b_j‖``: the constant ``C`` lives in the floor instead.
    """
    if kind == "neg_distance":
        return _distances(a, b).neg_()
    if kind == "exp":
        return _distances(a, b).div_(-float(a.shape[-1])).exp_()
    # "cosine" features are already normalised
    return a @ b.transpose(-1, -2)


def _max_distance(feats: Tensor, mask: Tensor, chunk_size: int | None) -> Tensor:
    """Largest distance between two valid points of each problem, float64 ``[B]``."""
    batch, n, _ = feats.shape
    out = torch.zeros(batch, dtype=torch.float64, device=feats.device)
    rows = chunk_size or max(1, _CHUNK_ELEMENTS // max(1, batch * n))
    for start in range(0, n, rows):
        block = _distances(feats[:, start : start + rows], feats)
        valid = mask[:, start : start + rows, None] & mask[:, None, :]
        block = torch.where(valid, block, 0.0)
        out = torch.maximum(out, block.amax(dim=(1, 2)).double())
    return out


# --------------------------------------------------------------------------------------------
# The three greedy strategies. Each returns (indices [B, kmax], gains [B, kmax] float64,
# coverage [B, n] float64 = max(b, max_{j∈S} s(i, j)) − b for valid rows, 0 on padding).
# ``cur`` is +inf on padding rows, so they never contribute to a gain.
# --------------------------------------------------------------------------------------------


def _initial_state(p: _Problem) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    batch = p.mask.shape[0]
    cur = torch.where(p.mask, p.base[:, None], math.inf)
    indices = torch.full((batch, p.kmax), -1, dtype=torch.long, device=p.device)
    gains = torch.zeros(batch, p.kmax, dtype=torch.float64, device=p.device)
    available = p.mask.clone()  # valid and not yet selected
    return cur, indices, gains, available


def _coverage(p: _Problem, cur: Tensor) -> Tensor:
    """Each valid point's term of the objective, ``max(b, max_{j∈S} s(i, j)) − b``."""
    return torch.where(p.mask, cur - p.base[:, None], 0.0)


def _tie_tolerance(p: _Problem, first: Tensor) -> Tensor:
    """Gains closer than this to the best count as tied: rounding cannot order them.

    ``first`` is each problem's largest gain (the first pick's), so ``first / n`` is the size of
    one term of a gain; a sum of ``n`` such terms is uncertain to about ``sqrt(n)`` roundings.
    """
    count = p.mask.sum(1).double()
    return 16.0 * torch.finfo(p.dtype).eps * first.abs().double() / count.sqrt()


def _first_near_best(gains: Tensor, tol: Tensor) -> Tensor:
    """Lowest index whose gain is within ``tol`` of the row's best: ``[B]``."""
    best = gains.max(1, keepdim=True).values
    near = gains >= best - tol[:, None].to(gains.dtype)
    return near.to(torch.uint8).argmax(1)


def _naive(p: _Problem) -> tuple[Tensor, Tensor, Tensor]:
    """Recompute every gain at every step from the dense similarity (few, large kernels)."""
    assert p.dense is not None
    dense = p.dense
    batch, n = p.mask.shape
    # padding rows hold s = 0 and cur = 0, so they add 0 to the max-form gains below
    cur_w = torch.where(p.mask, p.base[:, None], 0.0).to(dense.dtype)
    taken = ~p.mask  # padding or selected
    # columns s(·, j) as contiguous rows: the matrix itself when symmetric
    by_col = dense if p.kind != "precomputed" else dense.transpose(1, 2).contiguous()
    flat_cols = by_col.reshape(batch * n, n)
    offsets = torch.arange(batch, device=p.device) * n
    uniform = p.kmin == p.kmax
    tol = torch.zeros(batch, 1, dtype=dense.dtype, device=p.device)
    picks: list[Tensor] = []
    gains: list[Tensor] = []
    # Σ_i max(s(i, j), cur_i) is the gain of j plus Σ_i cur_i, a per-problem constant: one pass
    # fewer than Σ_i relu(s(i, j) − cur_i).
    for step in range(p.kmax):
        g = torch.maximum(dense, cur_w[:, :, None]).sum(1).masked_fill_(taken, -math.inf)
        best = g.amax(1, keepdim=True)
        if step == 0:
            tol = _tie_tolerance(p, best.squeeze(1) - cur_w.sum(1))[:, None].to(dense.dtype)
        pick = (g >= best - tol).to(torch.uint8).argmax(1)
        col = flat_cols.index_select(0, offsets + pick)
        gain = g.gather(1, pick[:, None]).squeeze(1) - cur_w.sum(1)
        if uniform:
            taken.scatter_(1, pick[:, None], True)
            cur_w = torch.maximum(cur_w, col)
        else:
            active = step < p.k
            pick = torch.where(active, pick, -1)
            gain = torch.where(active, gain, 0.0)
            taken.scatter_(
                1,
                pick.clamp_min(0)[:, None],
                active[:, None] | taken.gather(1, pick.clamp_min(0)[:, None]),
            )
            cur_w = torch.where(active[:, None], torch.maximum(cur_w, col), cur_w)
        picks.append(pick)
        gains.append(gain)
    indices = torch.stack(picks, 1)
    cover = torch.where(p.mask, cur_w.double() - p.base[:, None], 0.0)
    return indices, torch.stack(gains, 1).double(), cover


def _metric(p: _Problem) -> bool:
    """Whether s(i, j) decreases with a distance, so the triangle inequality prunes work."""
    return p.kind in ("neg_distance", "exp")


def _to_distance(p: _Problem, sim: Tensor) -> Tensor:
    """Invert a metric similarity (float64); ``base`` and below map to the initial radius."""
    if p.kind == "neg_distance":
        return -sim
    scale = float(p.features.shape[-1]) if p.features is not None else 1.0
    return torch.log(sim).mul_(-scale)  # exp(−d/dim); log(0) → inf


def _from_distance(p: _Problem, dist: Tensor) -> Tensor:
    if p.kind == "neg_distance":
        return dist.neg_()
    assert p.features is not None
    return dist.div_(-float(p.features.shape[-1])).exp_()


def _full_gains(p: _Problem, cur: Tensor) -> Tensor:
    """``g_j = Σ_i relu(s(i, j) − cur_i)`` over valid ``i``, from scratch: ``[B, n]`` float64.

    Computed as ``Σ_i max(s(i, j), cur_i) − Σ_i cur_i``: the max does no arithmetic, so only the
    float64 sums round.
    """
    batch = p.mask.shape[0]
    cur_w = torch.where(p.mask, cur, 0.0).to(p.dtype)  # padding rows: s = 0 and cur = 0
    g = torch.zeros(batch, p.n, dtype=torch.float64, device=p.device)
    rows = p.chunk_size or max(1, _CHUNK_ELEMENTS // (p.n * batch))
    for start in range(0, p.n, rows):
        stop = min(p.n, start + rows)
        if p.dense is not None:
            block = p.dense[:, start:stop]
        else:
            assert p.features is not None
            block = _pairwise(p.features[:, start:stop], p.features, p.kind)
            block.masked_fill_(~p.mask[:, start:stop, None], 0.0)
        g += torch.maximum(block, cur_w[:, start:stop, None]).sum(1, dtype=torch.float64)
    return g - cur_w.sum(1, dtype=torch.float64)[:, None]


def _init_neg_distance(p: _Problem) -> tuple[_Problem, Tensor]:
    """One pass for ``C`` (largest distance) and the first gains ``Σ_i (C − d_ij)``.

    Only for a single problem whose points are all valid (see :func:`_compact`).
    """
    assert p.features is not None
    x = p.features[0]
    colsum = torch.zeros(p.n, dtype=torch.float64, device=p.device)
    big = torch.zeros((), dtype=p.dtype, device=p.device)
    rows = p.chunk_size or max(1, _CHUNK_ELEMENTS // p.n)
    for start in range(0, p.n, rows):
        dist = _distances(x[start : start + rows], x)
        colsum += dist.sum(0, dtype=torch.float64)
        big = torch.maximum(big, dist.max())
    c = big.double().reshape(1)
    return p._replace(base=-c), (c * p.n - colsum).unsqueeze(0)


def _incremental(p: _Problem) -> tuple[Tensor, Tensor, Tensor]:
    """Exact greedy that corrects the gains only where a point's best similarity improved.

    After pick ``s``, a point ``i`` whose best similarity rose from ``old_i`` to ``new_i``
    lowers ``g_j`` by ``clamp(s(i, j), old_i, new_i) − old_i``. For metric similarities that is
    non-zero only when ``d(i, j) < r_i`` (``r_i``: distance to ``i``'s previous nearest pick),
    hence only for ``j`` with ``d(j, s) < r_i + d(i, s)``, which late in the greedy is a small
    ball around ``s``. The clamp is exact; gains are accumulated in float64.
    """
    batch = p.mask.shape[0]
    if batch == 1:
        return _compact(p, _incremental_one)
    if p.dense is None:
        # rows are recomputed from features: solve one problem at a time
        return _per_problem(p, _incremental_one)
    g = _full_gains(p, p.base[:, None].expand(batch, p.n))
    return _incremental_loop(p, g, _batched_update)


def _incremental_one(p: _Problem) -> tuple[Tensor, Tensor, Tensor]:
    if p.kind == "neg_distance" and p.dense is None:
        p, g = _init_neg_distance(p)
    else:
        g = _full_gains(p, p.base[:, None].expand(1, p.n))
    update = _pruned_update if _metric(p) else _batched_update
    return _incremental_loop(p, g, update)


_Update = Callable[[_Problem, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], None]


def _incremental_loop(p: _Problem, g: Tensor, update: _Update) -> tuple[Tensor, Tensor, Tensor]:
    cur, indices, gains, available = _initial_state(p)
    first = g.masked_fill(~available, -math.inf).max(1).values
    tol = _tie_tolerance(p, first)
    # the running gains carry float64 rounding: candidates this close are re-evaluated exactly
    loose = torch.maximum(tol, 1e-11 * first.abs())
    for step in range(p.kmax):
        masked = g.masked_fill(~available, -math.inf)
        best = masked.max(1, keepdim=True).values
        near = masked >= best - loose[:, None]
        crowd = int(near.sum(1).max())
        pick = masked.argmax(1) if crowd == 1 else _exact_argmax(p, cur, near, crowd, tol)
        col = _column(p, pick)
        old = cur
        cur, active = _commit_pick(p, step, pick, col, cur, indices, gains, available)
        if step + 1 == p.kmax:
            break
        if step == 0:
            # the first pick moves (nearly) every point: recomputing is as cheap and tidier
            g = _full_gains(p, cur)
            continue
        changed = cur > old if active is None else (cur > old) & active[:, None]
        update(p, g, changed, old, cur, col, available)
    return indices, gains, _coverage(p, cur)


def _batched_update(
    p: _Problem,
    g: Tensor,
    changed: Tensor,
    old: Tensor,
    cur: Tensor,
    col: Tensor,
    available: Tensor,
) -> None:
    """Correct the gains of every problem for its changed rows, with whole rows of ``dense``."""
    b_idx, i_idx = changed.nonzero(as_tuple=True)
    total = b_idx.numel()
    if total == 0:
        return
    lo, hi = old[b_idx, i_idx][:, None], cur[b_idx, i_idx][:, None]
    lo_w, hi_w = lo.to(p.dtype), hi.to(p.dtype)
    chunk = p.chunk_size or max(1, _CHUNK_ELEMENTS // p.n)
    lo_sum = torch.zeros(g.shape[0], dtype=torch.float64, device=p.device)
    lo_sum.index_add_(0, b_idx, lo.squeeze(1))
    for start in range(0, total, chunk):
        sl = slice(start, min(total, start + chunk))
        block = _rows(p, b_idx[sl], i_idx[sl]).clamp_(min=lo_w[sl], max=hi_w[sl])
        if g.shape[0] == 1:
            g[0] -= block.sum(0, dtype=torch.float64)
        else:
            g.index_add_(0, b_idx[sl], block.double(), alpha=-1.0)
    g += lo_sum[:, None]


def _rows(p: _Problem, b_idx: Tensor | None, i_idx: Tensor) -> Tensor:
    """Fresh ``[len, n]`` tensor of similarity rows ``s(i, ·)`` of problems ``b`` (None: 0)."""
    if p.dense is not None:
        if b_idx is None or p.dense.shape[0] == 1:
            return p.dense[0].index_select(0, i_idx)
        return p.dense[b_idx, i_idx]
    assert p.features is not None and p.features.shape[0] == 1
    x = p.features[0]
    return _pairwise(x.index_select(0, i_idx), x, p.kind)


def _pruned_update(
    p: _Problem,
    g: Tensor,
    changed: Tensor,
    old: Tensor,
    cur: Tensor,
    col: Tensor,
    available: Tensor,
) -> None:
    """:func:`_batched_update` for one problem of a metric similarity, skipping far columns.

    Row ``i`` can only change ``g_j`` for ``d(j, s) < r_i + d(i, s)``: with the candidates
    sorted by ``d(·, s)`` that is a prefix, whose length is found by binary search.
    """
    rows = changed[0].nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    dcol = _to_distance(p, col[0])
    lo, hi = old[0, rows], cur[0, rows]
    reach = (_to_distance(p, lo) + dcol[rows]) * (1.0 + 1e-9) + 1e-12
    if 2 * int((dcol <= reach.max()).sum()) >= p.n:
        # the widest row reaches half the points: sorting would not pay
        _batched_update(p, g, changed, old, cur, col, available)
        return
    cand = available[0].nonzero().squeeze(1)
    if cand.numel() == 0:
        return
    cand_d, order = dcol[cand].sort()
    cand = cand[order]
    prefix = torch.searchsorted(cand_d, reach, right=True)
    # widest rows first, so that each chunk's column prefix is set by its first row
    prefix, by_width = prefix.sort(descending=True)
    rows, lo, hi = rows[by_width], lo[by_width], hi[by_width]
    lo_w, hi_w = lo.to(p.dtype)[:, None], hi.to(p.dtype)[:, None]
    widths = prefix.tolist()
    start = 0
    while start < len(widths) and widths[start] > 0:
        width = widths[start]
        stop = min(len(widths), start + max(1, _CHUNK_ELEMENTS // width))
        lo_sum = lo[start:stop].sum()
        if 2 * width >= p.n:
            # whole rows are cheaper than a gather; columns out of reach clamp to exactly 0
            block = _rows(p, None, rows[start:stop])
            block.clamp_(min=lo_w[start:stop], max=hi_w[start:stop])
            g[0] -= block.sum(0, dtype=torch.float64) - lo_sum
        else:
            cols = cand[:width]
            block = _sub_block(p, rows[start:stop], cols)
            block.clamp_(min=lo_w[start:stop], max=hi_w[start:stop])
            g[0].index_add_(0, cols, block.sum(0, dtype=torch.float64) - lo_sum, alpha=-1.0)
        start = stop


def _sub_block(p: _Problem, rows: Tensor, cols: Tensor) -> Tensor:
    """Fresh ``[len(rows), len(cols)]`` block of the similarity of a single problem."""
    if p.dense is not None:
        return p.dense[0][rows[:, None], cols[None, :]]
    assert p.features is not None
    x = p.features[0]
    return _pairwise(x.index_select(0, rows), x.index_select(0, cols), p.kind)


def _compact(
    p: _Problem, solve: Callable[[_Problem], tuple[Tensor, Tensor, Tensor]]
) -> tuple[Tensor, Tensor, Tensor]:
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


def _column(p: _Problem, pick: Tensor) -> Tensor:
    """``s(i, pick_b)`` for every point ``i`` of every problem: ``[B, n]`` float64."""
    if p.dense is not None:
        return p.dense.gather(2, pick.view(-1, 1, 1).expand(-1, p.n, 1)).squeeze(2).double()
    assert p.features is not None
    arange = torch.arange(pick.shape[0], device=p.device)
    chosen = p.features[arange, pick].unsqueeze(1)  # [B, 1, d]
    return _pairwise(p.features, chosen, p.kind).squeeze(-1).double()


def _commit_pick(
    p: _Problem,
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


def _exact_argmax(p: _Problem, cur: Tensor, near: Tensor, crowd: int, tol: Tensor) -> Tensor:
    """Best candidate among ``near`` by exactly evaluated gain; lowest index on ties."""
    # the `crowd` lowest indices flagged near, in increasing order
    keys = torch.where(near, torch.arange(p.n, device=p.device), p.n)
    cand = keys.topk(crowd, dim=1, largest=False).values.sort(dim=1).values  # [B, crowd]
    ok = cand < p.n
    cand = torch.where(ok, cand, 0)
    exact = _gains_of(p, cur, cand).masked_fill_(~ok, -math.inf)
    return cand.gather(1, _first_near_best(exact, tol).unsqueeze(1)).squeeze(1)


def _gains_of(p: _Problem, cur: Tensor, cand: Tensor) -> Tensor:
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
    rows = p.chunk_size or max(1, _CHUNK_ELEMENTS // max(1, batch * count))
    chosen = p.features[arange[:, None], cand]  # [B, T, d]
    for start in range(0, p.n, rows):
        s = _pairwise(p.features[:, start : start + rows], chosen, p.kind).double()
        out += torch.clamp_min(s - cur[:, start : start + rows, None], 0.0).sum(1)
    return out


def _stochastic(
    p: _Problem, epsilon: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    if p.features is not None and p.dense is None and p.features.shape[0] > 1:
        return _per_problem(p, lambda q: _stochastic(q, epsilon, generator))
    if p.kind == "neg_distance" and p.dense is None:
        assert p.features is not None
        p = p._replace(base=-_max_distance(p.features, p.mask, p.chunk_size))
    cur, indices, gains, available = _initial_state(p)
    batch = p.mask.shape[0]
    counts = p.mask.sum(1).double()
    sample = math.ceil(float((counts / p.k.double()).max()) * math.log(1.0 / epsilon))
    sample = max(1, min(sample, p.n))
    for step in range(p.kmax):
        keys = torch.rand(batch, p.n, generator=generator, device=p.device)
        keys = keys.masked_fill_(~available, math.inf)
        cand = keys.topk(sample, dim=1, largest=False).indices  # [B, sample]
        cand_ok = available.gather(1, cand)
        g = _gains_of(p, cur, cand).masked_fill_(~cand_ok, -math.inf)
        pick = cand.gather(1, g.argmax(1, keepdim=True)).squeeze(1)
        col = _column(p, pick)
        cur, _ = _commit_pick(p, step, pick, col, cur, indices, gains, available)
    return indices, gains, _coverage(p, cur)


def _per_problem(
    p: _Problem, solve: Callable[[_Problem], tuple[Tensor, Tensor, Tensor]]
) -> tuple[Tensor, Tensor, Tensor]:
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
        idx, gain, cur = _compact(sub, solve)
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


# --------------------------------------------------------------------------------------------
# Cluster sizes
# --------------------------------------------------------------------------------------------


def _cluster_sizes(p: _Problem, indices: Tensor) -> Tensor:
    """How many valid points have each pick as their most similar pick (ties: lowest index)."""
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
    rows = max(1, _CHUNK_ELEMENTS // max(1, batch * kmax))
    for start in range(0, p.n, rows):
        stop = min(p.n, start + rows)
        if p.dense is not None:
            s = p.dense[:, start:stop].gather(2, safe[:, None, :].expand(-1, stop - start, -1))
        else:
            assert p.features is not None
            chosen = p.features[arange[:, None], safe]  # [B, kmax, d]
            s = _pairwise(p.features[:, start:stop], chosen, p.kind)
        if not all_picked:
            s = s.masked_fill(~sorted_ok[:, None, :], -math.inf)
        assign[:, start:stop] = s.argmax(2)
    counts = torch.zeros(batch, kmax, dtype=torch.float64, device=p.device)
    counts.scatter_add_(1, assign, p.mask.double())
    # back to selection order: position `order[b, r]` of the selection is sorted rank r
    out = torch.zeros_like(counts)
    out.scatter_(1, order, counts)
    return out if all_picked else torch.where(picked, out, 0.0)
