"""The Accelerate checkpoint recipe of docs/sampler.md, as a function the tests run in one
process and, as a script, under torchrun in two (``python -m torch.distributed.run
--nproc-per-node 2 tests/_accelerate_loop.py OUT_DIR``).

One run trains EPOCHS epochs of CREST batches; a run with ``stop_at`` saves the state with
``accelerator.save_state`` after that many steps and stops, and a run with ``resume`` loads it
and goes on to the end. Each returns the batches it trained on (indices and weights) and the
final parameters, for the tests to compare with the uninterrupted run's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import (
    CrestBatchSampler,
    GradientProxyCallback,
    QuadraticLossMonitor,
    WithWeights,
)
from coreset_sampler.integrations.checkpoint import AllRanksState

N, BATCH, BUDGET, EPOCHS = 480, 16, 0.25, 3


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + 2 * (x[:, 2] > 0.5).long()
    return TensorDataset(x, y)


def run(directory: Path, *, stop_at: int | None = None, resume: bool = False) -> dict[str, Any]:
    """The recipe; ``directory`` is ``save_state``'s (and ``load_state``'s)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    train_set = data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)  # not the loader: see the docs
    proxies = GradientProxyCallback(model, train_set)
    sampler = CrestBatchSampler(
        train_set, BATCH, callback=proxies,
        monitor=QuadraticLossMonitor(model, proxies.per_sample_loss, seed=0),
        labels=train_set.tensors[1], budget=BUDGET, seed=0,
        num_replicas=accelerator.num_processes, rank=accelerator.process_index,
    )  # fmt: skip
    loader = DataLoader(WithWeights(train_set, return_index=True), batch_sampler=sampler)
    accelerator.register_for_checkpointing(AllRanksState(sampler))
    if resume:
        accelerator.load_state(str(directory))
    batches: list[tuple[list[int], list[float]]] = []
    step = sampler.telemetry.num_steps  # batches trained on so far (the resumed ones too)
    stopped = False
    for epoch in range(sampler.epoch, EPOCHS):
        sampler.set_epoch(epoch)  # a no-op in the epoch a resumed sampler is in
        for x, y, w, index in loader:
            x, y, w = (t.to(accelerator.device) for t in (x, y, w))
            loss = (w * F.cross_entropy(model(x), y, reduction="none")).mean()
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            batches.append((index.tolist(), w.tolist()))
            step += 1
            if step == stop_at:
                accelerator.save_state(str(directory))
                stopped = True
                break
        if stopped:
            break
    params = [p.detach().cpu().tolist() for p in accelerator.unwrap_model(model).parameters()]
    return {
        "rank": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "batches": batches,
        "params": params,
        "selections": sampler.telemetry.num_selections,
    }


def main(out: Path) -> None:
    """Under torchrun: the uninterrupted run, the run stopped mid-epoch 1, and the resume,
    each rank writing ``rank<r>.json``."""
    from accelerate import PartialState

    out.mkdir(parents=True, exist_ok=True)
    full = run(out / "unused")
    PartialState().wait_for_everyone()
    stop_at = len(full["batches"]) // EPOCHS + 3  # mid-epoch 1
    first = run(out / "checkpoint", stop_at=stop_at)
    PartialState().wait_for_everyone()
    rest = run(out / "checkpoint", resume=True)
    result = {"full": full, "first": first, "rest": rest, "stop_at": stop_at}
    (out / f"rank{full['rank']}.json").write_text(json.dumps(result))
    # every group (the samplers' own gloo groups too) torn down before the interpreter exits:
    # left to exit, their threads were sometimes destroyed while running ("terminate called
    # without an active exception", rank 1 aborted after its work was done)
    PartialState().wait_for_everyone()
    import torch.distributed as dist

    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
