"""Plain references for the kernel tests (NumPy, float64) and what the tests share."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from coreset_sampler.kernels.facility_location import _lazy

HAS_NUMBA = _lazy.available()
LAZY = pytest.param("lazy", marks=pytest.mark.skipif(not HAS_NUMBA, reason="needs numba"))
TORCH_METHODS = ["naive", "incremental"]
EXACT_METHODS = [*TORCH_METHODS, LAZY]
SIMILARITIES = ["neg_distance", "exp", "cosine", "dot"]


def similarity_matrix(x: np.ndarray, kind: str) -> np.ndarray:
    """s(i, j) of the documented similarities, from differences, in float64."""
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    if kind == "neg_distance":
        return dist.max() - dist
    if kind == "exp":
        return np.exp(-dist / x.shape[1])
    # products summed per pair in one order (a BLAS product may round equal columns differently)
    if kind == "cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return (unit[:, None, :] * unit[None, :, :]).sum(-1)
    if kind == "dot":
        return (x[:, None, :] * x[None, :, :]).sum(-1)
    raise AssertionError(kind)


def naive_greedy(sim: np.ndarray, k: int) -> tuple[list[int], list[float], float]:
    """Textbook greedy on F(S) = Σ_i max(0, max_{j∈S} s(i, j)).

    Ties are the lowest index among gains within 16·eps·first/sqrt(n) of the best: mathematically
    equal gains can differ in their last bits depending on summation order, in any
    implementation; this is the rule the library documents.
    """
    n = sim.shape[0]
    cur = np.zeros(n)
    selected: list[int] = []
    gains: list[float] = []
    tol = None
    for _ in range(k):
        gain = np.maximum(sim - cur[:, None], 0.0).sum(0)
        gain[selected] = -np.inf
        if tol is None:
            tol = 16 * np.finfo(np.float64).eps * abs(gain.max()) / math.sqrt(n)
        j = int(np.flatnonzero(gain >= gain.max() - tol)[0])
        selected.append(j)
        gains.append(float(gain[j]))
        cur = np.maximum(cur, sim[:, j])
    return selected, gains, float(cur.sum())


def had_ties(sim: np.ndarray, k: int) -> bool:
    """Whether some greedy step had two candidates with (nearly) equal best gains."""
    n = sim.shape[0]
    cur = np.zeros(n)
    selected: list[int] = []
    for _ in range(k):
        gain = np.maximum(sim - cur[:, None], 0.0).sum(0)
        gain[selected] = -np.inf
        top = np.sort(gain)[::-1]
        if n - len(selected) > 1 and top[0] - top[1] <= 1e-9 * max(1.0, abs(top[0])):
            return True
        j = int(np.argmax(gain))
        selected.append(j)
        cur = np.maximum(cur, sim[:, j])
    return False


def objective(sim: np.ndarray, selected: list[int]) -> float:
    return float(np.maximum(sim[:, selected].max(1), 0.0).sum())


def cluster_sizes(sim: np.ndarray, selected: list[int]) -> list[float]:
    """Points whose most similar selected point is j; ties to the lowest point index."""
    order = sorted(selected)
    owner = [order[int(np.argmax(sim[i, order]))] for i in range(sim.shape[0])]
    return [float(owner.count(j)) for j in selected]


def shared_cluster_sizes(sim: np.ndarray, selected: list[int]) -> list[float]:
    """Each point's unit weight split equally among its most similar picks (exact ties)."""
    out = [0.0] * len(selected)
    for i in range(sim.shape[0]):
        row = [sim[i, j] for j in selected]
        best = max(row)
        tied = [p for p, v in enumerate(row) if v == best]
        for p in tied:
            out[p] += 1.0 / len(tied)
    return out


def rng_features(seed: int, *shape: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))


def brute_force_optimum(sim: np.ndarray, k: int) -> float:
    return max(objective(sim, list(s)) for s in itertools.combinations(range(sim.shape[0]), k))
