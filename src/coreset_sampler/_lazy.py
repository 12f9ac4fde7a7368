"""Compiled CPU greedy for ``greedy_facility_location(method="lazy")`` (optional: numba).

One call solves every problem of a batch in compiled code: similarities in float64, the greedy,
and the cluster sizes, so a batch of small problems costs one Python call instead of a dozen
PyTorch operations per greedy step. With several threads allowed, larger batches and problems
are split over threads made for the call (see :func:`solve`).

**Two greedy strategies, both exact.** Up to ``matrix_max`` points (``_MATRIX_MAX``, 2048: a
34 MB float64 matrix) the problem's ``[m, m]`` similarity matrix is built once (each pair
computed once and mirrored) and the greedy uses lazy evaluation on it. Above, nothing quadratic
is stored and the greedy is incremental: every candidate's gain is kept and corrected after each
pick for the points whose best similarity rose, their similarity rows recomputed from the
features (``O(m·d)`` each; on random 10-d data about ``6·m`` rows in all). Memory is then
``O(m·d)``. Above about 2000 points the incremental greedy is the faster of the two (it does not
build the matrix, and its work hardly depends on the number of picks).

**Same picks as the naive greedy.** Lazy evaluation keeps an upper bound per candidate (its last
exact gain; gains only shrink, F being submodular; for ``neg_distance`` and ``exp`` also lowered
after each pick by what the pick certainly removes from it, see :func:`_tighten`). At each step
the candidate with the largest bound is evaluated exactly (a float64 sum over the points), then,
in index order, every other candidate whose bound still reaches ``best − tol``, ``best`` the
largest gain evaluated so far; among the candidates evaluated in this step, the lowest index
within ``tol`` of the best is picked. A candidate left out has a bound, hence a gain, below
``best − tol`` (``best`` only grows): the pick is the naive greedy's under the same tie rule.
The incremental greedy's kept gains carry rounding error (bounded as it goes, see
:func:`_step`): it evaluates exactly, in the same way, every candidate within ``tol`` plus twice
that bound of the largest kept gain. Every exact gain of a call is summed the same way
(vectorised, with reassociation) from similarities computed by the same code (``exp`` included:
the kernel's own, vectorised, less than 1 ulp from the exact value), and gains within ``tol``
count as tied, so both strategies pick alike. Cluster sizes are kept up to date as the picks
come (each point's most similar pick so far, ties to the lowest index).

numba is imported on first use; :func:`available` says whether it can be.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

_KINDS = {"neg_distance": 0, "exp": 1, "cosine": 2, "dot": 2}
# internal kind: similarity rows read from a stored symmetric matrix (solve_matrix, above
# matrix_max), in place of the features
_STORED = 3
# up to this many points a problem's similarity matrix is stored (float64: 34 MB at 2048) and
# the greedy is lazy; above, it is incremental, similarity rows recomputed from the features
_MATRIX_MAX = 2048
# columns per block when rows are recomputed (four rows of this many float64 stay in L1)
_BLOCK = 512
# with several threads, a batch is split over them from this much work on (pairs times d + 10;
# about 1.5 ms on one core here). Starting a thread costs about 0.1 ms; CREST's selection
# (50 problems of 50 points, 1.3e6, 0.5 ms) gained 0–10% from two threads and is not split.
_SPLIT_MIN_WORK = 4_000_000
# the kernel computes in float64 whatever the input's dtype: its rounding bounds use this
_EPS64 = 2.0**-52
# ... and a point's squared norm must stay below this, so that no squared distance (at most 4×),
# dot product or sum of m of them overflows
_NORM_MAX = 1e300
# exp(x), x ≤ 0, as the kernel computes it (:func:`_exp_reduce`): x = k·ln 2 + r, |r| ≤ ln 2 / 2
# (Cody–Waite: k·_LN2_HI is exact for |k| < 2^21), exp(r) from its Taylor polynomial
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
# x/ln 2 + 1.5·2^52 holds round(x/ln 2) in its low bits (and as a float, minus the shift)
_SHIFT = 6755399441055744.0
_SHIFT_BITS = int(np.float64(_SHIFT).view(np.int64))
# how many values :func:`_exp_triangle` packs together (32 KB; a whole row if it is longer)
_PACK = 4096
# exp of anything below this is 0 in float64 (and 2^k of its k is a product of two normals)
_EXP_LOW = -746.0
# helpers whose loops are reductions: reassociation lets them vectorise
_REDUCTIONS = ("_gain", "_gain_at", "_sqrt_max", "_sqrt_rows", "_finish", "_mirror", "_largest")
# helpers whose multiply-adds may be fused (the exp polynomial: fewer operations, less rounding)
_CONTRACTED = ("_exp_reduce",)
_HELPERS = (
    "_exp_reduce", "_exp_neg", "_exp_triangle", "_raw", "_sqrt_max", "_sqrt_rows", "_finish",
    "_mirror", "_similarity", "_valid_rows", "_largest", "_gain", "_gain_at", "_tie_tolerance",
    "_tighten", "_take", "_finish_problem", "_greedy",
    "_first_gains", "_pair_sums", "_gains_from_sums", "_sim_row", "_buffers", "_step", "_reach",
    "_raw_block", "_clamp_into", "_correct", "_incremental",
)  # fmt: skip
_kernel: Any = None
_matrix_kernel: Any = None
_import_error: BaseException | None = None


def available() -> bool:
    """Whether numba can be imported (the kernel compiles on the first call)."""
    try:
        _compiled()
    except ImportError:
        return False
    return True


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
    problem ``b``'s points are too large for float64 similarities (see :func:`_solve_all`).

    With ``threads > 1``, a batch with enough work (``_SPLIT_MIN_WORK``) is cut into
    consecutive runs of problems of about equal work, one per thread, and each problem above
    ``matrix_max`` has its passes over the points split (:func:`_incremental_threads`). The
    threads are made for the call and joined before it returns; the compiled functions release
    the GIL. The results do not depend on ``threads``.
    """
    kernel = _compiled()
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
    _compiled()
    batch, n, _ = raw.shape
    indices = np.full((batch, kmax), -1, dtype=np.int64)
    gains = np.zeros((batch, kmax), dtype=np.float64)
    weights = np.zeros((batch, kmax), dtype=np.float64)
    cover = np.zeros((batch, n), dtype=np.float64)
    _matrix_kernel(
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
    """:func:`_first_gains` and :func:`_incremental` with their passes over the points split
    over ``threads`` threads (this one and the pool's): the first gains' rows in parts of equal
    pair counts, each step's corrections by columns. The compiled functions release the GIL.
    The picks and gains are the same as with one thread."""
    m = xt.shape[1]
    cuts = [0] + [min(m, int(m * math.sqrt(t / threads))) for t in range(1, threads)] + [m]
    sums = np.zeros((threads, m), dtype=np.float64)
    tops = _run(
        pool,
        [partial(_pair_sums, xt, kind, cuts[t], cuts[t + 1], sums[t]) for t in range(threads)],
    )
    top = max(tops)
    g, err = _gains_from_sums(sums.sum(0), top, kind)
    state = _buffers(g, err, budget)
    cur, near, owner, taken, row, cand, exact, moved, lo, hi, picks, scalars = state
    width = -(-m // threads)
    width = -(-width // 8) * 8  # (any split gives the same gains: each column's own order)
    tasks = []
    for start in range(0, m, width):
        acc = np.empty((4, _BLOCK), dtype=np.float64)
        tasks.append((acc, start, min(m, start + width)))
    for step in range(budget):
        count = _step(
            xt, kind, top, eps, step, g, gains, cur, near, owner, taken, row, cand, exact,
            moved, lo, hi, picks, scalars,
        )  # fmt: skip
        if step + 1 < budget and count > 0:
            _run(
                pool,
                [
                    partial(_correct, xt, kind, top, moved, lo, hi, count, g, acc, start, stop)
                    for acc, start, stop in tasks
                ],
            )
    _finish_problem(picks, budget, rows, cur, owner, indices, weights, cover)


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


def _compiled() -> Any:
    global _kernel, _import_error
    if _kernel is not None:
        return _kernel
    if _import_error is not None:
        raise ImportError(_MISSING) from _import_error
    try:
        import numba
    except Exception as exc:  # not installed, or broken (e.g. built for another NumPy)
        _import_error = exc
        raise ImportError(_MISSING) from exc
    # the helpers are looked up in this module's globals when _solve_all compiles: swap in
    # their compiled versions first
    module = globals()
    for name in _HELPERS:
        # reductions may be reassociated (and assume no NaN: the kernel checks its input first)
        fast: bool | set[str] = False
        if name in _REDUCTIONS:
            fast = {"reassoc", "nsz", "nnan"}
        elif name in _CONTRACTED:
            fast = {"contract"}
        jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=fast)
        module[name] = jit(module[name])
    global _matrix_kernel
    _matrix_kernel = numba.njit(cache=True, nogil=True, error_model="numpy")(_solve_matrix_all)
    _kernel = numba.njit(cache=True, nogil=True, error_model="numpy")(_solve_all)
    return _kernel


_MISSING = (
    "method='lazy' needs numba (pip install numba, or pip install 'coreset-sampler[fast]'); "
    "method='auto' uses it when installed and otherwise runs in PyTorch"
)


# --------------------------------------------------------------------------- the kernel
# Plain Python over NumPy arrays, compiled by numba.njit; it also runs uncompiled (slowly),
# which the tests use to check it without numba.


def _solve_all(
    feats: Array,
    mask: Array,
    k: Array,
    kind: int,
    eps: float,
    matrix_max: int,
    later: Array,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> int:
    """Solve every problem but those flagged ``later`` (whose values are checked all the same);
    return −1, or (then the outputs are incomplete) ``b·n + i`` for the first valid row ``i``
    of problem ``b`` with a non-finite value, or ``−2 − b`` for a problem ``b`` whose points
    are too large for float64 similarities (a squared norm above ``_NORM_MAX``)."""
    batch, n, d = feats.shape
    rows = np.empty(n, dtype=np.int64)
    for b in range(batch):
        m = _valid_rows(mask[b], rows)
        xt = np.empty((d, m), dtype=np.float64)  # by column: the inner loops run over points
        # whether a point's squared norm is NaN (a NaN value), infinite (an infinite value, or
        # an overflow) or above _NORM_MAX: one comparison per point, no chain of adds through
        # all the values
        large = False
        for a in range(m):
            square = 0.0
            for t in range(d):
                value = np.float64(feats[b, rows[a], t])  # (a float32 square may overflow)
                xt[t, a] = value
                square += value * value
            large |= not square <= _NORM_MAX
        if large:
            for a in range(m):
                for t in range(d):
                    if not math.isfinite(xt[t, a]):
                        return int(b * n + rows[a])
            return -2 - b
        if later[b]:
            continue
        if m <= matrix_max:
            sim, first = _similarity(xt, kind, eps)
            _greedy(
                sim, first, int(k[b]), eps, kind != 2, rows[:m],
                indices[b], gains[b], weights[b], cover[b],
            )  # fmt: skip
        else:
            first, top, err = _first_gains(xt, kind)
            _incremental(
                xt, kind, top, first, err, int(k[b]), eps, rows[:m],
                indices[b], gains[b], weights[b], cover[b],
            )  # fmt: skip
    return -1


def _solve_matrix_all(
    raw: Array,
    mask: Array,
    k: Array,
    kind: int,
    dim: int,
    eps: float,
    matrix_max: int,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> None:
    """:func:`solve_matrix`'s compiled loop over the problems."""
    batch, n, _ = raw.shape
    rows = np.empty(n, dtype=np.int64)
    for b in range(batch):
        m = _valid_rows(mask[b], rows)
        if m == n:
            sim = raw[b]
        else:  # the valid rows and columns, packed
            sim = np.empty((m, m), dtype=np.float64)
            for a in range(m):
                for c in range(m):
                    sim[a, c] = raw[b, rows[a], rows[c]]
        # the similarity as _similarity makes it, from the lower triangle: the upper one is
        # overwritten by its mirror image (a matrix product need not be exactly symmetric)
        top = 0.0  # the largest distance
        if kind == 0:
            for a in range(m):
                top = _largest(sim[a], a + 1, top)
        if kind == 1:
            _exp_triangle(sim, dim)
        first = np.zeros(m, dtype=np.float64)
        budget = int(k[b])
        if m <= matrix_max:
            _mirror(sim, kind, top, eps, first)  # bounds of the first gains
            _greedy(
                sim, first, budget, eps, kind != 2, rows[:m],
                indices[b], gains[b], weights[b], cover[b],
            )  # fmt: skip
        else:
            _mirror(sim, kind, top, 0.0, first)  # (eps 0: the sums themselves)
            g, err = _gains_from_sums(first, 0.0, 2)
            _incremental(
                sim, _STORED, 0.0, g, err, budget, eps, rows[:m],
                indices[b], gains[b], weights[b], cover[b],
            )  # fmt: skip


def _valid_rows(valid: Array, rows: Array) -> int:
    """Write the indices of the ``True`` entries of ``valid`` into ``rows``; return their
    count."""
    m = 0
    for i in range(valid.shape[0]):
        if valid[i]:
            rows[m] = i
            m += 1
    return m


def _largest(values: Array, upto: int, top: float) -> float:
    """The largest of ``values[:upto]`` and ``top`` (four running maxima: one would be a chain
    of dependent comparisons)."""
    t0, t1, t2, t3 = top, top, top, top
    full = upto - upto % 4
    for c in range(0, full, 4):
        t0 = max(t0, values[c])
        t1 = max(t1, values[c + 1])
        t2 = max(t2, values[c + 2])
        t3 = max(t3, values[c + 3])
    for c in range(full, upto):
        t0 = max(t0, values[c])
    return max(max(t0, t1), max(t2, t3))


def _raw(xt: Array, xj: Array, upto: int, kind: int, acc: Array) -> None:
    """``acc[c]`` for ``c < upto``: the squared distance (or, kind 2, the dot product) of point
    ``c`` and the point ``xj``, summed over the features two at a time (``acc += (a + b)``, the
    order every ``_raw*`` function follows)."""
    d = xt.shape[0]
    for c in range(upto):
        acc[c] = 0.0
    for t in range(0, d - 1, 2):  # (indexing xt directly: a view per feature would cost more)
        v, w = xj[t], xj[t + 1]
        if kind == 2:
            for c in range(upto):
                acc[c] += v * xt[t, c] + w * xt[t + 1, c]
        else:
            for c in range(upto):
                e, f = xt[t, c] - v, xt[t + 1, c] - w
                acc[c] += e * e + f * f
    if d % 2:
        t = d - 1
        v = xj[t]
        if kind == 2:
            for c in range(upto):
                acc[c] += v * xt[t, c]
        else:
            for c in range(upto):
                e = xt[t, c] - v
                acc[c] += e * e


def _sqrt_max(acc: Array, upto: int, top: float) -> float:
    """Square roots of ``acc[:upto]`` in place; returns the largest of them and ``top``."""
    for c in range(upto):
        acc[c] = math.sqrt(acc[c])
    return _largest(acc, upto, top)


def _finish(values: Array, upto: int, kind: int, top: float) -> float:
    """Distances (kind 0) to similarities ``top − d`` in place (kind 1: the caller has applied
    :func:`_exp_neg`); returns ``Σ max(s, 0)`` of the similarities (compiled with
    reassociation: the sum vectorises)."""
    total = 0.0
    for c in range(upto):
        if kind == 0:
            values[c] = top - values[c]
        total += max(values[c], 0.0)
    return total


def _exp_reduce(x: float) -> tuple[float, float]:
    """``exp(x) = p·2^k`` for ``x ≤ 0``: returns ``p`` (from the Taylor polynomial of ``exp(r)``
    to degree 13, ``|r| ≤ ln 2 / 2``: truncation below 5e-18) and ``t``, whose bits as an int64
    are ``k + _SHIFT_BITS`` (as a float, ``k = t − _SHIFT``). ``x`` below ``_EXP_LOW`` counts as
    ``_EXP_LOW``."""
    x = max(x, _EXP_LOW)
    t = x * _INV_LN2 + _SHIFT
    k = t - _SHIFT
    r = (x - k * _LN2_HI) - k * _LN2_LO
    q = 1.0 / 6227020800.0  # 1/13!, then Horner down to 1/2!
    q = q * r + 1.0 / 479001600.0
    q = q * r + 1.0 / 39916800.0
    q = q * r + 1.0 / 3628800.0
    q = q * r + 1.0 / 362880.0
    q = q * r + 1.0 / 40320.0
    q = q * r + 1.0 / 5040.0
    q = q * r + 1.0 / 720.0
    q = q * r + 1.0 / 120.0
    q = q * r + 1.0 / 24.0
    q = q * r + 1.0 / 6.0
    q = q * r + 0.5
    return 1.0 + (r + (r * r) * q), t


def _exp_neg(values: Array, upto: int, dim: int, scratch: Array) -> None:
    """``values[c] = exp(−values[c] / dim)`` for ``c < upto`` (``values ≥ 0``), less than 1 ulp
    from the exact value, and the same in the vectorised loop and its scalar rest. Unlike a
    loop of ``math.exp`` calls it vectorises: ``2^k`` is made from integer bits in ``scratch``
    (``[2, ≥ upto]`` float64, seen as int64), as ``2^h·2^(k−h)``, two normal numbers down to
    ``k = −1076``, so ``p·2^h`` is exact and the second product rounds once (to a subnormal if
    need be)."""
    high, low = scratch[0], scratch[1]
    for c in range(upto):
        p, t = _exp_reduce(-values[c] / dim)
        values[c] = p
        high[c] = t
    high_bits = high[:upto].view(np.int64)
    low_bits = low[:upto].view(np.int64)
    for c in range(upto):
        k = high_bits[c] - _SHIFT_BITS
        h = k >> 1
        high_bits[c] = (h + 1023) << 52
        low_bits[c] = (k - h + 1023) << 52
    for c in range(upto):
        values[c] = values[c] * high[c] * low[c]


def _similarity(xt: Array, kind: int, eps: float) -> tuple[Array, Array]:
    """The ``[m, m]`` float64 similarity of the points (the columns of ``xt``; symmetric) and
    upper bounds of the first gains ``Σ_i max(s(i, j), 0)`` (its row sums, with a margin for
    their rounding)."""
    d, m = xt.shape
    sim = np.empty((m, m), dtype=np.float64)
    xj = np.empty(d, dtype=np.float64)
    top = 0.0  # the largest distance
    ids = np.empty(4, dtype=np.int64)
    full = m - m % 4
    for a0 in range(0, full, 4):  # the lower triangle, four rows at a time (the entries c > a
        for r in range(4):  # are computed too; the mirror overwrites them with the same values)
            ids[r] = a0 + r
        _raw_block(xt, ids, 0, a0 + 4, kind, sim[a0 : a0 + 4])
        if kind != 2:  # (whole rows of the block: vectorised to the end, no scalar rest)
            top = _sqrt_rows(sim, a0, a0 + 4, a0 + 4, top)
    for a in range(full, m):  # ... and the last rows one by one
        for t in range(d):
            xj[t] = xt[t, a]
        _raw(xt, xj, a + 1, kind, sim[a])
        if kind != 2:
            top = _sqrt_rows(sim, a, a + 1, a + 1, top)
    if kind == 1:  # exp on the triangle only (kind 0 needs the largest distance first)
        _exp_triangle(sim, d)
    first = np.zeros(m, dtype=np.float64)
    _mirror(sim, kind, top, eps, first)
    return sim, first


def _sqrt_rows(sim: Array, start: int, stop: int, width: int, top: float) -> float:
    """:func:`_sqrt_max` of ``sim[a, :width]`` for the rows ``start ≤ a < stop`` (indexing the
    matrix: a view per row costs more than the row's square roots at this size; four running
    maxima, as in :func:`_largest`)."""
    t0, t1, t2, t3 = top, top, top, top
    full = width - width % 4
    for a in range(start, stop):
        for c in range(width):
            sim[a, c] = math.sqrt(sim[a, c])
        for c in range(0, full, 4):
            t0 = max(t0, sim[a, c])
            t1 = max(t1, sim[a, c + 1])
            t2 = max(t2, sim[a, c + 2])
            t3 = max(t3, sim[a, c + 3])
        for c in range(full, width):
            t0 = max(t0, sim[a, c])
    return max(max(t0, t1), max(t2, t3))


def _mirror(sim: Array, kind: int, top: float, eps: float, first: Array) -> None:
    """From the lower triangle (with the diagonal): distances (kind 0) to similarities
    ``top − d``, the upper triangle mirrored, and ``first`` (zeros) set to upper bounds of the
    row sums ``Σ_c max(s, 0)`` (each pair's term added to both of its rows; a margin for their
    rounding). One pass over the matrix, indexing it: no view per row."""
    m = sim.shape[0]
    for a in range(m):
        if kind == 0:
            for c in range(a + 1):
                sim[a, c] = top - sim[a, c]
        total = 0.0
        for c in range(a):
            term = max(sim[a, c], 0.0)
            total += term
            first[c] += term
        first[a] += total + max(sim[a, a], 0.0)
        for c in range(a):
            sim[c, a] = sim[a, c]
    for a in range(m):
        # m nonnegative terms: any two summation orders differ by less than 2·m·eps·total
        first[a] += 4.0 * m * eps * first[a]


def _exp_triangle(sim: Array, dim: int) -> None:
    """:func:`_exp_neg` on the lower triangle of ``sim`` (with the diagonal), its rows packed into
    a vector of up to ``_PACK`` values at a time: short rows alone would spend most of their
    time outside the vectorised loop."""
    m = sim.shape[0]
    size = min(m * (m + 1) // 2, max(_PACK, m))
    packed = np.empty(size, dtype=np.float64)
    scratch = np.empty((2, size), dtype=np.float64)
    first = 0
    while first < m:
        stop, used = first, 0
        while stop < m and used + stop + 1 <= size:
            for c in range(stop + 1):
                packed[used + c] = sim[stop, c]
            used += stop + 1
            stop += 1
        _exp_neg(packed, used, dim, scratch)
        used = 0
        for a in range(first, stop):
            for c in range(a + 1):
                sim[a, c] = packed[used + c]
            used += a + 1
        first = stop


def _first_gains(xt: Array, kind: int) -> tuple[Array, float, float]:
    """Without a matrix: every first gain ``Σ_i max(s(i, j), 0)``, the largest distance and a
    bound of the gains' rounding error, in one pass over the pairs (each pair once)."""
    m = xt.shape[1]
    sums = np.zeros(m, dtype=np.float64)
    top = _pair_sums(xt, kind, 0, m, sums)
    gains, err = _gains_from_sums(sums, top, kind)
    return gains, top, err


def _pair_sums(xt: Array, kind: int, start: int, stop: int, sums: Array) -> float:
    """Add to ``sums[j]`` the terms of the first gains (distances for kind 0, ``max(s, 0)``
    otherwise) of the pairs ``(i, c)``, ``c ≤ i``, of the rows ``start ≤ i < stop``, four rows
    at a time; returns the largest distance among them (kinds 0, 1)."""
    d = xt.shape[0]
    acc = np.empty((4, _BLOCK), dtype=np.float64)
    ids = np.empty(4, dtype=np.int64)
    scratch = np.empty((2, _BLOCK if kind == 1 else 0), dtype=np.float64)
    top = 0.0
    for i0 in range(start, stop, 4):
        end = min(stop, i0 + 4)
        for r in range(4):
            ids[r] = min(i0 + r, end - 1)  # a short group repeats its last row
        for c0 in range(0, end, _BLOCK):  # the columns c ≤ i, up to the group's last row
            width = min(_BLOCK, end - c0)
            _raw_block(xt, ids, c0, width, kind, acc)
            for r in range(end - i0):
                i = i0 + r
                upto = min(width, i + 1 - c0)  # columns c0 ≤ c ≤ i
                if upto <= 0:
                    continue
                a = acc[r]
                if kind == 2:
                    for c in range(upto):
                        a[c] = max(a[c], 0.0)
                else:
                    top = _sqrt_max(a, upto, top)
                    if kind == 1:
                        _exp_neg(a, upto, d, scratch)
                total = 0.0
                for c in range(upto):
                    total += a[c]
                    sums[c0 + c] += a[c]
                # the diagonal was added to its column above; off it, the pair also counts
                # for row i
                if c0 <= i < c0 + width:
                    total -= a[i - c0]
                sums[i] += total
    return top


def _gains_from_sums(sums: Array, top: float, kind: int) -> tuple[Array, float]:
    """The first gains from :func:`_pair_sums`' sums, and a bound of their rounding error
    (whatever order the sums were added in)."""
    m = sums.shape[0]
    gains = np.empty(m, dtype=np.float64)
    err = 0.0
    for j in range(m):
        if kind == 0:  # Σ_i (C − d_ij) = m·C − Σ_i d_ij
            gains[j] = m * top - sums[j]
            err = max(err, 4.0 * m * _EPS64 * (m * top + sums[j]))
        else:  # a sum of m nonnegative terms: relative error below m·eps
            gains[j] = sums[j]
            err = max(err, 4.0 * m * _EPS64 * sums[j])
    return gains, err


def _gain(row: Array, cur: Array) -> float:
    """Σ_i max(s(j, i) − cur_i, 0) for ``row`` = s(j, ·) (compiled with reassociation, so the
    sum vectorises; every gain of a call is summed the same way)."""
    acc = 0.0
    for i in range(cur.shape[0]):
        acc += max(row[i] - cur[i], 0.0)
    return acc


def _gain_at(sim: Array, j: int, cur: Array) -> float:
    """:func:`_gain` of the matrix row ``j`` (without making a view of it)."""
    acc = 0.0
    for i in range(cur.shape[0]):
        acc += max(sim[j, i] - cur[i], 0.0)
    return acc


def _sim_row(
    xt: Array, kind: int, top: float, j: int, xj: Array, out: Array, scratch: Array
) -> Array:
    """s(j, ·) computed from the features into ``out`` (when there is no matrix; ``scratch``:
    see :func:`_exp_neg`), or, kind ``_STORED``, copied from the similarity matrix ``xt``."""
    d, m = xt.shape
    if kind == _STORED:  # xt is the similarity matrix
        for c in range(m):
            out[c] = xt[j, c]
        return out
    for t in range(d):
        xj[t] = xt[t, j]
    _raw(xt, xj, m, kind, out)
    if kind != 2:
        _sqrt_max(out, m, 0.0)
        if kind == 1:
            _exp_neg(out, m, d, scratch)
        _finish(out, m, kind, top)
    return out


def _greedy(
    sim: Array,
    first: Array,
    budget: int,
    eps: float,
    tighten: bool,
    rows: Array,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> None:
    """The lazy greedy on a stored similarity matrix ``sim`` (``first``: bounds of the first
    gains; ``tighten``: whether each row's largest similarity is its diagonal, see
    :func:`_tighten`); writes the problem's outputs."""
    m = sim.shape[0]
    cur = np.zeros(m, dtype=np.float64)  # the floor: negative similarities count as 0
    near = np.full(m, -np.inf)  # each point's largest similarity to a pick (no floor) ...
    owner = np.zeros(m, dtype=np.int64)  # ... and that pick (the lowest index among equals)
    bound = first.copy()  # an upper bound of each candidate's gain; −inf once taken
    cand = np.empty(m, dtype=np.int64)  # the step's candidates, in index order
    picks = np.empty(budget, dtype=np.int64)
    tol = 0.0
    largest = _largest(first, m, 0.0)  # no gain exceeds the largest first bound
    # each gain's rounding is below m·eps64·largest / 2: what _tighten adds back per step
    slack = 4.0 * m * _EPS64 * largest
    for step in range(budget):
        # nothing is exact yet: evaluate the (first) largest bound
        top = _largest(bound, m, -np.inf)
        lead = 0
        while bound[lead] < top:
            lead += 1
        best = _gain_at(sim, lead, cur)
        bound[lead] = best
        if step == 0:
            tol = _tie_tolerance(best, m, eps)
        # then, in index order, every bound that can still reach the best so far − tol (a gain
        # is at most its bound, and best only grows, so a candidate skipped now cannot reach
        # the final best − tol either); at the first step with a margin, as tol follows best.
        # The candidates are gathered first, without a branch per point.
        margin = 2.0 * tol if step == 0 else tol
        floor = best - margin
        count = 0
        for j in range(m):
            cand[count] = j
            count += bound[j] >= floor
        for c in range(count):
            j = cand[c]
            if j == lead or bound[j] < best - margin:
                continue
            value = _gain_at(sim, j, cur)
            bound[j] = value
            best = max(best, value)
        if step == 0:
            tol = _tie_tolerance(best, m, eps)
        # the lowest index within tol of the best, which is an evaluated candidate: a bound
        # left stale (outside cand, or skipped) was below b − margin, b the best when it was
        # passed. After step 0, margin = tol: it is below best − tol. At step 0 (tol = c·best,
        # margin = 2·c·lead's gain): if b is the gain of an earlier candidate of cand, that
        # candidate's bound is higher and comes first; else b is the lead's gain g, and
        # g·(1 − 2c) ≤ best·(1 − c) = best − tol. The best candidate's bound reaches the limit.
        limit = best - tol
        c = 0
        while c + 1 < count and bound[cand[c]] < limit:  # (c + 1 < count: never past cand)
            c += 1
        pick = cand[c]
        picks[step] = pick
        gains[step] = bound[pick]
        bound[pick] = -np.inf
        if tighten:
            _tighten(sim, pick, cur, bound, slack)
        _take(sim[pick], pick, cur, near, owner)
    _finish_problem(picks, budget, rows, cur, owner, indices, weights, cover)


def _tighten(sim: Array, pick: int, cur: Array, bound: Array, slack: float) -> None:
    """Lower every bound by what the pick certainly removes from the candidate's gain, where
    each row's largest similarity is its diagonal (``s(j, j) ≥ s(i, j)``: kinds 0 and 1).
    Two terms of ``g_j = Σ_i max(s(i, j) − cur_i, 0)`` are known to shrink: the pick's own
    (``i = pick``: its ``cur`` becomes ``s(pick, pick)`` ≥ every ``s(pick, j)``, so the term
    becomes 0; it was at least ``max(s(pick, j) − cur_pick, 0)`` whenever the bound was
    evaluated, ``cur`` only growing) and the candidate's (``i = j``: ``s(j, j) − cur_j`` falls
    by the rise of ``cur_j``). Other terms only shrink. ``slack`` (added back each step) covers
    the rounding of the evaluated gains and of these subtractions, so a bound stays at or above
    the gain :func:`_gain_at` would return. ``cur`` is still the one before the pick."""
    base = cur[pick]
    for j in range(cur.shape[0]):
        s = sim[pick, j]
        bound[j] -= max(s - base, 0.0) + max(s - cur[j], 0.0) - slack


def _tie_tolerance(best: float, m: int, eps: float) -> float:
    """Gains this close to the step's best count as tied (the lowest index wins): the rounding
    of two summation orders of ``m`` terms, from the first step's best gain."""
    return 16.0 * eps * abs(best) / math.sqrt(m)


def _take(row: Array, pick: int, cur: Array, near: Array, owner: Array) -> None:
    """Pick ``pick`` (similarities ``row`` = s(pick, ·)): raise ``cur`` and move the points it is
    now the most similar pick of (ties to the lowest index) into its cluster."""
    for i in range(cur.shape[0]):
        v = row[i]
        closer = v > near[i] or (v == near[i] and pick < owner[i])
        near[i] = v if closer else near[i]
        owner[i] = pick if closer else owner[i]
        cur[i] = max(cur[i], v)


def _finish_problem(
    picks: Array,
    budget: int,
    rows: Array,
    cur: Array,
    owner: Array,
    indices: Array,
    weights: Array,
    cover: Array,
) -> None:
    """Write the picks (as indices of the unmasked problem), cluster sizes and coverage (no
    picks, no clusters: a budget of 0 leaves ``indices`` and ``weights`` as they are)."""
    position = np.empty(cur.shape[0], dtype=np.int64)  # the step at which each pick was taken
    for step in range(budget):
        position[picks[step]] = step
        indices[step] = rows[picks[step]]
    for i in range(cur.shape[0]):
        cover[rows[i]] = cur[i]
        if budget > 0:
            weights[position[owner[i]]] += 1.0


# --------------------------------------------------------------------------- above matrix_max
# No matrix: every candidate's gain is kept and corrected as the picks come. After a pick, a
# point ``i`` whose best similarity rose from ``lo`` to ``hi`` lowers each ``g_j`` by
# ``clamp(s(i, j), lo, hi) − lo``; its similarity row is recomputed from the features for that.


def _incremental(
    xt: Array,
    kind: int,
    top: float,
    g: Array,
    err: float,
    budget: int,
    eps: float,
    rows: Array,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> None:
    """The incremental greedy from the first gains ``g`` (corrected in place; ``err`` bounds
    their rounding error); writes the problem's outputs. (:func:`_incremental_threads` is the
    same loop with the corrections split over threads.)"""
    m = xt.shape[1]
    state = _buffers(g, err, budget)
    cur, near, owner, taken, row, cand, exact, moved, lo, hi, picks, scalars = state
    acc = np.empty((4, _BLOCK), dtype=np.float64)
    for step in range(budget):
        count = _step(
            xt, kind, top, eps, step, g, gains, cur, near, owner, taken, row, cand, exact,
            moved, lo, hi, picks, scalars,
        )  # fmt: skip
        if step + 1 < budget:
            _correct(xt, kind, top, moved, lo, hi, count, g, acc, 0, m)
    _finish_problem(picks, budget, rows, cur, owner, indices, weights, cover)


def _buffers(
    g: Array, err: float, budget: int
) -> tuple[Array, Array, Array, Array, Array, Array, Array, Array, Array, Array, Array, Array]:
    """The incremental greedy's state for ``m = len(g)`` points (see :func:`_step`)."""
    m = g.shape[0]
    # no gain ever exceeds the largest first gain (F is submodular)
    largest = _largest(g, m, 0.0)
    scalars = np.empty(3, dtype=np.float64)
    scalars[0] = err + 4.0 * m * _EPS64 * largest  # and the exact evaluations' own rounding
    scalars[1] = 0.0  # tol, set at the first step
    scalars[2] = largest
    return (
        np.zeros(m, dtype=np.float64),  # cur: the floor, negative similarities count as 0
        np.full(m, -np.inf),  # near: each point's largest similarity to a pick (no floor) ...
        np.zeros(m, dtype=np.int64),  # owner: ... and that pick (the lowest index among equals)
        np.zeros(m, dtype=np.bool_),  # taken
        np.empty(m, dtype=np.float64),  # row: similarities of the last evaluated candidate
        np.empty(m, dtype=np.int64),  # cand: the candidates near the largest kept gain
        np.zeros(m, dtype=np.bool_),  # exact: whether g[j] is exact (no correction since)
        np.empty(m, dtype=np.int64),  # moved: the points whose best similarity rose, ...
        np.empty(m, dtype=np.float64),  # lo: ... from ...
        np.empty(m, dtype=np.float64),  # hi: ... to
        np.empty(budget, dtype=np.int64),  # picks
        scalars,  # err (a bound of the kept gains' error), tol, the largest first gain
    )


def _step(
    xt: Array,
    kind: int,
    top: float,
    eps: float,
    step: int,
    g: Array,
    gains: Array,
    cur: Array,
    near: Array,
    owner: Array,
    taken: Array,
    row: Array,
    cand: Array,
    exact: Array,
    moved: Array,
    lo: Array,
    hi: Array,
    picks: Array,
    scalars: Array,
) -> int:
    """One step of the incremental greedy: the pick, its gain, and the points whose best
    similarity it raised (``moved``, from ``lo`` to ``hi``: their count is returned), whose
    corrections to ``g`` are left to the caller.

    The kept gains ``g`` round differently from an exact evaluation, so the step evaluates
    exactly (:func:`_gain` of a recomputed row, as the lazy greedy does) every candidate whose
    kept gain is within ``tol + 2·err`` of the largest one, ``err`` a running bound of the kept
    gains' error: a candidate left out is more than ``tol`` below the best exact gain, so the
    pick (the lowest index within ``tol`` of the best) is the naive greedy's. An evaluated gain
    is written into ``g`` and flagged ``exact`` until the next correction (a step that moves no
    point, as once every gain is 0, corrects nothing), so it is not evaluated again.
    """
    d, m = xt.shape
    err, tol, largest = scalars[0], scalars[1], scalars[2]
    xj = np.empty(0 if kind == _STORED else d, dtype=np.float64)
    scratch = np.empty((2, m if kind == 1 else 0), dtype=np.float64)
    lead = -1
    for j in range(m):
        if not taken[j] and (lead < 0 or g[j] > g[lead]):
            lead = j
    # at the first step tol is not known yet: twice its value from the kept gain
    margin = 2.0 * _tie_tolerance(g[lead], m, eps) if step == 0 else tol
    floor = g[lead] - margin - 2.0 * err
    count = 0
    best = -np.inf
    in_row = -1  # the candidate whose similarities ``row`` holds
    for j in range(m):
        # (``lead`` always: a NaN floor must not leave the step without a candidate)
        if not taken[j] and (g[j] >= floor or j == lead):
            if not exact[j]:  # (else evaluated since the last correction: still exact)
                g[j] = _gain(_sim_row(xt, kind, top, j, xj, row, scratch), cur)
                exact[j] = True
                in_row = j
            cand[count] = j
            best = max(best, g[j])
            count += 1
    if step == 0:
        tol = _tie_tolerance(best, m, eps)
    q = 0
    while g[cand[q]] < best - tol and q + 1 < count:
        q += 1
    pick = cand[q]
    if pick != in_row:
        _sim_row(xt, kind, top, pick, xj, row, scratch)
    picks[step] = pick
    gains[step] = g[pick]
    taken[pick] = True
    count = 0
    for i in range(m):
        if row[i] > cur[i]:
            moved[count] = i
            lo[count] = cur[i]
            hi[count] = row[i]
            # each correction rounds twice: below eps·(|g| + |Δ|) each, Δ ≤ hi − lo
            err += 4.0 * _EPS64 * (2.0 * largest + abs(row[i]) + abs(cur[i]))
            count += 1
    if count > 0:  # the caller corrects every gain: none is exact any more
        exact[:] = False
    _take(row, pick, cur, near, owner)
    scalars[0] = err
    scalars[1] = tol
    return count


def _correct(
    xt: Array,
    kind: int,
    top: float,
    moved: Array,
    lo: Array,
    hi: Array,
    count: int,
    g: Array,
    acc: Array,
    start: int,
    stop: int,
) -> None:
    """``g_j −= clamp(s(i, j), lo_i, hi_i) − lo_i`` for the ``count`` points ``i`` of ``moved``
    and the columns ``start ≤ j < stop``, four rows at a time, in blocks of ``_BLOCK`` columns
    (each ``g_j`` gets its corrections in the same order however the columns are split)."""
    d = xt.shape[0]
    ids = np.empty(4, dtype=np.int64)
    reach = np.empty(4, dtype=np.float64)
    for q0 in range(0, count, 4):
        rows_here = min(4, count - q0)
        for r in range(4):
            q = q0 + min(r, rows_here - 1)  # a short group repeats its last row
            ids[r] = moved[q]
            reach[r] = _reach(kind, top, lo[q], d)
        for c0 in range(start, stop, _BLOCK):
            width = min(_BLOCK, stop - c0)
            _raw_block(xt, ids, c0, width, kind, acc)
            for r in range(rows_here):
                q = q0 + r
                _clamp_into(acc[r], width, kind, top, d, lo[q], hi[q], reach[r], g[c0:])


def _reach(kind: int, top: float, lo: float, dim: int) -> float:
    """A raw value (squared distance) at or above which ``s ≤ lo`` (kinds 0, 1), with a
    margin for rounding; +inf where no such bound is used."""
    if kind == 0:
        radius = top - lo
    elif kind == 1 and lo > 0.0:
        radius = -dim * math.log(lo)
    else:
        return np.inf
    return radius * radius * (1.0 + 1e-9) + 1e-300


def _raw_block(xt: Array, ids: Array, c0: int, width: int, kind: int, acc: Array) -> None:
    """``acc[r, c]`` for ``c < width``: :func:`_raw` of the point ``ids[r]`` and the point
    ``c0 + c``, for the four rows ``r``, sharing each load of ``xt`` (the same operations in the
    same order as :func:`_raw`)."""
    d = xt.shape[0]
    if kind == _STORED:  # xt is the similarity matrix: its rows, as they are
        for r in range(4):
            i = ids[r]
            for c in range(width):
                acc[r, c] = xt[i, c0 + c]
        return
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    for c in range(width):
        a0[c] = 0.0
        a1[c] = 0.0
        a2[c] = 0.0
        a3[c] = 0.0
    i0, i1, i2, i3 = ids[0], ids[1], ids[2], ids[3]
    for t in range(0, d - 1, 2):
        v0, v1, v2, v3 = xt[t, i0], xt[t, i1], xt[t, i2], xt[t, i3]
        w0, w1, w2, w3 = xt[t + 1, i0], xt[t + 1, i1], xt[t + 1, i2], xt[t + 1, i3]
        xs, ys = xt[t, c0 : c0 + width], xt[t + 1, c0 : c0 + width]
        if kind == 2:
            for c in range(width):
                x, y = xs[c], ys[c]
                a0[c] += v0 * x + w0 * y
                a1[c] += v1 * x + w1 * y
                a2[c] += v2 * x + w2 * y
                a3[c] += v3 * x + w3 * y
        else:
            for c in range(width):
                x, y = xs[c], ys[c]
                e0, e1, e2, e3 = x - v0, x - v1, x - v2, x - v3
                f0, f1, f2, f3 = y - w0, y - w1, y - w2, y - w3
                a0[c] += e0 * e0 + f0 * f0
                a1[c] += e1 * e1 + f1 * f1
                a2[c] += e2 * e2 + f2 * f2
                a3[c] += e3 * e3 + f3 * f3
    if d % 2:
        t = d - 1
        v0, v1, v2, v3 = xt[t, i0], xt[t, i1], xt[t, i2], xt[t, i3]
        xs = xt[t, c0 : c0 + width]
        if kind == 2:
            for c in range(width):
                x = xs[c]
                a0[c] += v0 * x
                a1[c] += v1 * x
                a2[c] += v2 * x
                a3[c] += v3 * x
        else:
            for c in range(width):
                x = xs[c]
                e0, e1, e2, e3 = x - v0, x - v1, x - v2, x - v3
                a0[c] += e0 * e0
                a1[c] += e1 * e1
                a2[c] += e2 * e2
                a3[c] += e3 * e3


def _clamp_into(
    raw: Array,
    width: int,
    kind: int,
    top: float,
    dim: int,
    lo: float,
    hi: float,
    reach: float,
    g: Array,
) -> None:
    """``g[c] −= clamp(s, lo, hi) − lo`` for the similarities ``s`` of the raw values
    ``raw[:width]`` (as :func:`_sim_row` computes them, but for ``exp``: the C library's, one
    value at a time, where it is faster than the kernel's own; a few ulps from
    :func:`_exp_neg`'s at most, far inside the kept gains' error bound); values at or beyond
    ``reach`` give ``s ≤ lo`` and are skipped."""
    for c in range(width):
        v = raw[c]
        if kind >= 2:  # (dot products, or similarities read from the matrix)
            s = v
        elif v >= reach:
            continue
        elif kind == 0:
            s = top - math.sqrt(v)
        else:
            s = math.exp(-math.sqrt(v) / dim)
        if s > lo:
            g[c] -= min(s, hi) - lo
