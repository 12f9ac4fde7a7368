"""``method="stochastic"``: stochastic greedy (Mirzasoleiman et al., "Lazier than lazy greedy",
AAAI 2015).

Each step evaluates ``ceil(n/k · ln(1/epsilon))`` random candidates: ``O(n²·d·ln(1/epsilon))``
time whatever ``k`` is, ``O(n·chunk)`` memory, ``1 − 1/e − epsilon`` in expectation.
"""

from __future__ import annotations

import math

import torch

from ._problem import FacilityLocationResult, Problem
from ._torch import (
    Solution,
    TorchProblem,
    column,
    commit_pick,
    coverage,
    gains_of,
    initial_state,
    max_distance,
    per_problem,
    prepare,
    result,
)


def solve(problem: Problem, generator: torch.Generator | None) -> FacilityLocationResult:
    """Greedy facility location, stochastically (``generator``: seed 0 when omitted; the
    global random stream is never touched)."""
    p = prepare(problem, "stochastic")
    if generator is None:
        generator = torch.Generator(device=p.device).manual_seed(0)
    return result(p, _stochastic(p, problem.epsilon, generator))


def _stochastic(p: TorchProblem, epsilon: float, generator: torch.Generator) -> Solution:
    if p.features is not None and p.dense is None and p.features.shape[0] > 1:
        return per_problem(p, lambda q: _stochastic(q, epsilon, generator))
    if p.kind == "neg_distance" and p.dense is None:
        assert p.features is not None
        p = p._replace(base=-max_distance(p.features, p.mask, p.chunk_size))
    cur, indices, gains, available = initial_state(p)
    batch = p.mask.shape[0]
    counts = p.mask.sum(1).double()
    sample = math.ceil(float((counts / p.k.double()).max()) * math.log(1.0 / epsilon))
    sample = max(1, min(sample, p.n))
    for step in range(p.kmax):
        keys = torch.rand(batch, p.n, generator=generator, device=p.device)
        keys = keys.masked_fill_(~available, math.inf)
        cand = keys.topk(sample, dim=1, largest=False).indices  # [B, sample]
        cand_ok = available.gather(1, cand)
        g = gains_of(p, cur, cand).masked_fill_(~cand_ok, -math.inf)
        pick = cand.gather(1, g.argmax(1, keepdim=True)).squeeze(1)
        col = column(p, pick)
        cur, _ = commit_pick(p, step, pick, col, cur, indices, gains, available)
    return indices, gains, coverage(p, cur)
