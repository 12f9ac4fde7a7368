"""``method="lazy"``: the compiled CPU greedy (optional: numba), every problem in one call.

One call solves every problem of a batch in compiled code: similarities in float64, the greedy
and the cluster sizes, so a batch of small problems costs one Python call instead of a dozen
PyTorch operations per greedy step. Up to ``_MATRIX_MAX`` points (2048: a 34 MB float64 matrix)
a problem's similarity matrix is built once and the greedy is lazy (:mod:`._kernel_greedy`);
above, nothing quadratic is stored and the greedy is incremental, rows recomputed from the
features. With more than ``LAZY_MAX_D`` features (not float64) and a small enough batch, the
distances come instead from one float64 matrix product in PyTorch. With several threads allowed,
large batches and problems are split over threads made for the call. Same picks as the naive
greedy; the reasoning is in ``docs/facility_location.md``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from . import _jit
from ._kernel_greedy import (
    buffers,
    correct,
    finish_problem,
    greedy_step,
    solve_all,
    solve_matrix_all,
)
from ._kernel_similarity import BLOCK, NORM_MAX, gains_from_sums, pair_sums
from ._problem import FacilityLocationResult, Problem, raise_first_bad_row, raise_too_large
from ._torch import DENSE_MAX_ELEMENTS, compiled_route, from_products

Array = npt.NDArray[Any]

logger = logging.getLogger(__name__)

_KINDS = {"neg_distance": 0, "exp": 1, "cosine": 2, "dot": 2}
# up to this many points a problem's similarity matrix is stored (float64: 34 MB at 2048) and
# the greedy is lazy; above, it is incremental, similarity rows recomputed from the features
_MATRIX_MAX = 2048
# with several threads, a batch is split over them from this much work on (pairs times d + 10;
# about 1.5 ms on one core here). Starting a thread costs about 0.1 ms; CREST's selection
# (50 problems of 50 points, 1.3e6, 0.5 ms) gained 0–10% from two threads and is not split.
_SPLIT_MIN_WORK = 4_000_000

_MISSING = (
    "method='lazy' needs numba (pip install numba, or pip install 'coreset-sampler[fast]'); "
    "method='auto' uses it when installed and otherwise runs in PyTorch"
)


def available() -> bool:
    """Whether the kernel is compiled (numba imports)."""
    return _jit.ENABLED


def suits(p: Problem) -> bool:
    """Whether ``p`` is a problem for the compiled kernel: CPU features with a named
    similarity, no ``chunk_size``, at most ``LAZY_MAX_D`` features or the matrix-product
    route, and numba installed. ``method="auto"`` runs it once :func:`ready` for the working
    dtype (until then it is compiled in the background while the PyTorch solvers serve)."""
    return compiled_route(p, DENSE_MAX_ELEMENTS) and _jit.ENABLED


# dtypes the kernel is compiled for (or loaded from numba's disk cache), and those being compiled
_compiled_for: set[torch.dtype] = set()
_compiling: dict[torch.dtype, threading.Thread] = {}
_compiling_lock = threading.Lock()


def ready(dtype: torch.dtype, wait: float = 0.0) -> bool:
    """Whether the compiled kernel is ready for ``dtype`` features; if not, start compiling it
    in a background thread (once), wait for it up to ``wait`` seconds, and say whether it is
    ready then: a run would otherwise stall for the compilation (about 20 s on a loaded 2-core
    machine, 0.35 s from numba's disk cache) in a selection. ``method="lazy"`` compiles in the
    caller's thread instead."""
    if dtype in _compiled_for:
        return True
    with _compiling_lock:
        thread = _compiling.get(dtype)
        if thread is None:
            thread = threading.Thread(
                target=_compile_quietly, args=(dtype,), name="coreset_sampler-compile",
                daemon=True,
            )  # fmt: skip
            _compiling[dtype] = thread
            thread.start()
    if wait > 0:
        thread.join(wait)
    return dtype in _compiled_for


def import_error() -> BaseException | None:
    """Why numba did not import (``None`` when it did)."""
    return _jit.IMPORT_ERROR


def compile_now(dtype: torch.dtype = torch.float32) -> None:
    """Compile the kernel for ``dtype`` features (float32 or float64) in this thread: every
    route (stored matrix, rows, matrix products) on tiny problems."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    feats = np.arange(8, dtype=np_dtype).reshape(1, 4, 2) ** 2
    mask, k = np.ones((1, 4), dtype=np.bool_), np.array([2], dtype=np.int64)
    for matrix_max in (_MATRIX_MAX, 0):  # the lazy and the incremental greedy
        solve(feats, mask, k, 2, "neg_distance", 1e-7, matrix_max)
    raw = np.abs(np.subtract.outer(np.arange(4.0), np.arange(4.0)))[None]
    solve_matrix(raw, mask, k, 2, "neg_distance", 2, 1e-7)
    _compiled_for.add(dtype)


def _compile_quietly(dtype: torch.dtype) -> None:
    try:
        compile_now(dtype)
    except Exception:  # (then "auto" keeps the PyTorch solvers; "lazy" raises in the caller)
        logger.warning("compiling the kernel for %s failed", dtype, exc_info=True)


def solve_problem(p: Problem, generator: torch.Generator | None = None) -> FacilityLocationResult:
    """Greedy facility location of a described call, compiled."""
    if p.features is None:
        raise ValueError(
            "method='lazy' works from features with a named similarity, not a precomputed "
            "similarity tensor (use method='naive' or 'incremental')"
        )
    feats = p.features.detach()
    if p.dtype != feats.dtype:
        feats = feats.to(p.dtype)  # (half precision: computed in float32)
    if p.kind == "cosine":
        feats = torch.nn.functional.normalize(feats, dim=-1)
    # (NumPy's reshape costs less than PyTorch's at this size)
    flat = feats.numpy().reshape(p.batch, p.n, feats.shape[-1])
    mask = np.ones((p.batch, p.n), dtype=np.bool_) if p.mask is None else p.mask.numpy()
    k = np.full(p.batch, p.k, dtype=np.int64) if isinstance(p.k, int) else p.k.numpy()
    eps = torch.finfo(p.dtype).eps
    if _from_products(p):
        raw = _raw_products(p._replace(features=torch.from_numpy(flat)), mask)
        dim = flat.shape[-1]
        indices, gains, weights, cover = solve_matrix(
            raw.numpy(), mask, k, p.kmax, p.kind, dim, eps
        )
        return _output(indices, gains, weights, cover, p.lead, p.dtype)
    indices, gains, weights, cover, bad = solve(
        flat, mask, k, p.kmax, p.kind, eps, threads=torch.get_num_threads()
    )
    if bad <= -2:
        raise_too_large(-2 - bad, p.lead, torch.float64, NORM_MAX)
    if bad >= 0:  # the kernel checked finiteness (of valid rows) in place of the PyTorch paths
        row_ok = torch.ones(p.batch * p.n, dtype=torch.bool)
        row_ok[bad] = False
        raise_first_bad_row(row_ok.reshape(p.batch, p.n), p.lead, "features")
    return _output(indices, gains, weights, cover, p.lead, p.dtype)


def _output(
    indices: Array, gains: Array, weights: Array, cover: Array, lead: tuple[int, ...],
    dtype: torch.dtype,
) -> FacilityLocationResult:  # fmt: skip
    """The kernel's outputs as the result's tensors (casts and reshapes in NumPy: they cost
    less than PyTorch's at this size)."""
    out = np.float32 if dtype == torch.float32 else np.float64
    return FacilityLocationResult(
        indices=torch.from_numpy(indices.reshape(*lead, -1)),
        weights=torch.from_numpy(weights.astype(out, copy=False).reshape(*lead, -1)),
        gains=torch.from_numpy(gains.astype(out, copy=False).reshape(*lead, -1)),
        objective=torch.from_numpy(cover.sum(1).astype(out, copy=False).reshape(lead)),
    )


def _from_products(p: Problem) -> bool:
    """Whether the distances come from a float64 matrix product (:func:`._torch.from_products`,
    with this module's ``DENSE_MAX_ELEMENTS``)."""
    return from_products(p, DENSE_MAX_ELEMENTS)


def _raw_products(p: Problem, valid: Array) -> Tensor:
    """For :func:`_lazy.solve_matrix`: float64 ``[B, n, n]`` distances (zero diagonal; kinds
    ``neg_distance``, ``exp``) or dot products, from one batched matrix product, padding rows
    zeroed; for distances the points are first centred on their problem's mean (the product's
    rounding grows with the norms, the distances do not). Checks that the valid rows are
    finite, as the compiled kernel does. (The features are float32 here: their float64
    squared norms stay far below the kernel's ``NORM_MAX``.)"""
    assert p.features is not None and p.features.dtype == torch.float32
    feats = p.features.detach()
    mask = torch.from_numpy(valid)
    row_ok = torch.isfinite(feats).all(-1) | ~mask
    if not bool(row_ok.all()):
        raise_first_bad_row(row_ok, p.lead, "features")
    keep = mask[..., None]
    x = torch.where(keep, feats, 0.0).double()
    if p.kind in ("cosine", "dot"):
        return torch.bmm(x, x.transpose(-1, -2))
    counts = mask.sum(-1, keepdim=True).unsqueeze(-1)  # [B, 1, 1]
    x = torch.where(keep, x - x.sum(-2, keepdim=True) / counts, 0.0)
    sq_norm = (x * x).sum(-1)
    raw = torch.baddbmm(sq_norm.unsqueeze(-2), x, x.transpose(-1, -2), beta=1.0, alpha=-2.0)
    raw.add_(sq_norm.unsqueeze(-1)).clamp_min_(0.0)
    raw.diagonal(dim1=-2, dim2=-1).zero_()  # (the product's rounding leaves tiny values there)
    return raw.sqrt_()


def _kernel() -> Any:
    """The compiled kernel (the first call in a process compiles it, or loads it from numba's
    disk cache)."""
    if not _jit.ENABLED:
        raise ImportError(_MISSING) from _jit.IMPORT_ERROR
    return solve_all


def solve(
    feats: Array,
    mask: Array,
    k: Array,
    kmax: int,
    kind: str,
    eps: float,
    matrix_max: int = _MATRIX_MAX,
    threads: int = 1,
) -> tuple[Array, Array, Array, Array, int]:
    """Greedy facility location on every problem of ``feats`` ``[B, n, d]`` (float32 is read as
    it is, other dtypes are cast to float64; the kernel computes in float64).

    ``mask`` ``[B, n]`` bool, ``k`` ``[B]`` int64 budgets (each at most its valid count), ``kind``
    a similarity name (``"cosine"`` features already normalised), ``eps`` the machine epsilon of
    the working dtype (for the tie tolerance), ``matrix_max`` the largest problem whose
    similarity matrix is stored, ``threads`` how many threads the work may be split over (see
    below). Returns ``indices`` ``[B, kmax]`` int64 (−1 past a budget), ``gains``
    ``[B, kmax]``, ``weights`` ``[B, kmax]`` (cluster sizes), ``cover`` ``[B, n]`` (each valid
    point's term of the objective), all float64, and ``bad``: −1, or (then the outputs are
    incomplete) ``b·n + i`` for the first valid row with a non-finite value, or ``−2 − b`` when
    problem ``b``'s points are too large for float64 similarities (see :func:`solve_all`).

    With ``threads > 1``, a batch with enough work (``_SPLIT_MIN_WORK``) is cut into
    consecutive runs of problems of about equal work, one per thread, and each problem above
    ``matrix_max`` has its passes over the points split (:func:`_incremental_threads`). The
    threads are made for the call and joined before it returns; the compiled functions release
    the GIL. The results do not depend on ``threads``.
    """
    kernel = _kernel()
    batch, n, d = feats.shape
    # (a float32 copy costs more than the kernel's own reading of it, for CREST's selection)
    feats = np.ascontiguousarray(
        feats, dtype=feats.dtype if feats.dtype == np.float32 else np.float64
    )
    mask = np.ascontiguousarray(mask, dtype=np.bool_)
    k = np.ascontiguousarray(k, dtype=np.int64)
    indices = np.full((batch, kmax), -1, dtype=np.int64)
    gains = np.zeros((batch, kmax), dtype=np.float64)
    weights = np.zeros((batch, kmax), dtype=np.float64)
    cover = np.zeros((batch, n), dtype=np.float64)
    code = _KINDS[kind]
    later = np.zeros(batch, dtype=np.bool_)  # problems left to the threaded loop below
    any_later = False
    parts = 1
    if threads > 1 and (n > matrix_max or batch * n * (n + 1) // 2 * (d + 10) >= _SPLIT_MIN_WORK):
        counts = mask.sum(1)
        later = counts > matrix_max
        any_later = bool(later.any())
        # work of the problems solved in the kernel call: their pairs times (d + 10)
        work = np.where(later, 0, counts * (counts + 1) // 2 * (d + 10)).cumsum()
        if batch > 1 and work[-1] >= _SPLIT_MIN_WORK:
            parts = min(threads, batch)
    if parts == 1:
        args = (feats, mask, k, code, float(eps), int(matrix_max), later)
        bad = int(kernel(*args, indices, gains, weights, cover))
    else:

        def part(start: int, stop: int) -> int:
            sl = slice(start, stop)
            bad = kernel(
                feats[sl], mask[sl], k[sl], code, float(eps), int(matrix_max), later[sl],
                indices[sl], gains[sl], weights[sl], cover[sl],
            )  # fmt: skip
            return -1 if bad == -1 else int(bad) + start * n if bad >= 0 else int(bad) - start

        cuts = [0, *np.searchsorted(work, work[-1] * np.arange(1, parts) / parts).tolist(), batch]
        found = [b for b in _run(None, [partial(part, a, b) for a, b in pairwise(cuts)]) if b != -1]
        # the error of the first problem with one
        bad = min(found, key=lambda error: error // n if error >= 0 else -2 - error, default=-1)
    if bad == -1 and any_later:
        with ThreadPoolExecutor(threads - 1, thread_name_prefix="coreset_sampler") as pool:
            for b in np.flatnonzero(later):
                rows = np.flatnonzero(mask[b])
                xt = np.ascontiguousarray(feats[b, rows].T, dtype=np.float64)
                _incremental_threads(
                    xt, code, int(k[b]), float(eps), rows, indices[b], gains[b], weights[b],
                    cover[b], pool, threads,
                )  # fmt: skip
    return indices, gains, weights, cover, bad


def solve_matrix(
    raw: Array,
    mask: Array,
    k: Array,
    kmax: int,
    kind: str,
    dim: int,
    eps: float,
    matrix_max: int = _MATRIX_MAX,
) -> tuple[Array, Array, Array, Array]:
    """The greedy of :func:`solve` on precomputed ``raw`` ``[B, n, n]`` float64 values
    (overwritten): distances for ``neg_distance`` and ``exp`` (with a zero diagonal), dot
    products for ``cosine`` and ``dot``; only the lower triangle (with the diagonal) of each
    problem's valid rows and columns (``mask``) is used. ``dim`` is the features' dimension
    (for ``exp``). Each problem's similarity is made from them in place as :func:`solve` makes
    it from the features (symmetric: the upper triangle mirrors the lower), then the lazy
    greedy runs on it up to ``matrix_max`` points, the incremental one above (rows read from
    the matrix, ``O(m)`` each). Returns ``indices``, ``gains``, ``weights`` and ``cover`` as
    :func:`solve` does; the caller checks that the values are finite."""
    _kernel()
    batch, n, _ = raw.shape
    indices = np.full((batch, kmax), -1, dtype=np.int64)
    gains = np.zeros((batch, kmax), dtype=np.float64)
    weights = np.zeros((batch, kmax), dtype=np.float64)
    cover = np.zeros((batch, n), dtype=np.float64)
    solve_matrix_all(
        np.ascontiguousarray(raw, dtype=np.float64), np.ascontiguousarray(mask, dtype=np.bool_),
        np.ascontiguousarray(k, dtype=np.int64), _KINDS[kind], int(dim), float(eps),
        int(matrix_max), indices, gains, weights, cover,
    )  # fmt: skip
    return indices, gains, weights, cover


def _incremental_threads(
    xt: Array,
    kind: int,
    budget: int,
    eps: float,
    rows: Array,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
    pool: ThreadPoolExecutor,
    threads: int,
) -> None:
    """:func:`first_gains` and :func:`incremental_greedy` with their passes over the points split
    over ``threads`` threads (this one and the pool's): the first gains' rows in parts of equal
    pair counts, each step's corrections by columns. The compiled functions release the GIL.
    The picks and gains are the same as with one thread."""
    m = xt.shape[1]
    cuts = [0] + [min(m, int(m * math.sqrt(t / threads))) for t in range(1, threads)] + [m]
    sums = np.zeros((threads, m), dtype=np.float64)
    tops = _run(
        pool,
        [partial(pair_sums, xt, kind, cuts[t], cuts[t + 1], sums[t]) for t in range(threads)],
    )
    top = max(tops)
    g, err = gains_from_sums(sums.sum(0), top, kind)
    state = buffers(g, err, budget)
    cur, near, owner, taken, row, cand, exact, moved, lo, hi, picks, scalars = state
    width = -(-m // threads)
    width = -(-width // 8) * 8  # (any split gives the same gains: each column's own order)
    tasks = []
    for start in range(0, m, width):
        acc = np.empty((4, BLOCK), dtype=np.float64)
        tasks.append((acc, start, min(m, start + width)))
    for step in range(budget):
        count = greedy_step(
            xt, kind, top, eps, step, g, gains, cur, near, owner, taken, row, cand, exact,
            moved, lo, hi, picks, scalars,
        )  # fmt: skip
        if step + 1 < budget and count > 0:
            _run(
                pool,
                [
                    partial(correct, xt, kind, top, moved, lo, hi, count, g, acc, start, stop)
                    for acc, start, stop in tasks
                ],
            )
    finish_problem(picks, budget, rows, cur, owner, indices, weights, cover)


def _run(pool: ThreadPoolExecutor | None, tasks: list[Callable[[], Any]]) -> list[Any]:
    """Run ``tasks[1:]`` on the pool (or, without one, each in a thread started for it) and
    ``tasks[0]`` in this thread; their results in order (a task's exception is raised here)."""
    if pool is not None:
        futures = [pool.submit(task) for task in tasks[1:]]
        results = [tasks[0]()]
        results.extend(future.result() for future in futures)
        return results
    out: list[Any] = [None] * len(tasks)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            out[t] = tasks[t]()
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    started = [threading.Thread(target=run, args=(t,)) for t in range(1, len(tasks))]
    for thread in started:
        thread.start()
    run(0)
    for thread in started:
        thread.join()
    if errors:
        raise errors[0]
    return out
