"""Samplers across ranks: budget per replica, shards, and agreement through collectives."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import (
    CrestBatchSampler,
    GradientProxyCallback,
    QuadraticLossMonitor,
    RandomBatchSampler,
    WithWeights,
)

N = 240


def proxies(indices: list[int]) -> torch.Tensor:
    table = torch.randn(N, 4, generator=torch.Generator().manual_seed(1))
    return table[indices]


# ----------------------------------------------------------------------------------------------
# Without a process group: explicit num_replicas and rank
# ----------------------------------------------------------------------------------------------


def test_budget_is_split_across_replicas() -> None:
    for rank in (0, 1, 2):
        s = CrestBatchSampler(N, 8, callback=proxies, budget=0.5, num_replicas=3, rank=rank)
        assert len(s) == 5  # ceil(0.5 · 240 / (8 · 3))
        assert len(list(s)) == 5
    assert len(RandomBatchSampler(N, 8, budget=0.5, num_replicas=3, rank=1)) == 5


def random_rank(rank: int) -> RandomBatchSampler:
    return RandomBatchSampler(N, 8, budget=0.6, seed=3, num_replicas=2, rank=rank)


def test_random_sampler_ranks_take_disjoint_interleaved_batches() -> None:
    single = [[int(i) for i in b] for b in RandomBatchSampler(N, 8, budget=0.6, seed=3)]
    ranks = [
        [
            [int(i) for i in b]
            for b in RandomBatchSampler(N, 8, budget=0.6, seed=3, num_replicas=2, rank=r)
        ]
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 9  # ceil(0.6 · 240 / 16)
    flat0 = {i for b in ranks[0] for i in b}
    flat1 = {i for b in ranks[1] for i in b}
    assert not flat0 & flat1  # 18 batches of 8 = 144 ≤ 240: one permutation, no overlap
    assert ranks[0][:4] == single[0:8:2] and ranks[1][:4] == single[1:8:2]


def test_crest_ranks_select_their_own_pools() -> None:
    a = CrestBatchSampler(N, 8, callback=proxies, budget=0.5, num_replicas=2, rank=0, seed=0)
    b = CrestBatchSampler(N, 8, callback=proxies, budget=0.5, num_replicas=2, rank=1, seed=0)
    batches_a = [[int(i) for i in x] for x in a]
    batches_b = [[int(i) for i in x] for x in b]
    assert len(batches_a) == len(batches_b) == len(a)
    assert batches_a != batches_b


def test_replica_arguments_are_checked() -> None:
    with pytest.raises(
        ValueError, match=r"Invalid rank 2, rank should be in the interval \[0, 1\]"
    ):
        CrestBatchSampler(N, 8, callback=proxies, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=r"Invalid rank -1"):
        RandomBatchSampler(N, 8, num_replicas=2, rank=-1)
    with pytest.raises(ValueError, match=r"num_replicas should be a positive integer value"):
        RandomBatchSampler(N, 8, num_replicas=0, rank=0)
    with pytest.raises(TypeError, match=r"rank should be an integer value, but got rank=True"):
        RandomBatchSampler(N, 8, num_replicas=2, rank=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(batch_size·num_replicas\) = 0.075 rounds down to 0"):
        RandomBatchSampler(N, 8, budget=0.01, drop_last=True, num_replicas=4, rank=0)


def test_a_rank_resumes_mid_epoch_with_the_identical_tail() -> None:
    def make() -> CrestBatchSampler:
        return CrestBatchSampler(
            N, 8, callback=proxies, budget=0.8, reselect_every=3, num_replicas=2, rank=1, seed=4
        )

    full = [[(int(i), i.weight) for i in b] for b in make()]
    first = make()
    it = iter(first)
    head = [[(int(i), i.weight) for i in next(it)] for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    tail = [[(int(i), i.weight) for i in b] for b in resumed]
    assert head + tail == full and len(full) == 12


def test_state_from_another_world_size_is_refused() -> None:
    s = CrestBatchSampler(N, 8, callback=proxies, num_replicas=2, rank=0)
    next(iter(s))
    state = s.state_dict()
    other = CrestBatchSampler(N, 8, callback=proxies, num_replicas=4, rank=0)
    with pytest.raises(ValueError, match=r"num_replicas=2 .* another world size"):
        other.load_state_dict(state)
    wrong_rank = CrestBatchSampler(N, 8, callback=proxies, num_replicas=2, rank=1)
    with pytest.raises(ValueError, match=r"saved with rank=0 but this sampler has rank=1"):
        wrong_rank.load_state_dict(state)


# ----------------------------------------------------------------------------------------------
# Two processes on gloo over 127.0.0.1
# ----------------------------------------------------------------------------------------------


class RankMonitor:
    """A monitor whose interval and decisions differ by rank: the sampler must reconcile them."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.checks = 0

    @property
    def interval(self) -> int:
        return 2 if self.rank == 0 else 3

    def anchor(self, coresets: Any, weights: Any, check_indices: Any) -> None:
        pass

    def check(self) -> Any:
        self.checks += 1
        reselect = self.rank == 1 and self.checks % 2 == 0  # only rank 1 ever wants to reselect

        class Report:
            rho = 1.0 if reselect else 0.0

        Report.reselect = reselect  # type: ignore[attr-defined]
        return Report()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        torch.manual_seed(rank)  # different global RNG per rank: the sampler must not care
        # 1. agreement on the schedule, with a fake monitor whose opinions differ by rank
        sampler = CrestBatchSampler(
            N, 8, callback=proxies, monitor=RankMonitor(rank), budget=0.8, seed=0,
            weighting="cluster_size",  # (weights of mean 1 that are not all 1)
        )  # fmt: skip
        batches = list(sampler)
        tel = sampler.telemetry
        # (the same with each coreset used once: the ranks reselect on the same steps for it
        # too, with no collective of their own)
        once = CrestBatchSampler(
            N, 8, callback=proxies, monitor=RankMonitor(rank), budget=0.8, seed=0, max_uses=1
        )
        list(once)
        # 2. a tiny model end to end under DDP with the real callback and monitor
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, 5, generator=g)
        y = (x[:, 0] > 0).long()
        data = TensorDataset(x, y)
        model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
        ddp = DistributedDataParallel(model)
        callback = GradientProxyCallback(ddp, data)
        monitor = QuadraticLossMonitor(ddp, callback.per_sample_loss, threshold=0.0)
        crest = CrestBatchSampler(
            data, 8, callback=callback, monitor=monitor, labels=y, budget=0.5, pool_size=32, seed=0
        )
        loader = DataLoader(WithWeights(data), batch_sampler=crest, num_workers=0)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        losses = []
        for _epoch in range(3):
            for xb, yb, wb in loader:
                loss = (wb * nn.functional.cross_entropy(ddp(xb), yb, reduction="none")).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss))
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        result = {
            "num_batches": len(batches),
            "len": len(sampler),
            "batch_sizes": sorted({len(b) for b in batches}),
            "selection_steps": [r.step for r in tel.selections],
            "once": [(r.step, r.reason, r.num_pools) for r in once.telemetry.selections],
            "check_steps": [r.step for r in tel.checks],
            "intervals": [r.interval for r in tel.selections],
            "batches": [[int(i) for i in b] for b in batches],
            "weights_mean": [sum(i.weight for i in b) / len(b) for b in batches],
            "weights_vary": any(len({i.weight for i in b}) > 1 for b in batches),
            "train_batches": len(losses),
            "train_len": len(crest),
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "train_selections": [r.step for r in crest.telemetry.selections],
            "params": params.tolist(),
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_ranks_agree_and_train(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["num_batches"] == r["len"] == 12  # ceil(0.8 · 240 / (8 · 2))
        assert r["batch_sizes"] == [8]
        assert all(abs(m - 1.0) < 1e-9 for m in r["weights_mean"]) and r["weights_vary"]
    # both ranks check on the same steps (the smaller interval, 2) and reselect together,
    # although only rank 1's monitor ever asks for it
    assert r0["check_steps"] == r1["check_steps"] and len(r0["check_steps"]) >= 4
    assert all(b - a == 2 for a, b in zip(r0["check_steps"], r0["check_steps"][1:], strict=False))
    assert r0["selection_steps"] == r1["selection_steps"] and len(r0["selection_steps"]) >= 2
    assert set(r0["intervals"]) == {2}
    assert r0["once"] == r1["once"] and "uses" in {reason for _, reason, _ in r0["once"]}
    # each rank trained on its own coresets
    assert r0["batches"] != r1["batches"]
    # training: same number of steps, same selections, DDP kept the replicas identical
    assert r0["train_len"] == 8  # ceil(0.5 · 240 / (8 · 2))
    assert r0["train_batches"] == r1["train_batches"] == 3 * 8
    assert r0["train_selections"] == r1["train_selections"]
    assert r0["params"] == pytest.approx(r1["params"], abs=1e-6)
    assert r0["last_loss"] < r0["first_loss"]
