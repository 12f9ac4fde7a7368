"""The selection: pools of candidates → the callback's proxies → the kernel → weighted coresets.

:class:`PoolSelection` draws P random pools (stratified by class with labels), asks the
callback once for the proxies of every pooled example, and hands them to a ``solve`` function
that turns each pool into a coreset with weights: :func:`facility_location_coresets` (CREST:
greedy facility location per pool and class; unit or cluster-size weights) or
:func:`k_center_batches` (farthest-point picks, unit weights). The pure helpers (pool drawing,
the largest-remainder split, weights of mean 1) are shared with CRAIG's whole-set selection.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from coreset_sampler._checks import check_callable, check_labels, check_positive_int
from coreset_sampler._state import Stateful
from coreset_sampler.kernels import greedy_facility_location, greedy_k_center
from coreset_sampler.proxies import call_proxies

__all__ = [
    "PoolSelection",
    "Selected",
    "draw_pools",
    "facility_location_coresets",
    "first_appearance",
    "k_center_batches",
    "labels_digest",
    "largest_remainder",
    "mean_one",
]

IntArray = npt.NDArray[np.int64]
# (pools, each pool member's row among the proxies [P, r], proxies, labels) -> (coresets, weights)
Solve = Callable[
    [list[IntArray], IntArray, Tensor, "IntArray | None"], tuple[list[list[int]], list[list[float]]]
]


class Selected(NamedTuple):
    """One selection's coresets and what it took."""

    coresets: list[list[int]]
    weights: list[list[float]]
    examples: IntArray  # the pooled examples sent to the callback, in order of first appearance
    losses: npt.NDArray[np.float64] | None  # their losses, where the callback gave them
    callback_seconds: float
    kernel_seconds: float


class PoolSelection(Stateful):
    """Pools → callback → ``solve``; no state of its own (its settings are configuration).

    Args:
        callback: see :class:`~coreset_sampler.proxies.ProxyCallback`.
        num_samples: N.
        batch_size: m, the coreset size (a pool must hold at least one).
        labels: optional class of every example: pools are stratified by class.
        pool_size: r (default ``default_pool``, at most ``limit``; equal to m, it selects
            nothing: a warning says so).
        limit: the largest pool (the smallest active set), and ``over``, what the message
            for a larger one says.
        solve: turns the pools into coresets and weights.
        default_pool: r when ``pool_size`` is ``None`` and how to say it (default
            ``max(ceil(0.01·N), 2·m)``, 1% of N as in the paper).
    """

    def __init__(
        self,
        callback: Any,
        num_samples: int,
        batch_size: int,
        *,
        labels: Any,
        pool_size: int | None,
        limit: int,
        over: str,
        solve: Solve,
        default_pool: tuple[int, str] | None = None,
    ) -> None:
        super().__init__()
        self.callback = check_callable("callback", callback)
        if default_pool is None:
            default_pool = (
                max(math.ceil(0.01 * num_samples), 2 * batch_size),
                "max(ceil(0.01·N), 2·batch_size)",
            )
        if pool_size is None:
            pool_size = min(default_pool[0], limit)
        self.pool_size = check_positive_int("pool_size", pool_size)
        if batch_size > self.pool_size:
            raise ValueError(
                f"batch_size={batch_size} is larger than pool_size={self.pool_size}: "
                "every pool must hold at least one batch"
            )
        if self.pool_size > limit:
            raise ValueError(f"pool_size={self.pool_size} {over}")
        if self.pool_size == batch_size:
            warnings.warn(
                f"pool_size={self.pool_size} equals batch_size: every coreset is its whole pool, "
                "with weights 1, so the batches are random batches; give a pool_size larger "
                f"than batch_size (the default is {default_pool[1]}, at most the examples "
                "that can be active)",
                UserWarning,
                stacklevel=3,
            )
        self.labels = check_labels(labels, num_samples)
        self.solve = solve
        self.add_config("pool_size", self.pool_size)
        self.add_config("labels", labels_digest(self.labels))

    def select(
        self, rng: np.random.Generator, active: IntArray, num_pools: int, call: str
    ) -> Selected:
        """Draw ``num_pools`` pools from ``active`` and select a coreset in each (``call``
        names the callback's call in error messages)."""
        pools = draw_pools(rng, active, self.labels, self.pool_size, num_pools)
        unique, positions = first_appearance(np.concatenate(pools))
        t0 = time.perf_counter()
        proxies, losses = call_proxies(self.callback, unique, call)
        callback_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        coresets, weights = self.solve(
            pools, positions.reshape(num_pools, -1), proxies, self.labels
        )
        kernel_seconds = time.perf_counter() - t0
        return Selected(coresets, weights, unique, losses, callback_seconds, kernel_seconds)


# the coresets' weights: 1 each (the default), or the paper's cluster sizes (mean 1)
WEIGHTINGS = ("uniform", "cluster_size")


def facility_location_coresets(
    pools: list[IntArray],
    positions: IntArray,
    proxies: Tensor,
    labels: IntArray | None,
    *,
    batch_size: int,
    similarity: str,
    weighting: str,
) -> tuple[list[list[int]], list[list[float]]]:
    """CREST's coresets: every pool (and, with labels, every class of it, with ``m·q_c/r``
    picks by largest remainder) solved in one batched greedy facility-location call; weights
    are the cluster sizes rescaled to mean 1 within each coreset (``weighting="uniform"``:
    1 each, the same picks)."""
    m = batch_size
    problems: list[tuple[int, IntArray, int]] = []  # (pool, rows within the pool, k)
    for p, pool in enumerate(pools):
        if labels is None:
            problems.append((p, np.arange(len(pool), dtype=np.int64), m))
            continue
        classes = labels[pool]
        present = np.unique(classes)
        groups = [np.flatnonzero(classes == c).astype(np.int64) for c in present]
        ks = largest_remainder(m, np.array([len(g) for g in groups], dtype=np.int64))
        problems.extend((p, g, int(k)) for g, k in zip(groups, ks, strict=True) if k > 0)
    width = max(len(rows) for _, rows, _ in problems)
    gather = np.zeros((len(problems), width), dtype=np.int64)
    mask = np.zeros((len(problems), width), dtype=bool)
    for b, (p, rows, _) in enumerate(problems):
        gather[b, : len(rows)] = positions[p, rows]
        mask[b, : len(rows)] = True
    device = proxies.device
    features = proxies[torch.from_numpy(gather).to(device)]
    k = torch.tensor([k for _, _, k in problems], dtype=torch.long, device=device)
    result = greedy_facility_location(
        features,
        k,
        mask=torch.from_numpy(mask).to(device),
        similarity=similarity,  # type: ignore[arg-type]
        ties="share",
    )
    warn_if_tied(features, result.indices, "this selection's")
    picks = result.indices.cpu().numpy()
    sizes = result.weights.detach().to("cpu", torch.float64).numpy()
    coresets: list[list[int]] = [[] for _ in pools]
    gammas: list[list[float]] = [[] for _ in pools]
    for b, (p, rows, kb) in enumerate(problems):
        coresets[p].extend(pools[p][rows[picks[b, :kb]]].tolist())
        gammas[p].extend(sizes[b, :kb].tolist())
    if weighting not in WEIGHTINGS:
        names = " or ".join(map(repr, WEIGHTINGS))
        raise ValueError(f"weighting should be {names}, got {weighting!r}")
    if weighting == "uniform":
        return coresets, [[1.0] * len(c) for c in coresets]
    return coresets, [mean_one(g, m) for g in gammas]


def warn_if_tied(features: Tensor, indices: Tensor, whose: str) -> None:
    """Warn when most picks have the same proxy as another pick of their problem (``features``
    ``[B, n, d]`` or ``[n, d]``, ``indices`` ``[B, k]`` or ``[k]``, -1 unused): tied proxies,
    whose weights are shared among them."""
    if features.dim() == 2:
        features, indices = features[None], indices[None]
    picked = indices >= 0
    rows = features.gather(1, indices.clamp(min=0)[..., None].expand(-1, -1, features.shape[-1]))
    batch, k, d = rows.shape
    if batch * k * k * d <= 1 << 22:  # (CREST's many small problems: one comparison)
        same = (rows[:, :, None, :] == rows[:, None, :, :]).all(-1)
        same &= picked[:, :, None] & picked[:, None, :]
        earlier = torch.ones(k, k, dtype=torch.bool, device=rows.device).tril(-1)
        duplicates = int((same & earlier).any(-1).sum())  # picks equal to an earlier pick
    else:  # (CRAIG's few large ones)
        duplicates = sum(
            int(picked[b].sum()) - torch.unique(rows[b][picked[b]], dim=0).shape[0]
            for b in range(batch)
        )
    total = int(picked.sum())
    if total > 1 and 2 * duplicates > total:
        warnings.warn(
            f"{duplicates} of {whose} {total} picks have the same gradient proxy as another "
            "pick: the proxies are tied (identical examples, or a model whose outputs do not "
            "yet depend on the input, such as a zero-initialised classifier head), so the "
            "coresets are as good as random picks (with cluster-size weights, their weights are "
            "shared equally)",
            UserWarning,
            stacklevel=2,
        )


def k_center_batches(
    pools: list[IntArray],
    positions: IntArray,
    proxies: Tensor,
    labels: IntArray | None,
    *,
    batch_size: int,
) -> tuple[list[list[int]], list[list[float]]]:
    """``batch_size`` farthest-point picks per pool (across classes), all pools in one batched
    call; weight 1."""
    gather = torch.from_numpy(positions).to(proxies.device)
    picks = greedy_k_center(proxies[gather], batch_size).indices.cpu().numpy()
    coresets = [pool[row].tolist() for pool, row in zip(pools, picks, strict=True)]
    return coresets, [[1.0] * batch_size for _ in coresets]


def mean_one(gammas: Sequence[float], size: int) -> list[float]:
    """Cluster sizes rescaled so that the ``size`` weights have mean 1 (exactly summed)."""
    total = math.fsum(gammas)
    return [size * g / total for g in gammas]


def draw_pools(
    rng: np.random.Generator,
    active: IntArray,
    labels: IntArray | None,
    pool_size: int,
    num_pools: int,
) -> list[IntArray]:
    """``num_pools`` pools of ``pool_size`` examples, each uniformly without replacement from
    ``active``, independently (pools may overlap); with ``labels`` each is stratified: class c
    gets ``r · n_c / A`` examples (n_c active examples of class c), by largest remainder."""
    if labels is None:
        return [rng.choice(active, size=pool_size, replace=False) for _ in range(num_pools)]
    classes = labels[active]
    members = [active[classes == c] for c in range(int(labels.max()) + 1)]
    quotas = largest_remainder(pool_size, np.array([len(m) for m in members], dtype=np.int64))
    return [
        np.concatenate(
            [
                rng.choice(m, size=int(q), replace=False)
                for m, q in zip(members, quotas, strict=True)
                if q
            ]
        )
        for _ in range(num_pools)
    ]


def largest_remainder(total: int, counts: IntArray) -> IntArray:
    """Split ``total`` in proportion to ``counts``: floors, then +1 by largest remainder.

    Ties go to the lower position. Exact integer arithmetic; never exceeds a count when
    ``total ≤ sum(counts)``.
    """
    s = int(counts.sum())
    scaled = total * counts
    out = scaled // s
    rem = scaled % s
    left = total - int(out.sum())
    order = np.lexsort((np.arange(counts.shape[0]), -rem))
    out[order[:left]] += 1
    return out.astype(np.int64)


def first_appearance(flat: IntArray) -> tuple[IntArray, IntArray]:
    """Unique values in order of first appearance, and each element's position among them."""
    values, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return values[order].astype(np.int64), rank[inverse.reshape(-1)].astype(np.int64)


def labels_digest(labels: IntArray | None) -> str | None:
    """A short fingerprint of the class ids (for a saved state's configuration)."""
    if labels is None:
        return None
    classes = int(labels.max()) + 1
    return f"{labels.shape[0]} labels, {classes} classes, crc32 {zlib.crc32(labels.tobytes()):08x}"
