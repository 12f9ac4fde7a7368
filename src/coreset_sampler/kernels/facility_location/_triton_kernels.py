"""The Triton kernels of :mod:`._triton`, as plain functions: ``_triton._kernels`` compiles
them with ``triton.jit`` for CUDA, or wraps them for Triton's CPU interpreter.

Similarity codes (``SIM``): 0 ``neg_distance`` (−‖x_i − x_j‖, the constant C in the floor),
1 ``exp`` (exp(−‖x_i − x_j‖ / d)), 2 ``dot``, 3 ``cosine`` (fused kernel only; the tiled path
normalises the features first and uses ``dot``). Squared differences are accumulated in float64
over the features, the square root taken in float64 and rounded once to float32 (as
:func:`._torch.distances` does up to 32 features; above, it uses a float64 matrix product, which
can differ in the last bits), and ``exp`` is evaluated in float64 (no approximate GPU
instructions), so a similarity is within an ulp of the PyTorch paths'.
"""

from __future__ import annotations

import contextlib

# Only _triton loads this module, once Triton imports; pytest's --doctest-modules imports every
# module, so this one imports without Triton too.
with contextlib.suppress(ImportError):
    import triton.language as tl


def fused(
    X, M, K, IDX, W, G, OBJ, BAD,
    n, d, sxb, sxn, sxd, smb, kmax,
    KP: tl.constexpr, BN: tl.constexpr, SIM: tl.constexpr,
    SHARE: tl.constexpr, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """One problem per program: similarities, every greedy step, cluster sizes, objective."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BN)
    inside = rows < n
    if HAS_MASK:
        valid = (tl.load(M + b * smb + rows, mask=inside, other=0) != 0) & inside
    else:
        valid = inside
    base_ptr = X + b * sxb + rows.to(tl.int64) * sxn  # (int64: n·d may pass 2**31)
    if SIM == 3:
        norm = tl.zeros([BN], dtype=tl.float64)
        for t in range(0, d):
            x = tl.load(base_ptr + t * sxd, mask=valid, other=0.0).to(tl.float64)
            norm += x * x
        norm = tl.maximum(tl.sqrt(norm), 1e-12)
    acc = tl.zeros([BN, BN], dtype=tl.float64)
    bad = tl.zeros([BN], dtype=tl.int32)
    for t in range(0, d):
        x = tl.load(base_ptr + t * sxd, mask=valid, other=0.0).to(tl.float64)
        bad = tl.maximum(bad, ((x - x) != 0).to(tl.int32))  # NaN or inf
        if SIM < 2:
            diff = x[:, None] - x[None, :]
            acc += diff * diff
        else:
            if SIM == 3:
                x = x / norm
            acc += x[:, None] * x[None, :]
    if SIM == 0:
        s = -(tl.sqrt(acc).to(tl.float32))
    elif SIM == 1:
        s = tl.exp(-(tl.sqrt(acc).to(tl.float32).to(tl.float64) / d)).to(tl.float32)
    else:
        s = acc.to(tl.float32)
    both = valid[:, None] & valid[None, :]
    s = tl.where(both, s, 0.0)
    bad = tl.maximum(bad, tl.max(((s - s) != 0).to(tl.int32), axis=1))
    if SIM == 0:
        base = tl.min(tl.min(s, axis=1), axis=0)  # −C (padding holds 0 ≥ −C)
    else:
        base = tl.min(tl.min(s, axis=1), axis=0) * 0.0
    cur = tl.where(valid, base, 0.0)  # padding rows: s = 0 and cur = 0 add nothing
    taken = valid == 0
    chosen = valid != valid
    budget = tl.load(K + b)
    count = tl.sum(valid.to(tl.float32), axis=0)
    ks = tl.arange(0, KP)
    picks = tl.full([KP], -1, dtype=tl.int64)
    gains = tl.zeros([KP], dtype=tl.float32)
    tol = count * 0.0
    for step in range(0, kmax):
        g = tl.sum(tl.maximum(s - cur[:, None], 0.0), axis=0)  # Σ_i relu(s(i, j) − cur_i)
        g = tl.where(taken, float("-inf"), g)
        best = tl.max(g, axis=0)
        if step == 0:
            tol = 1.9073486328125e-06 * tl.abs(best) / tl.sqrt(count)  # 16 float32 eps: 2**-19
        pick = tl.min(tl.where(g >= best - tol, rows, BN), axis=0)
        active = step < budget
        hit = rows == pick
        column = tl.sum(tl.where(hit[None, :], s, 0.0), axis=1)  # s(i, pick)
        gain = tl.sum(tl.where(hit, g, 0.0), axis=0)
        cur = tl.where(active, tl.maximum(cur, column), cur)
        hit = hit & active
        taken = taken | hit
        chosen = chosen | hit
        now = (ks == step) & active
        picks = tl.where(now, pick.to(tl.int64), picks)
        gains = tl.where(now, gain, gains)
    # cluster sizes: each valid point to its most similar pick (ties: lowest point index, or
    # shared equally among the tied picks)
    nearest = tl.max(tl.where(chosen[None, :], s, float("-inf")), axis=1)
    tied = chosen[None, :] & (s == nearest[:, None]) & valid[:, None]
    if SHARE:
        ways = tl.sum(tied.to(tl.float64), axis=1)
        part = tl.where(ways > 0, 1.0 / tl.maximum(ways, 1.0), 0.0)
        counts = tl.sum(tl.where(tied, part[:, None], 0.0), axis=0)
    else:
        first = tl.min(tl.where(tied, rows[None, :], BN), axis=1)
        owner = (rows[None, :] == first[:, None]) & valid[:, None]
        counts = tl.sum(owner.to(tl.float64), axis=0)
    sizes = tl.sum(tl.where(rows[None, :] == picks[:, None], counts[None, :], 0.0), axis=1)
    objective = tl.sum(tl.where(valid, cur.to(tl.float64) - base.to(tl.float64), 0.0), axis=0)
    keep = ks < kmax
    tl.store(IDX + b * kmax + ks, picks, mask=keep)
    tl.store(W + b * kmax + ks, sizes.to(tl.float32), mask=keep)
    tl.store(G + b * kmax + ks, gains, mask=keep)
    tl.store(OBJ + b, objective)
    tl.store(BAD + b, tl.max(bad, axis=0))


def gains(
    X, M, CUR, TAKEN, G,
    n, d, sxb, sxn, sxd, smb, sc,
    BI: tl.constexpr, BJ: tl.constexpr, SIM: tl.constexpr, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """Every candidate's gain ``Σ_i relu(s(i, j) − cur_i)`` (float64; −inf when taken), for
    a block of BJ candidates of one problem, over tiles of BI rows."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BJ + tl.arange(0, BJ)
    col_in = cols < n
    if HAS_MASK:
        col_ok = (tl.load(M + b * smb + cols, mask=col_in, other=0) != 0) & col_in
    else:
        col_ok = col_in
    total = tl.zeros([BJ], dtype=tl.float64)
    cols64 = cols.to(tl.int64)  # (int64 offsets: n·d may pass 2**31)
    for start in range(0, n, BI):
        rows = start + tl.arange(0, BI)
        rows64 = rows.to(tl.int64)
        row_in = rows < n
        if HAS_MASK:
            row_ok = (tl.load(M + b * smb + rows, mask=row_in, other=0) != 0) & row_in
        else:
            row_ok = row_in
        acc = tl.zeros([BI, BJ], dtype=tl.float64)
        for t in range(0, d):
            xi = tl.load(X + b * sxb + rows64 * sxn + t * sxd, mask=row_ok, other=0.0)
            xj = tl.load(X + b * sxb + cols64 * sxn + t * sxd, mask=col_ok, other=0.0)
            xi = xi.to(tl.float64)
            xj = xj.to(tl.float64)
            if SIM < 2:
                diff = xi[:, None] - xj[None, :]
                acc += diff * diff
            else:
                acc += xi[:, None] * xj[None, :]
        if SIM == 0:
            s = -(tl.sqrt(acc).to(tl.float32))
        elif SIM == 1:
            s = tl.exp(-(tl.sqrt(acc).to(tl.float32).to(tl.float64) / d)).to(tl.float32)
        else:
            s = acc.to(tl.float32)
        s = tl.where(row_ok[:, None] & col_ok[None, :], s, 0.0)
        cur = tl.load(CUR + b * sc + rows, mask=row_in, other=0.0)
        total += tl.sum(tl.maximum(s - cur[:, None], 0.0).to(tl.float64), axis=0)
    taken = tl.load(TAKEN + b * sc + cols, mask=col_in, other=1) != 0
    total = tl.where(taken, float("-inf"), total)
    tl.store(G + b * sc + cols, total, mask=col_in)


def pick(
    X, M, K, CUR, TAKEN, G, TOL, COUNT, IDX, GAINS,
    n, d, sxb, sxn, sxd, smb, sc, si, step,
    BLOCK: tl.constexpr, SIM: tl.constexpr, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """One problem per program: the pick of this step (the lowest index among the gains within
    the tie tolerance of the best), its gain, and the coverage update ``cur_i = max(cur_i,
    s(i, pick))`` while the problem's budget lasts."""
    b = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK)
    best = tl.max(tl.full([BLOCK], float("-inf"), dtype=tl.float64), axis=0)
    for start in range(0, n, BLOCK):
        offs = start + lanes
        g = tl.load(G + b * sc + offs, mask=offs < n, other=float("-inf"))
        best = tl.maximum(best, tl.max(g, axis=0))
    if step == 0:
        count = tl.load(COUNT + b)
        tol = 1.9073486328125e-06 * tl.abs(best) / tl.sqrt(count)  # 16 float32 eps: 2**-19
        tl.store(TOL + b, tol)
    else:
        tol = tl.load(TOL + b)
    chosen = tl.zeros([], dtype=tl.int32) + n  # (a tensor: n may be a constant)
    for start in range(0, n, BLOCK):
        offs = start + lanes
        g = tl.load(G + b * sc + offs, mask=offs < n, other=float("-inf"))
        near = (g >= best - tol) & (offs < n)
        chosen = tl.minimum(chosen, tl.min(tl.where(near, offs, n), axis=0))
    budget = tl.load(K + b)
    if step < budget:
        gain = tl.load(G + b * sc + chosen)
        tl.store(IDX + b * si + step, chosen.to(tl.int64))
        tl.store(GAINS + b * si + step, gain.to(tl.float32))
        tl.store(TAKEN + b * sc + chosen, 1)
        for start in range(0, n, BLOCK):
            rows = start + lanes
            row_in = rows < n
            if HAS_MASK:
                row_ok = (tl.load(M + b * smb + rows, mask=row_in, other=0) != 0) & row_in
            else:
                row_ok = row_in
            acc = tl.zeros([BLOCK], dtype=tl.float64)
            for t in range(0, d):
                xi = tl.load(
                    X + b * sxb + rows.to(tl.int64) * sxn + t * sxd, mask=row_ok, other=0.0
                )
                xp = tl.load(X + b * sxb + chosen.to(tl.int64) * sxn + t * sxd)
                xi = xi.to(tl.float64)
                xp = xp.to(tl.float64)
                if SIM < 2:
                    diff = xi - xp
                    acc += diff * diff
                else:
                    acc += xi * xp
            if SIM == 0:
                s = -(tl.sqrt(acc).to(tl.float32))
            elif SIM == 1:
                s = tl.exp(-(tl.sqrt(acc).to(tl.float32).to(tl.float64) / d)).to(tl.float32)
            else:
                s = acc.to(tl.float32)
            s = tl.where(row_ok, s, 0.0)
            cur = tl.load(CUR + b * sc + rows, mask=row_in, other=0.0)
            tl.store(CUR + b * sc + rows, tl.maximum(cur, s), mask=row_in)
    else:
        tl.store(IDX + b * si + step, tl.full([], -1, dtype=tl.int64))
        tl.store(GAINS + b * si + step, tl.full([], 0.0, dtype=tl.float32))


def k_center(
    X, D, FIRST, K, IDX, RAD,
    n, d, sxb, sxn, sxd, sdb, kmax,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Farthest-point greedy, one problem per program, every step in one launch.

    ``D`` holds each point's distance to the centres so far (+inf before any), −inf for points
    that are centres or padding; each step's pass over the points updates it with the distance
    to the new centre and finds the next farthest point (lowest index on ties) and the radius
    ``max(0, max D)`` (the centres' own distance is 0). ``FIRST`` is the first pick of a problem
    without initial centres (−1 otherwise). Distances are accumulated in float64 and rounded
    once to float32, as :func:`._torch.distances` does."""
    b = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK)
    best = tl.max(tl.full([BLOCK], float("-inf"), dtype=tl.float32), axis=0)
    arg = tl.zeros([], dtype=tl.int32) + n  # (a tensor: n may be a constant)
    for start in range(0, n, BLOCK):
        offs = start + lanes
        score = tl.load(D + b * sdb + offs, mask=offs < n, other=float("-inf"))
        top = tl.max(score, axis=0)
        at = tl.min(tl.where((score == top) & (offs < n), offs, n), axis=0)
        arg = tl.where(top > best, at, arg)  # (strictly: an earlier block keeps a tie)
        best = tl.maximum(best, top)
    first = tl.load(FIRST + b)
    budget = tl.load(K + b)
    for step in range(0, kmax):
        pick = arg.to(tl.int64)
        if step == 0:
            pick = tl.where(first >= 0, first, pick)
        if step < budget:
            best = tl.max(tl.full([BLOCK], float("-inf"), dtype=tl.float32), axis=0)
            arg = tl.zeros([], dtype=tl.int32) + n
            for start in range(0, n, BLOCK):
                offs = start + lanes
                inside = offs < n
                acc = tl.zeros([BLOCK], dtype=tl.float64)
                for t in range(0, d):
                    xi = tl.load(
                        X + b * sxb + offs.to(tl.int64) * sxn + t * sxd, mask=inside, other=0.0
                    )
                    xp = tl.load(X + b * sxb + pick * sxn + t * sxd)
                    diff = xi.to(tl.float64) - xp.to(tl.float64)
                    acc += diff * diff
                dist = tl.sqrt(acc).to(tl.float32)
                score = tl.load(D + b * sdb + offs, mask=inside, other=float("-inf"))
                score = tl.where(offs == pick, float("-inf"), tl.minimum(score, dist))
                tl.store(D + b * sdb + offs, score, mask=inside)
                top = tl.max(score, axis=0)
                at = tl.min(tl.where((score == top) & inside, offs, n), axis=0)
                arg = tl.where(top > best, at, arg)
                best = tl.maximum(best, top)
            tl.store(IDX + b * kmax + step, pick)
            tl.store(RAD + b * kmax + step, tl.maximum(best, 0.0))
        else:
            tl.store(IDX + b * kmax + step, tl.full([], -1, dtype=tl.int64))
            tl.store(RAD + b * kmax + step, tl.full([], float("nan"), dtype=tl.float32))
