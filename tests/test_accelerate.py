"""The Accelerate recipe of docs/sampler.md: checkpoints with save_state/load_state in one
process and in two (torchrun, gloo), and what prepare() does to the batch stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from coreset_sampler import RandomBatchSampler, WithWeights
from coreset_sampler.integrations.checkpoint import AllRanksState

pytest.importorskip("accelerate")

from . import _accelerate_loop as loop

ROOT = Path(__file__).resolve().parents[1]


def _check_resume(
    full: dict[str, Any], first: dict[str, Any], rest: dict[str, Any], selections: int = 2
) -> None:
    stop = len(first["batches"])
    assert 0 < stop < len(full["batches"])
    assert first["batches"] == full["batches"][:stop]
    # the resumed run trains on the uninterrupted run's batches, with its weights, and ends
    # with its parameters, exactly
    assert rest["batches"] == full["batches"][stop:]
    assert rest["params"] == full["params"]
    assert rest["selections"] == full["selections"] >= selections


@pytest.mark.parametrize("stop_at", [loop.N * loop.BUDGET // loop.BATCH + 3, 2 * 8])
def test_save_state_and_load_state_resume_the_uninterrupted_run(
    tmp_path: Path, stop_at: int
) -> None:
    # mid-epoch 1, and at the end of epoch 1 (8 batches per epoch)
    assert len(RandomBatchSampler(loop.N, loop.BATCH, budget=loop.BUDGET)) == 8
    full = loop.run(tmp_path / "unused")
    first = loop.run(tmp_path / "ckpt", stop_at=stop_at)
    rest = loop.run(tmp_path / "ckpt", resume=True)
    _check_resume(full, first, rest)


@pytest.mark.ddp
def test_two_processes_resume_each_ranks_stream(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(ROOT / "tests" / "_accelerate_loop.py"), str(tmp_path)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, result in enumerate(ranks):
        assert result["full"]["rank"] == r and result["full"]["num_processes"] == 2
        _check_resume(result["full"], result["first"], result["rest"], selections=1)
    # each rank trained on its own batches (its share), and DDP kept one model
    assert ranks[0]["full"]["batches"] != ranks[1]["full"]["batches"]
    assert ranks[0]["rest"]["params"] == ranks[1]["rest"]["params"]


def test_prepare_makes_the_sampler_run_one_batch_ahead() -> None:
    # what the docs say: a loader passed to prepare() is read one batch ahead, so the sampler
    # (its selections and checks, its state) is a batch ahead of the training loop
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    ds = loop.data()
    sampler = RandomBatchSampler(ds, loop.BATCH, budget=loop.BUDGET, seed=0)
    prepared = accelerator.prepare(DataLoader(WithWeights(ds), batch_sampler=sampler))
    ahead = []
    for _ in prepared:
        ahead.append(sampler.telemetry.num_steps)
    assert ahead[:3] == [2, 3, 4] and ahead[-1] == len(sampler)
    plain = DataLoader(WithWeights(ds), batch_sampler=sampler)
    sampler.set_epoch(1)
    steps = [sampler.telemetry.num_steps for _ in plain]
    assert steps[:3] == [len(sampler) + 1, len(sampler) + 2, len(sampler) + 3]


def test_all_ranks_state_refuses_what_does_not_fit() -> None:
    ds = loop.data()
    one = RandomBatchSampler(ds, 16, seed=0)
    state = AllRanksState(one).state_dict()
    assert state["kind"] == "AllRanksState" and state["num_replicas"] == 1
    assert state["ranks"][0] == one.state_dict()
    AllRanksState(one).load_state_dict(one.state_dict())  # a plain state, one rank: accepted
    two = [RandomBatchSampler(ds, 16, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    with pytest.raises(RuntimeError, match=r"no torch\.distributed process group"):
        AllRanksState(two[1]).state_dict()
    with pytest.raises(ValueError, match=r"holds the sampler states of 1 ranks.*one of 2"):
        AllRanksState(two[1]).load_state_dict(state)
    with pytest.raises(ValueError, match="not every rank's"):
        AllRanksState(two[1]).load_state_dict(two[1].state_dict())
    both = {"kind": "AllRanksState", "num_replicas": 2, "ranks": [t.state_dict() for t in two]}
    for _ in two[1]:
        pass
    AllRanksState(two[1]).load_state_dict(both)  # rank 1 takes its own entry
    assert two[1].state_dict() == both["ranks"][1]
    with pytest.raises(ValueError, match="rank"):  # rank 0's entry does not fit rank 1
        AllRanksState(two[1]).load_state_dict({**both, "ranks": both["ranks"][::-1]})
    with pytest.raises(TypeError, match="coreset_sampler's batch samplers"):
        AllRanksState(torch.utils.data.BatchSampler(range(4), 2, False))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'ranks'"):
        AllRanksState(one).load_state_dict({"kind": "AllRanksState", "num_replicas": 3})
