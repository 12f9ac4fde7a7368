"""Recorded outputs: every sampler's batch stream and the kernels' results, kept as data.

The batch streams (indices, weights, what the monitor was anchored on, the telemetry's counts)
of CREST, CRAIG, k-center and random batches under a handful of seeds and configurations, and
the outputs of ``greedy_facility_location`` and ``greedy_k_center`` on a fixed set of problems,
were recorded with the code before the 0.2 refactor (the one sampler class split into parts).
This test recomputes them and requires the same values, so that a change of structure cannot
change behaviour unnoticed.

Every input is derived from NumPy's PCG64 (the same on every machine) and the callbacks and
the monitor are deterministic scripts. Sampler outputs (indices, weights: cluster sizes over
their sum) are compared exactly; the kernels' indices and cluster sizes exactly, their gains
and objectives to a few units of the last place (the compiled kernel sums with reassociation,
which another CPU's vector width may order differently).

Re-record (only when a change of behaviour is intended, and say so in the CHANGELOG):
``python tests/test_recorded_outputs.py --record``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from coreset_sampler import (
    CraigBatchSampler,
    CrestBatchSampler,
    DropLearned,
    KCenterBatchSampler,
    RandomBatchSampler,
    greedy_facility_location,
    greedy_k_center,
)

DATA = Path(__file__).parent / "data" / "recorded_outputs.json"


# --------------------------------------------------------------------------- deterministic parts


def _table(n: int, d: int, seed: int) -> Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


class Callback:
    """Proxies from a fixed table; losses (when asked) that depend on the index and the call."""

    def __init__(self, n: int, d: int = 4, seed: int = 0, losses: bool = False) -> None:
        self.table = _table(n, d, seed)
        self.losses = losses
        self.calls = 0

    def __call__(self, indices: list[int]) -> Tensor | tuple[Tensor, Tensor]:
        self.calls += 1
        proxies = self.table[indices]
        if not self.losses:
            return proxies
        idx = torch.tensor(indices, dtype=torch.float64)
        return proxies, ((idx * 7919 + self.calls * 13) % 100) / 100 * 0.3


@dataclass(frozen=True)
class Check:
    rho: float
    reselect: bool


class Monitor:
    """A scripted monitor: ρ and T1 cycle through fixed lists; it records its anchors."""

    def __init__(self) -> None:
        self.rhos = [0.01, 0.2, 0.03, 0.04, 0.5, 0.0, 0.07]
        self.intervals = [1, 3, 2, 1, 4]
        self.anchors: list[Any] = []
        self.num_checks = 0
        self.num_anchors = 0
        self.interval = 1

    def anchor(
        self, coresets: Sequence[Sequence[int]], weights: Sequence[Tensor], checks: Sequence[int]
    ) -> None:
        self.anchors.append(
            [[list(c) for c in coresets], [w.tolist() for w in weights], list(checks)]
        )
        self.interval = self.intervals[self.num_anchors % len(self.intervals)]
        self.num_anchors += 1

    def check(self) -> Check:
        rho = self.rhos[self.num_checks % len(self.rhos)]
        self.num_checks += 1
        return Check(rho=rho, reselect=rho > 0.05)

    def state_dict(self) -> dict[str, Any]:
        return {"checks": self.num_checks, "anchors": self.num_anchors, "interval": self.interval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_checks = state["checks"]
        self.num_anchors = state["anchors"]
        self.interval = state["interval"]


def _selection_fields(r: Any) -> list[Any]:
    names = ("step", "epoch", "reason", "num_pools", "pool_size", "interval", "active_size")
    return [getattr(r, name) for name in (*names, "num_proxies")]


def _telemetry(sampler: Any) -> dict[str, Any]:
    t = sampler.telemetry
    return {
        "counts": [t.num_steps, t.num_selections, t.num_checks, t.num_dropped],
        "selections": [_selection_fields(r) for r in t.selections],
        "checks": [[r.step, r.rho, r.reselect, r.interval] for r in t.checks],
    }


def _run(
    sampler: Any,
    epochs: int,
    *,
    report: bool = False,
    resume_at: int | None = None,
    rebuild: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Iterate ``epochs`` epochs; with ``resume_at``, save the state after that many batches,
    load it into ``rebuild()`` and go on with the new sampler."""
    batches: list[list[int]] = []
    weights: list[list[float]] = []
    count = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            batches.append([int(i) for i in batch])
            weights.append([float(i.weight) for i in batch])
            count += 1
            if report:
                step = len(batches)
                sampler.report_losses(batch, [((int(i) * 31 + step) % 17) / 100 for i in batch])
            if count == resume_at:
                assert rebuild is not None
                state = sampler.state_dict()
                sampler = rebuild()
                sampler.load_state_dict(state)
                break
        else:
            continue
        # the rest of the interrupted epoch, then the remaining epochs
        for batch in sampler:
            batches.append([int(i) for i in batch])
            weights.append([float(i.weight) for i in batch])
    out: dict[str, Any] = {"batches": batches, "weights": weights}
    if not isinstance(sampler, RandomBatchSampler):  # (it had no telemetry when recorded)
        out.update(_telemetry(sampler))
    if hasattr(sampler, "dropped_indices"):
        out["dropped"] = sampler.dropped_indices
    monitor = getattr(sampler, "monitor", None)
    if isinstance(monitor, Monitor):
        out["anchors"] = monitor.anchors
    return out


# --------------------------------------------------------------------------- the cases

# most CREST and k-center cases were recorded with the default pools of 0.2.0.dev0 at N = 300,
# one batch each (nothing selected); they keep them, and the warning that now says so
pytestmark = pytest.mark.filterwarnings("ignore:pool_size=.* equals batch_size:UserWarning")

N = 300
LABELS = np.random.default_rng(7).integers(0, 3, N)


def _crest(**kw: Any) -> Callable[[], CrestBatchSampler]:
    def build() -> CrestBatchSampler:
        args = dict(kw)
        n = args.pop("n", N)
        d = args.pop("d", 4)
        losses = args.pop("losses", False)
        if args.pop("monitor", False):
            args["monitor"] = Monitor()
        if args.pop("labels", False):
            args["labels"] = LABELS[:n]
        args.setdefault("pool_size", args["batch_size"])  # (the default of 0.2.0.dev0 here)
        args.setdefault("max_uses", None)  # (recorded before the cap on a coreset's uses)
        args.setdefault("weighting", "cluster_size")  # (recorded with the paper's weights)
        return CrestBatchSampler(n, callback=Callback(n, d, losses=losses), **args)

    return build


def _crest_cases() -> dict[str, Callable[[], dict[str, Any]]]:
    plain = _crest(batch_size=10, budget=0.5, seed=0)
    full = _crest(
        batch_size=8, budget=0.4, seed=1, monitor=True, labels=True, losses=True,
        warmup_steps=3, drop_learned=DropLearned(window=2, max_fraction=0.1), pool_size=40,
        pool_multiplier=5, check_size=40,  # (the defaults of 0.1)
    )  # fmt: skip
    exp = _crest(
        batch_size=6, budget=0.3, seed=2, monitor=True, similarity="exp", num_pools=3,
        pool_multiplier=2, check_size=17, drop_last=True, d=7,
    )  # fmt: skip
    interval = _crest(
        batch_size=5, budget=0.3, seed=3, labels=True, reselect_every=4, num_pools=2,
        drop_learned=False, similarity="cosine",
    )  # fmt: skip
    return {
        "crest/plain": lambda: _run(plain(), 2),
        "crest/monitor-labels-dropping-warmup": lambda: _run(full(), 3, report=True),
        "crest/monitor-labels-dropping-resumed": lambda: _run(
            full(), 3, report=True, resume_at=17, rebuild=full
        ),
        "crest/exp-monitor-drop-last": lambda: _run(exp(), 2),
        "crest/interval-cosine": lambda: _run(interval(), 2),
        "crest/rank-1-of-2": lambda: _run(
            _crest(
                batch_size=10,
                budget=0.5,
                seed=4,
                num_replicas=2,
                rank=1,
                monitor=True,
                pool_multiplier=5,
                check_size=10,
            )(),
            2,
        ),
        "crest/generator": lambda: _run(
            CrestBatchSampler(
                N,
                10,
                callback=Callback(N),
                generator=torch.Generator().manual_seed(5),
                pool_size=10,
                weighting="cluster_size",
            ),
            2,
        ),
    }


def _craig(**kw: Any) -> Callable[[], CraigBatchSampler]:
    def build() -> CraigBatchSampler:
        args = dict(kw)
        if args.pop("labels", False):
            args["labels"] = LABELS
        return CraigBatchSampler(N, callback=Callback(N, 5, seed=1), **args)

    return build


def _other_cases() -> dict[str, Callable[[], dict[str, Any]]]:
    craig = _craig(batch_size=16, budget=0.2, seed=0, labels=True, reselect_every=2)
    kcenter_args: dict[str, Any] = {"batch_size": 7, "budget": 0.4, "seed": 2, "labels": LABELS}

    def kcenter() -> KCenterBatchSampler:
        return KCenterBatchSampler(
            N,
            callback=Callback(N, 3, seed=2),
            reselect_every=6,
            num_pools=3,
            pool_size=7,
            **kcenter_args,
        )

    return {
        "craig/labels-every-2": lambda: _run(craig(), 3),
        "craig/resumed": lambda: _run(craig(), 3, resume_at=6, rebuild=craig),
        "craig/stochastic-drop-last": lambda: _run(
            _craig(batch_size=13, budget=0.3, seed=1, method="stochastic", drop_last=True)(), 2
        ),
        "craig/exp-chunked": lambda: _run(
            _craig(
                batch_size=20, budget=0.1, similarity="exp", method="incremental", chunk_size=32
            )(),
            1,
        ),
        "k-center/labels": lambda: _run(kcenter(), 2),
        "k-center/resumed": lambda: _run(kcenter(), 2, resume_at=11, rebuild=kcenter),
        "k-center/plain": lambda: _run(
            KCenterBatchSampler(N, 9, callback=Callback(N), budget=0.3, seed=0, pool_size=9), 2
        ),
        "random/plain": lambda: _run(RandomBatchSampler(N, 11, budget=0.5, seed=3), 2),
        "random/rank-0-of-3-drop-last": lambda: _run(
            RandomBatchSampler(N, 8, budget=0.7, seed=1, num_replicas=3, rank=0, drop_last=True),
            2,
        ),
    }


def _fl(
    shape: tuple[int, int, int], k: int | Sequence[int], seed: int, *, ragged: bool = False,
    dtype: torch.dtype = torch.float32, **kw: Any,
) -> Callable[[], dict[str, Any]]:  # fmt: skip
    def run() -> dict[str, Any]:
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape)).to(dtype)
        mask = None
        if ragged:
            mask = torch.ones(shape[:2], dtype=torch.bool)
            for b in range(shape[0]):
                mask[b, shape[1] - 3 * b :] = False
        budget = k if isinstance(k, int) else torch.tensor(k)
        if kw.get("similarity") == "precomputed":
            kw2 = dict(kw)
            kw2["similarity"] = -torch.cdist(x.double(), x.double()).to(dtype)
            out = greedy_facility_location(None, budget, mask=mask, **kw2)
        else:
            if "generator" in kw:
                kw["generator"] = torch.Generator().manual_seed(kw["generator"])
            out = greedy_facility_location(x, budget, mask=mask, **kw)
        return {name: getattr(out, name).tolist() for name in out._fields}

    return run


def _kc(shape: tuple[int, int, int], k: int, seed: int, **kw: Any) -> Callable[[], Any]:
    def run() -> dict[str, Any]:
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
        out = greedy_k_center(x, k, **kw)
        return {name: getattr(out, name).tolist() for name in out._fields}

    return run


def _kernel_cases() -> dict[str, Callable[[], dict[str, Any]]]:
    cases: dict[str, Callable[[], dict[str, Any]]] = {
        "fl/crest-split-auto": _fl((20, 50, 10), 13, 0),
        "fl/crest-unsplit-auto": _fl((3, 200, 10), 64, 1),
        "fl/float64-auto": _fl((3, 60, 5), 9, 2, dtype=torch.float64),
        "fl/d80-auto": _fl((2, 60, 80), 11, 3),
        "fl/n2100-lazy": _fl((1, 2100, 4), 25, 4, method="lazy"),
        "fl/n400-incremental-chunked": _fl((1, 400, 6), 30, 5, method="incremental", chunk_size=64),
        "fl/n400-incremental": _fl((1, 400, 6), 30, 5, method="incremental"),
        "fl/precomputed-naive": _fl((3, 30, 4), 5, 6, similarity="precomputed", method="naive"),
        "fl/precomputed-incremental": _fl(
            (3, 30, 4), 5, 6, similarity="precomputed", method="incremental"
        ),
    }
    for similarity in ("neg_distance", "exp", "cosine", "dot"):
        for method in ("naive", "incremental", "stochastic", "lazy", "auto"):
            cases[f"fl/ragged-{similarity}-{method}"] = _fl(
                (4, 40, 6), [7, 5, 9, 3], 10, ragged=True, similarity=similarity, method=method,
                **({"generator": 11} if method == "stochastic" else {}),
            )  # fmt: skip
    cases["kc/batched"] = _kc((6, 50, 5), 9, 20)
    cases["kc/one-large"] = _kc((1, 500, 3), 40, 21)
    return cases


def all_cases() -> dict[str, Callable[[], dict[str, Any]]]:
    return {**_crest_cases(), **_other_cases(), **_kernel_cases()}


# --------------------------------------------------------------------------- the test

_RECORDED: dict[str, Any] = json.loads(DATA.read_text()) if DATA.exists() else {}


def test_every_case_is_recorded() -> None:
    assert sorted(_RECORDED) == sorted(all_cases())


def _assert_same(name: str, got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{name}{path}: keys"
        for key in want:
            _assert_same(name, got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{name}{path}: length"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(name, g, w, f"{path}[{i}]")
    elif (
        isinstance(want, float)
        and name.startswith(("fl/", "kc/"))
        and (path.startswith((".gains", ".objective")))
    ):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), f"{name}{path}: {got} {want}"
    else:
        assert got == want and type(got) is type(want), f"{name}{path}: {got!r} != {want!r}"


@pytest.mark.parametrize("name", sorted(all_cases()))
def test_outputs_equal_the_recorded_ones(name: str) -> None:
    if name not in _RECORDED:
        pytest.fail(f"{name} is not recorded: run python {__file__} --record")
    _assert_same(name, all_cases()[name](), _RECORDED[name])


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    DATA.parent.mkdir(exist_ok=True)
    recorded = {name: run() for name, run in sorted(all_cases().items())}
    DATA.write_text(json.dumps(recorded, separators=(",", ":")) + "\n")
    print(f"recorded {len(recorded)} cases in {DATA} ({DATA.stat().st_size} bytes)")
