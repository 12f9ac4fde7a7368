"""What the sampler tests share: a recording callback, a scripted monitor, a stream reader."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


class Proxies:
    """Callback over a fixed random [N, d] tensor; records every call."""

    def __init__(self, n: int, d: int = 4, seed: int = 0, losses: Tensor | None = None) -> None:
        self.table = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
        self.losses = losses
        self.calls: list[list[int]] = []

    def __call__(self, indices: list[int]) -> Tensor | tuple[Tensor, Tensor]:
        self.calls.append(list(indices))
        if self.losses is None:
            return self.table[indices]
        return self.table[indices], self.losses[indices]


@dataclass(frozen=True)
class FakeCheck:
    rho: float
    reselect: bool


class FakeMonitor:
    """A monitor whose ρ and T1 the test scripts; records anchors and checks."""

    def __init__(
        self, rhos: Sequence[float], intervals: Sequence[int] = (2,), tau: float = 0.05
    ) -> None:
        self.rhos = list(rhos)
        self.intervals = list(intervals)
        self.tau = tau
        self.anchors: list[tuple[list[list[int]], list[Tensor], list[int]]] = []
        self.num_checks = 0
        self.interval = 1

    def anchor(
        self,
        coresets: Sequence[Sequence[int]],
        weights: Sequence[Tensor],
        check_indices: Sequence[int],
    ) -> None:
        self.anchors.append(([list(c) for c in coresets], list(weights), list(check_indices)))
        k = len(self.anchors) - 1
        self.interval = self.intervals[min(k, len(self.intervals) - 1)]

    def check(self) -> FakeCheck:
        rho = self.rhos[self.num_checks % len(self.rhos)]
        self.num_checks += 1
        return FakeCheck(rho=rho, reselect=rho > self.tau)

    def state_dict(self) -> dict[str, Any]:
        return {"num_checks": self.num_checks, "interval": self.interval, "n": len(self.anchors)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_checks = state["num_checks"]
        self.interval = state["interval"]
        self.anchors = [([], [], [])] * state["n"]


def stream(sampler: Any, steps: int | None = None) -> list[tuple[list[int], list[float]]]:
    out = []
    it = iter(sampler)
    for k, batch in enumerate(it):
        out.append(([int(i) for i in batch], [i.weight for i in batch]))
        if steps is not None and k + 1 >= steps:
            break
    return out
